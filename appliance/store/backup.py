"""`service-tool backup`: a consistent copy of the live index, taken while the service runs.

SQLite's online backup API copies the index in one step, that is inside one read
transaction: the copy is the database as of one commit, and in WAL mode the service's writers
are not held up meanwhile. The copy is written to a temporary file beside the destination,
checked (`integrity_check`), fsync'd and only then given its name, which must be new: a
backup never replaces a file. It is one self-contained file (rollback journal mode), 0600.

The stored files are not part of it: this protects the index, and `reindex` rebuilds one from
the files if no backup is at hand. `backup --full` (full_backup.py) copies them too, with an
index snapshot taken here.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.durable import fsync_dir, fsync_file, hand_over_wal_files


class BackupFailed(Exception):
    pass


@dataclass
class Backup:
    path: str
    size: int
    instances: int
    studies: int
    seconds: float


def backup(index: Path, destination: Path) -> Backup:
    """Copy the database at `index` to `destination` (which must not exist yet)."""
    started = time.monotonic()
    if not index.exists():
        raise BackupFailed(f"there is no index at {index}")
    if destination.exists():
        raise BackupFailed(f"{destination} exists already; a backup never replaces a file")
    fd, name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        counts = _copy(index, tmp)
        fsync_file(tmp)
        os.link(tmp, destination)  # unlike a rename, fails rather than replace a file made meanwhile
        tmp.unlink()
        fsync_dir(destination.parent)
    except (sqlite3.Error, OSError) as exc:
        raise BackupFailed(str(exc)) from exc
    finally:
        for leftover in (tmp, Path(f"{tmp}-journal")):
            leftover.unlink(missing_ok=True)
    return Backup(str(destination), destination.stat().st_size, *counts, round(time.monotonic() - started, 2))


def _copy(index: Path, target: Path) -> tuple[int, int]:
    """Back `index` up into `target`, check the copy; (instances, studies) in it."""
    with read_only(index) as source, contextlib.closing(sqlite3.connect(target)) as copy:
        source.backup(copy)  # pages=-1: every page in one step, one read transaction
        copy.execute("PRAGMA journal_mode=DELETE")
        problems = [row[0] for row in copy.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            raise BackupFailed("the copy fails its integrity check: " + "; ".join(problems[:3]))
        return (copy.execute("SELECT COUNT(*) FROM instance").fetchone()[0],
                copy.execute("SELECT COUNT(*) FROM study").fetchone()[0])


@contextlib.contextmanager
def read_only(index: Path):
    """A read-only connection to the live index, beside the running service."""
    try:
        with contextlib.closing(sqlite3.connect(f"{index.resolve().as_uri()}?mode=ro", uri=True,
                                                timeout=30)) as connection:
            yield connection
    finally:
        hand_over_wal_files(index)
