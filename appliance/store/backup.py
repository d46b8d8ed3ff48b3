"""`service-tool backup`: a consistent copy of the live index, taken while the service runs.

The copy is the index as of one commit, taken without holding the service's writers up
(snapshot.py: SQLite's online backup API, or PostgreSQL's rows read in one REPEATABLE READ
transaction), and always one self-contained SQLite file with this release's schema (rollback
journal mode), 0600, whichever backend the archive runs on (IX-01). It is written to a
temporary file beside the destination, checked (`integrity_check`), fsync'd and only then given
its name, which must be new: a backup never replaces a file.

The stored files are not part of it: this protects the index, and `reindex` rebuilds one from
the files if no backup is at hand. `backup --full` (full_backup.py) copies them too, with an
index snapshot taken here.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from peewee import PeeweeException, SqliteDatabase

from appliance.durable import fsync_dir, fsync_file
from appliance.store import snapshot
from appliance.store.db import first_line
from appliance.store.models import Instance, Study


class BackupFailed(Exception):
    pass


@dataclass
class Backup:
    path: str
    size: int
    instances: int
    studies: int
    seconds: float


def backup(url: str, data_dir: Path, destination: Path) -> Backup:
    """Copy the index `[index] url` names (of the data directory `data_dir`) to `destination`,
    which must not exist yet."""
    started = time.monotonic()
    if destination.exists():
        raise BackupFailed(f"{destination} exists already; a backup never replaces a file")
    fd, name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        snapshot.take(url, data_dir, tmp)
        counts = _check(tmp)
        fsync_file(tmp)
        os.link(tmp, destination)  # unlike a rename, fails rather than replace a file made meanwhile
        tmp.unlink()
        fsync_dir(destination.parent)
    except (PeeweeException, OSError) as exc:
        raise BackupFailed(first_line(exc)) from exc
    finally:
        for leftover in (tmp, *(Path(f"{tmp}{suffix}") for suffix in ("-journal", "-wal", "-shm"))):
            leftover.unlink(missing_ok=True)
    return Backup(str(destination), destination.stat().st_size, *counts, round(time.monotonic() - started, 2))


def _check(copy: Path) -> tuple[int, int]:
    """The snapshot made one self-contained file and checked; (instances, studies) in it."""
    db = SqliteDatabase(str(copy))
    with db.connection_context():
        db.execute_sql("PRAGMA journal_mode=DELETE")
        problems = [row[0] for row in db.execute_sql("PRAGMA integrity_check")]
        if problems != ["ok"]:
            raise BackupFailed("the copy fails its integrity check: " + "; ".join(problems[:3]))
        return Instance.select().count(db), Study.select().count(db)

