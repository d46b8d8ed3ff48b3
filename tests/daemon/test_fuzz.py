"""The peer-facing parsers under fuzzing (tests/fuzz/fuzz_protocol.py): every corpus input
replayed through its target's contract, and a short coverage-guided run of each target."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TESTS

HARNESS = TESTS / "fuzz" / "fuzz_protocol.py"
_spec = importlib.util.spec_from_file_location("fuzz_protocol", HARNESS)
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

FUZZ_SECONDS = 12  # per target; the six run side by side
LIBFUZZER_LIMITS = ["-timeout=10", "-rss_limit_mb=1024"]  # a hang or unbounded memory is a finding


def _shown(path: Path) -> str:
    data = path.read_bytes()
    return f"{path} ({len(data)} bytes): {data[:512].hex()}{'...' if len(data) > 512 else ''}"


@pytest.mark.parametrize("target", sorted(fuzz.TARGETS))
def test_corpus_keeps_the_contract(target):
    files = sorted((fuzz.CORPUS / target).iterdir())
    assert len(files) >= len(fuzz.seeds()[target])
    broken = []
    with fuzz.Service() as service:
        for path in files:
            try:
                fuzz.TARGETS[target](service, path.read_bytes())
            except Exception as exc:  # noqa: BLE001 - every violation, not just the first
                broken.append(f"{exc!r} from {_shown(path)}")
    assert not broken, f"{len(broken)} of {len(files)} {target} inputs break the contract:\n" + "\n".join(broken)


def test_seeds_reach_the_end_of_each_path():
    """The harness is not vacuous: the seeds get past the acceptor to an A-ASSOCIATE-AC, past
    every check of the archive to its index, and through C-FIND to responses."""
    with fuzz.Service() as service:
        for target, inputs in fuzz.seeds().items():
            for data in inputs.values():
                fuzz.TARGETS[target](service, data)
        assert service.answered == 2  # seed-full and seed-minimal
        assert service.archive.index.placed == 3 + 4  # the pdata seeds' C-STOREs, the header seeds
        assert service.pendings == 1 + 2 + 1 + 2 + 1  # every find seed matches
        assert service.moved == 2 + 1 + 1 + 1  # and every move seed
        assert service.commitments == 2  # and both N-ACTION seeds


def test_fuzzing_finds_no_crash_hang_or_memory_blowup(tmp_path):
    """Each target for FUZZ_SECONDS from a scratch copy of its corpus (what libFuzzer adds stays
    in tmp_path); a crash, a slow input or an RSS over the limit fails with the input."""
    runs = {}
    try:
        for target in sorted(fuzz.TARGETS):
            corpus, findings = tmp_path / target, tmp_path / f"{target}-findings"
            shutil.copytree(fuzz.CORPUS / target, corpus)
            findings.mkdir()
            command = [sys.executable, str(HARNESS), target, f"-max_total_time={FUZZ_SECONDS}", *LIBFUZZER_LIMITS,
                       f"-artifact_prefix={findings}/", "-print_final_stats=1", str(corpus)]
            runs[target] = (findings, subprocess.Popen(
                command, cwd=tmp_path, env={**os.environ, "TMPDIR": str(tmp_path)},
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))  # the traceback is on stdout
        failures = []
        for target, (findings, proc) in runs.items():
            output, _ = proc.communicate(timeout=FUZZ_SECONDS + 120)
            found = sorted(findings.iterdir())
            if proc.returncode != 0 or found or "DONE" not in output:
                log = [line for line in output.splitlines() if not line.startswith(("INFO: Instrumenting", "#"))]
                failures.append(f"--- {target}: exit code {proc.returncode}, findings:\n"
                                + "".join(f"{_shown(path)}\n" for path in found) + "\n".join(log[-40:]))
        assert not failures, "\n".join(failures)
    finally:
        for _, proc in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
