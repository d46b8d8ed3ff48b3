#!/usr/bin/env python3
"""`service-tool study delete` benchmark (MG-02): one study of --count instances removed, next
to Orthanc's REST DELETE of the same study and `rm -rf` + `sync` of the same files, same run.

A benchmark script, not a test. Each receiver is started fresh for each run (bench/lab.py),
filled with the study by DCMTK storescu over one association, then the study is deleted:

  service   `service-tool study delete UID --yes`: the command's wall time (Python start-up
            included) and the deletion's own time as the service reports it (journaled,
            durable: files linked into the spool and flushed, rows removed in one fsync'd
            transaction per 500 instances, files unlinked, their directories flushed)
  orthanc   `curl -X DELETE /studies/ID` on Debian's Orthanc (SQLite index, its HTTP server on
            loopback in its own namespace): the request's wall time
  rm        `rm -rf` of a copy of the stored files, then `sync`: the floor, nothing journaled

Usage (from the repository):
  .venv/bin/python bench/study_delete.py [--quick] [--count 1000] [--repeat 3] [--json out.json]

--quick: 200 instances (figures kept in study-delete-previous-quick.json).
Traffic goes only to 127.0.0.1 or into the namespace Orthanc runs in; every subprocess has a timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lab  # noqa: E402
from datasets import CT, ELE, image, write  # noqa: E402  (tests/support/datasets.py)

log = lab.log
SERVICE_TOOL = lab.REPO / ".venv" / "bin" / "service-tool"
CASES = ("service", "orthanc", "rm")


class OrthancHttp(lab.Orthanc):
    """lab.Orthanc with its REST API on loopback inside its namespace, for DELETE /studies/ID."""

    def setup(self, stack: contextlib.ExitStack) -> None:
        super().setup(stack)
        self.http_port = lab.helpers.free_port()
        config = json.loads((self.root / "orthanc.json").read_text())
        config.update({"HttpServerEnabled": True, "HttpPort": self.http_port, "AuthenticationEnabled": False})
        (self.root / "orthanc.json").write_text(json.dumps(config, indent=1))

    def rest(self, method: str, path: str, body: str | None = None) -> str:
        cmd = ["ip", "netns", "exec", self.netns, "curl", "-sf", "-X", method,
               f"http://127.0.0.1:{self.http_port}{path}"] + (["--data", body] if body else [])
        return lab.run(cmd, timeout=600).stdout


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="bench-delete-"))
        self.study = f"2.25.{int(time.time() * 1e6)}"
        files = self.work / "files"
        files.mkdir()
        for i in range(args.count):
            ds = image(CT, ELE, rows=256, columns=256, study_uid=self.study, series_uid=f"{self.study}.{i // 250 + 1}",
                       InstanceNumber=str(i + 1))
            write(ds, files / f"{i:05d}.dcm")
        self.files = sorted(files.iterdir())
        self.bytes = sum(f.stat().st_size for f in self.files)
        self.runs: dict = {case: [] for case in CASES}
        self.results: dict = {}  # once run: {"instances", "bytes", and per case its summary}

    def fill(self, receiver) -> None:
        """The study into `receiver` over one association (from its namespace, for Orthanc)."""
        cmd = ["storescu", "-aec", receiver.title, "-to", "10", "-ts", "60", receiver.host, str(receiver.port),
               "+sd", str(self.files[0].parent)]
        if receiver.client_netns:
            cmd = ["ip", "netns", "exec", receiver.client_netns, *cmd]
        lab.run(cmd, timeout=600, env=lab.dcmtk_env())
        stored = receiver.stored()
        if stored != len(self.files):
            raise RuntimeError(f"{receiver.kind} stored {stored} of {len(self.files)}")

    def run(self) -> None:
        for attempt in range(self.args.repeat):
            log(f"run {attempt + 1}/{self.args.repeat}")
            with lab.Service(self.work / "service") as service:
                self.fill(service)
                os.sync()
                started = time.monotonic()
                done = lab.run([str(SERVICE_TOOL), "--config", str(service.app.config_path), "study", "delete",
                                self.study, "--yes"], timeout=600)
                wall = time.monotonic() - started
                reported = float(done.stdout.rsplit("(", 1)[1].split(" s)")[0])
                left = service.stored()
                self.runs["service"].append({"seconds": round(wall, 3), "service_seconds": reported, "left": left})
            with OrthancHttp(self.work / "orthanc") as orthanc:
                self.fill(orthanc)
                (found,) = json.loads(orthanc.rest("POST", "/tools/lookup", self.study))
                os.sync()
                started = time.monotonic()
                orthanc.rest("DELETE", f"/studies/{found['ID']}")
                wall = time.monotonic() - started
                self.runs["orthanc"].append({"seconds": round(wall, 3), "left": orthanc.stored()})
            copy = self.work / "copy"
            shutil.copytree(self.files[0].parent, copy)
            os.sync()
            started = time.monotonic()
            lab.run(["rm", "-rf", str(copy)])
            lab.run(["sync"])
            self.runs["rm"].append({"seconds": round(time.monotonic() - started, 3), "left": 0})
        self.results = {"instances": self.args.count, "bytes": self.bytes,
                        **{case: summary(runs) for case, runs in self.runs.items()}}

    def cleanup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def summary(runs: list[dict]) -> dict:
    seconds = [r["seconds"] for r in runs]
    out = {"best_s": min(seconds), "median_s": round(statistics.median(seconds), 3), "runs": runs}
    if "service_seconds" in runs[0]:
        out["service_best_s"] = min(r["service_seconds"] for r in runs)
    return out


def table(results: dict, previous: dict | None) -> str:
    rows = []
    for case in CASES:
        s = results[case]
        before = ((previous or {}).get("results", {}).get(case) or {}).get("best_s")
        rows.append((case, s["best_s"], s["median_s"], s.get("service_best_s", ""),
                     round(results["instances"] / s["best_s"]), before if before is not None else "-",
                     max(r["left"] for r in s["runs"])))
    head = f"one study of {results['instances']} CT 256x256 instances, {results['bytes'] / 1e6:.0f} MB\n"
    return head + lab.text_table(("case", "best s", "median s", "service's own s", "instances/s",
                                  "previous best s", "left after"), rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--count", type=int, default=None, help="instances in the study (1000; quick 200)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.count = args.count or (200 if args.quick else 1000)
    lab.run_and_report(Bench(args), "study-delete", args.quick, table, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
