"""`service-tool reindex` and `service-tool backup`: rebuild the index from the files, copy it.

`reindex` is offline: it takes the data directory lock the service holds while it runs, so it
is refused while the service runs (the message names the holder); on a PostgreSQL index it is
also refused while the service of any other box sharing the index is connected to it (IX-02).
`backup` is online and takes no lock. The work is done in `appliance/store/reindex.py` and
`backup.py`; `backup --full` (the whole archive) and `restore` are in backup_cmd.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from appliance.config import data_dir
from appliance.store import lock
from appliance.durable import hand_over
from service_tool import backup_cmd
from service_tool.configuration import load, reading

EXIT_FAILED = 1  # failed or refused; nothing was changed


def register(groups) -> None:
    command = groups.add_parser(
        "reindex", help="rebuild the index from the stored files (service stopped)",
        description="Rebuild the index from the stored files, with the configured storage policy, for an "
                    "index that is lost or damaged. The service must be stopped, on every box that shares a "
                    "PostgreSQL index. The old index is kept as index.sqlite.replaced-<UTC time> in the data "
                    "directory (on PostgreSQL: a snapshot of its content); unreadable files are reported and "
                    "left in place. "
                    "Exit 0 when the index was rebuilt, 1 when refused or failed (the old index unchanged).")
    command.add_argument("--json", action="store_true", help="print the summary as JSON")
    command.add_argument("--progress-every", type=int, default=1000, metavar="N",
                         help="a progress line on stderr every N files (default: 1000)")
    command.set_defaults(run=run_reindex)
    command = groups.add_parser(
        "backup", help="copy the index, or with --full the whole archive, while the service runs",
        description="Write a consistent copy of the index, one SQLite file whichever backend the index is on, "
                    "checked with integrity_check, to DEST, which must not exist; the service may keep running. Exit 0 "
                    "when written, 1 when it failed (nothing is left at DEST). With --full DIR: the configuration, "
                    "the index and every stored file into DIR, incrementally, each file verified; DIR always "
                    "holds one complete backup (exit 1: the previous one, unchanged), which `restore` puts back.")
    command.add_argument("dest", nargs="?", type=Path, metavar="DEST",
                         help="the file to write, or a directory for index-<UTC time>.sqlite in it "
                              "(default: <data_dir>/backups/)")
    command.add_argument("--json", action="store_true", help="print the result as JSON")
    backup_cmd.add_full_options(command)
    command.set_defaults(run=run_backup)


def run_reindex(args: argparse.Namespace) -> int:
    # Imported here: the ingest's modules (peewee, pydicom) take 0.3 s, which other commands need not pay.
    from peewee import PeeweeException

    from appliance.store import reindex
    from appliance.store.db import first_line
    from appliance.store.postgres import OtherBoxes

    config = load(args.config)
    if config is None:
        return EXIT_FAILED
    directory = data_dir(config)
    if not directory.is_dir():
        print(f"reindex failed: there is no data directory {directory}", file=sys.stderr)
        return EXIT_FAILED
    try:
        held = lock.hold(directory, "service-tool reindex")
    except lock.InUse as exc:
        print(f"reindex refused: {exc}; stop the service first", file=sys.stderr)
        return EXIT_FAILED
    # What the ingest logs (a Patient ID coerced for another name, EL-06) is logged again here.
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s", stream=sys.stderr)
    try:
        hand_over(directory / lock.LOCK_NAME, directory)
        summary = reindex.rebuild(config, _progress, max(args.progress_every, 1))
    except OtherBoxes as exc:
        print(f"reindex refused: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (reindex.Refused, OSError, PeeweeException, RuntimeError) as exc:
        print(f"reindex failed, the index is unchanged: {first_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        _give_back(directory)
        held.close()
    print(json.dumps(asdict(summary), indent=2) if args.json else _reindex_text(summary))
    return 0


def _give_back(directory: Path) -> None:
    """The files the rebuild made (new index, lock) given to the data directory's owner: on the
    box that is the service's user while the installer runs this as root, and an index owned by
    root would keep the service from starting. The rebuild makes files at the top level only."""
    owner = directory.stat()
    for path in directory.iterdir():
        if path.lstat().st_uid != owner.st_uid:
            os.chown(path, owner.st_uid, owner.st_gid, follow_symlinks=False)


def _progress(done: int, total: int) -> None:
    print(f"reindex: {done}/{total} files", file=sys.stderr, flush=True)


def _reindex_text(s) -> str:
    """`s`: reindex.Summary."""
    rate = f", {s.instances / s.seconds:.0f} instances/s" if s.seconds else ""
    lines = [f"index rebuilt: {s.files} files, {s.instances} instances, {s.studies} studies, "
             f"{s.unreadable} unreadable, {s.seconds} s{rate}"]
    if s.unreadable:
        lines.append(f"{s.unreadable} files cannot be read and are not indexed (left in place):")
        lines += [f"  {line}" for line in s.unreadable_files]
    if s.superseded:
        lines.append(f"{s.superseded} files were replaced by a later file with the same SOP Instance UID "
                     "(duplicate_policy replace) and are not indexed (left in place):")
        lines += [f"  {line}" for line in s.superseded_files]
    if s.identical:
        lines.append(f"{s.identical} files hold the same data set as an indexed file with the same SOP Instance "
                     "UID (ST-25) and are not indexed (left in place):")
        lines += [f"  {line}" for line in s.identical_files]
    if s.conflicting:
        lines.append(f"{s.conflicting} files name a series or study the index holds under another parent "
                     "(hierarchy_conflict refuse, ST-26) and are not indexed (left in place):")
        lines += [f"  {line}" for line in s.conflicting_files]
    if s.unacknowledged:
        lines.append(f"{s.unacknowledged} interrupted placements the old index did not hold are not indexed; "
                     "the service removes them at start")
    if s.ignored:
        lines.append(f"{s.ignored} other names under store/ were ignored")
    if s.old_index_unreadable:
        lines.append(f"old index not used ({s.old_index_unreadable}): received times are file times, calling AE "
                     "titles are empty, duplicates got new UIDs, pending commitment reports are lost")
    else:
        lines.append(f"from the old index: received time, calling AE and UID of {s.carried_instances} instances, "
                     f"{s.carried_commitment_requests} pending commitment requests")
    if s.old_index:
        lines.append(f"old index kept as {s.old_index}")
    return "\n".join(lines)


def run_backup(args: argparse.Namespace) -> int:
    if args.full is not None:
        return backup_cmd.run_full(args)
    from appliance.store.backup import BackupFailed, backup  # here: peewee takes a while to import

    config = reading(args.config)
    if config is None:
        return EXIT_FAILED
    directory = data_dir(config)
    destination = args.dest or directory / "backups"
    try:
        if args.dest is None:
            destination.mkdir(mode=0o700, exist_ok=True)
        if destination.is_dir():
            destination = destination / f"index-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.sqlite"
        result = backup(config.index.url, directory, destination)
    except (BackupFailed, OSError) as exc:
        print(f"backup failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(asdict(result), indent=2))
    else:
        print(f"index backed up to {result.path}: {result.size} bytes, {result.instances} instances, "
              f"{result.studies} studies, {result.seconds} s")
    return 0
