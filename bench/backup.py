#!/usr/bin/env python3
"""Whole-archive backup benchmark (MG-05): `service-tool backup --full` and `restore` next to
`cp -a` + `sync` (and `rsync -a` + `sync` where rsync is installed) of the same store, one run.

A benchmark script, not a test. It fills a fresh appliance (bench/lab.py's Service: the real
daemon through tests/support/helpers.Appliance) with about 1 GB of CT instances (512x512x16, ~525 KB
each) sent by DCMTK storescu over two associations, and with the service still running times:

  first      backup --full into an empty directory: every file copied, fsync'd, read back
  again      backup --full once more, nothing new: the incremental run's fixed cost
  5% new     backup --full after 5% more instances were stored: what a nightly run copies
  verify     backup --full --verify-all, nothing new: every copy in DIR read back and hashed
  restore    restore of that backup into an empty data directory (every checksum checked)
  cp -a      cp -a of the store directory, then sync: the reference (no checksum, one sync)
  rsync -a   the same with rsync -a, when it is installed

Before each step the written data is synced and the files involved are dropped from the page
cache (posix_fadvise DONTNEED), so every step reads from the disk. All directories are on the
same file system (--tmpdir), so the figures are those of one disk reading and writing at once;
a share's network is not measured. MB = 10^6 bytes.

Usage (from the repository):
  .venv/bin/python bench/backup.py [--quick] [--count 2000] [--tmpdir DIR] [--json out.json]

--quick: 400 instances (~210 MB; figures kept in backup-previous-quick.json). Every subprocess
has a timeout; traffic goes only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lab  # noqa: E402
import store  # noqa: E402  (bench/store.py: the storescu sender)
from datasets import CT, ELE, image, write  # noqa: E402  (tests/support/datasets.py)
from helpers import service_tool  # noqa: E402  (tests/support/helpers.py)

log = lab.log
STEP_TIMEOUT = 900  # s: no step may take longer
PER_STUDY = 200


def generate(directory: Path, count: int) -> list[Path]:
    """`count` distinct CT instances (random pixels), 200 to a study."""
    directory.mkdir(parents=True)
    files = []
    for i in range(count):
        if i % PER_STUDY == 0:
            study, series = f"2.25.{uuid.uuid4().int}", f"2.25.{uuid.uuid4().int}"
        ds = image(CT, ELE, rows=512, columns=512, bits=16, study_uid=study, series_uid=series,
                   InstanceNumber=str(i % PER_STUDY + 1))
        files.append(write(ds, directory / f"ct-{i:05d}.dcm"))
    return files


def evict(*roots: Path) -> None:
    """Write everything back, then drop these trees' files from the page cache."""
    os.sync()
    for root in roots:
        for path in root.rglob("*") if root.exists() else ():
            if path.is_file():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="bench-backup-", dir=args.tmpdir))
        self.results: dict = {}

    def run(self) -> None:
        count = self.args.count
        log(f"generating {count} + {count // 20} CT instances")
        files = generate(self.work / "sent", count)
        extra = generate(self.work / "extra", count // 20)
        with lab.Service(self.work / "service") as service:
            log(f"storing {count} instances")
            filled = store.send(service, store.split(files, 2))
            assert filled["missing"] == 0 and filled["sender_failures"] == 0, filled
            self.results["fill"] = {k: filled[k] for k in ("instances", "bytes", "seconds", "mbps")}
            app = service.app
            backup_dir, copies = self.work / "backup", self.work / "copies"
            backup_dir.mkdir()
            copies.mkdir()
            store_dir = app.data_dir / "store"

            def backup(*options: str):
                return self.tool(app.config_path, "backup", "--full", str(backup_dir), "--json", *options)

            self.step("first", backup, store_dir, backup_dir)
            self.step("again", backup, store_dir, backup_dir)
            log(f"storing {len(extra)} more instances (5%)")
            more = store.send(service, [extra])
            assert more["stored"] == count + len(extra) and more["sender_failures"] == 0, more
            self.step("5% new", backup, store_dir, backup_dir)
            self.step("verify", lambda: backup("--verify-all"), store_dir, backup_dir)
            box = self.work / "box"
            self.step("restore", lambda: self.tool(box / "appliance.toml", "restore", str(backup_dir), "--json",
                                                   "--data-dir", str(box / "data")), backup_dir, box)
            self.step("cp -a", lambda: self.copy(["cp", "-a", str(store_dir), str(copies / "cp")]), store_dir, copies)
            if shutil.which("rsync"):
                self.step("rsync -a", lambda: self.copy(["rsync", "-a", f"{store_dir}/", str(copies / "rsync")]),
                          store_dir, copies)
            else:
                self.results["rsync -a"] = {"absent": "rsync is not installed"}
            self.results["store_bytes"] = tree_bytes(store_dir)
            self.results["store_files"] = count + len(extra)

    def tool(self, config: Path, *args: str) -> dict:
        result = service_tool(config, *args, timeout=STEP_TIMEOUT)
        if result.returncode != 0:
            raise RuntimeError(f"service-tool {' '.join(args)} exited {result.returncode}: {result.stderr[-2000:]}")
        return json.loads(result.stdout)

    @staticmethod
    def copy(command: list[str]) -> dict:
        lab.run(command, timeout=STEP_TIMEOUT)
        lab.run(["sync"], timeout=STEP_TIMEOUT)
        return {}

    def step(self, name: str, action, *trees: Path) -> None:
        """One timed step, after syncing and evicting `trees` from the page cache."""
        evict(*trees)
        busy = lab.wait_quiet(self.args.wait_quiet) if self.args.wait_quiet else lab.machine_busy()
        log(f"{name} (machine {busy}% busy)")
        started = time.monotonic()
        summary = action()
        seconds = round(time.monotonic() - started, 2)
        result = {"seconds": seconds, "machine_busy_before_percent": busy}
        for key in ("files", "bytes", "copied", "copied_bytes", "skipped", "recopied"):
            if key in summary:
                result[key] = len(summary[key]) if isinstance(summary[key], list) else summary[key]
        self.results[name] = result
        log(f"   {seconds} s " + ", ".join(f"{k} {v}" for k, v in result.items() if k not in ("seconds",)))

    def cleanup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def table(results: dict, previous: dict | None) -> str:
    size = results["store_bytes"]
    rows = []
    for name in ("first", "again", "5% new", "verify", "restore", "cp -a", "rsync -a"):
        r = results.get(name, {})
        if "absent" in r:
            rows.append((name, r["absent"], "", "", "", ""))
            continue
        handled = r.get("bytes", size)  # the archive's size at that step (cp -a and rsync: at the end)
        written = r.get("copied_bytes", handled)
        before = ((previous or {}).get("results", {}).get(name) or {}).get("seconds", "")
        rows.append((name, r["seconds"], f"{handled / r['seconds'] / 1e6:.0f}", f"{written / r['seconds'] / 1e6:.0f}",
                     f"{r['copied']}/{r['skipped']}" if "copied" in r else "", before))
    head = ("step", "seconds", "archive MB/s", "written MB/s", "copied/skipped", "previous s")
    fill = results["fill"]
    return (f"store: {results['store_files']} instances, {size / 1e6:.0f} MB (the first {fill['instances']} "
            f"stored at {fill['mbps']} MB/s)\n"
            + lab.text_table(head, rows))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--count", type=int, default=None, help="instances stored (2000; quick 400)")
    parser.add_argument("--tmpdir", default=None, help="where everything is written (default: $TMPDIR or /tmp)")
    parser.add_argument("--wait-quiet", type=float, default=30.0,
                        help="before each step wait up to this many seconds for an idle machine")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.count = args.count or (400 if args.quick else 2000)
    for tool in ("storescu", "echoscu", "cp", "sync"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} not found")
    lab.run_and_report(Bench(args), "backup", args.quick, table, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
