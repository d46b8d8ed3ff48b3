#!/usr/bin/env python3
"""Summarise py-spy `--format raw --threads --idle` output from bench/store.py --profile.

Prints, per thread kind, the share of samples and the heaviest leaf functions, plus the
inclusive share of a few functions that matter for the STORAGE-SCP path.

  .venv/bin/python bench/pyspy_summary.py bench/results/profile/a.txt [--top 15]
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

INCLUSIVE = [
    ("C-STORE handler (Archive.store)", "Archive.store "),
    ("  read_header", "read_header "),
    ("  StorageArea.place (fsync file+dirs, rename, link)", "StorageArea.place "),
    ("    fsync_file", "fsync_file "),
    ("    fsync_dir", "fsync_dir "),
    ("  index write (SQLite commit)", "Index.write "),
    ("  Archive._index (peewee queries)", "Archive._index "),
    ("  free_bytes (statvfs)", "StorageArea.free_bytes "),
    ("logging (any)", "Logger._log "),
    ("DUL reactor: run_reactor", "DULServiceProvider.run_reactor "),
    ("  DUL time.sleep (1 ms loop delay)", "DULServiceProvider.run_reactor (pynetdicom/dul.py:403)"),
    ("  DUL _is_transport_event/_read_pdu", "DULServiceProvider._read_pdu_data "),
    ("  AssociationSocket.recv", "AssociationSocket.recv "),
    ("  AssociationSocket.ready (select)", "AssociationSocket.ready "),
    ("  state machine do_action", "StateMachine.do_action "),
    ("DIMSE decode (message.decode_msg)", "DIMSEMessage.decode_msg "),
    ("  spool file write", "_TemporaryFileWrapper.func_wrapper "),
    ("Association reactor sleeps", "Association._run_reactor (pynetdicom/association.py:714)"),
    ("DIMSE get_msg wait", "DIMSEServiceProvider.get_msg "),
    ("send C-STORE-RSP", "DIMSEServiceProvider.send_msg "),
]


def thread_kind(name: str) -> str:
    name = re.sub(r"\(\d+\)|@\d+|-\d+", "", name).strip()
    return name


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("raw", nargs="+")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()
    for path in args.raw:
        stacks = collections.Counter()
        for line in Path(path).read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stacks[stack] += int(count)
        total = sum(stacks.values())
        print(f"== {path}: {total} samples")
        by_thread = collections.Counter()
        leaves = collections.defaultdict(collections.Counter)
        for stack, n in stacks.items():
            frames = stack.split(";")
            kind = thread_kind(frames[0])
            by_thread[kind] += n
            leaves[kind][frames[-1] if len(frames) > 1 else "(none)"] += n
        for kind, n in by_thread.most_common():
            print(f"  thread {kind}: {n} samples ({100 * n / total:.1f}%)")
        # Association-serving threads: everything but the daemon's main and listener threads.
        busy = [k for k in by_thread if "MainThread" not in k]
        for kind in busy:
            n_thread = by_thread[kind]
            if not ("AcceptorThread" in kind or "run_reactor" in kind):
                continue
            print(f"\n  -- {kind}: top leaves (% of this thread's samples)")
            for leaf, n in leaves[kind].most_common(args.top):
                print(f"     {100 * n / n_thread:5.1f}%  {leaf}")
            print(f"  -- {kind}: inclusive")
            for label, needle in INCLUSIVE:
                n = sum(c for s, c in stacks.items() if thread_kind(s.split(';')[0]) == kind and needle in s)
                if n:
                    print(f"     {100 * n / n_thread:5.1f}%  {label}")
        print()


if __name__ == "__main__":
    main()
