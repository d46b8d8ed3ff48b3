"""`service-tool backup --full DIR`: the whole archive into a directory, while the service runs (MG-05).

What goes in: the configuration file, an index snapshot (backup.py: the index as of one commit,
one SQLite file whichever backend holds the index, snapshot.py) and every stored file the
snapshot names, from `storage.store_dir`. backup_set.py has DIR's layout and why DIR always holds
one complete backup; restore.py puts one back. On a PostgreSQL index shared by several boxes
(IX-02) it runs while they all serve the archive, like a backup of a single box's.

Consistency. Stored files never change, so a snapshot and the files it names stay one archive
however long the copy takes, but for one case: an instance deleted (`study delete`, MG-02) or
replaced (ST-18) after the snapshot loses its file before the copy reaches it. Its row then
leaves the snapshot, with its series, study and patient when it was their last instance, so
that the backup never names a file it does not hold; the summary counts those instances. A
file missing while the live index still names it was not deleted but lost from the archive:
it is left out in the same way, and the summary names it.

Incremental. A stored file the previous backup holds (its manifest names it, and DIR's copy has
the size recorded there) is not copied again: stored files never change and their random
names are never used again, so name and size say it is the same file. Whether DIR's copy
still holds those bytes is checked only with `verify_all` (every copy in DIR read and hashed
again; one that fails is copied anew), because that reads the whole backup back: on a share,
about as long as a first backup.

The index snapshot is made in the temporary directory ($TMPDIR) and copied into DIR like the
other files: SQLite needs byte-range locks, which shares do not always give. A failure removes
what this backup wrote into DIR and leaves the previous backup as it was.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from peewee import PeeweeException, SqliteDatabase

from appliance.config import Config, data_dir, store_dir
from appliance.durable import fsync_dir, fsync_file
from appliance.store import lock
from appliance.store.backup import BackupFailed, backup
from appliance.store.db import first_line, read_only
from appliance.store.backup_set import (STORE, Damaged, Manifest, Unreadable, copy_verified, error_text,
                                        hash_file, read_manifest, write_manifest)
from appliance.store.models import ALL_MODELS, Instance, Patient, Series, Study

_CHUNK = 500  # paths per IN (...) clause
_LISTED = 10  # files that could not be removed, named in the summary
# Top-level names an earlier generation or an interrupted backup leaves (the manifest's own
# temporary file among them): removed unless the manifest names them.
_LEFT_BEHIND = re.compile(r"(config-\d+\.toml|index-\d+\.sqlite|\..*\.tmp)")
SNAPSHOT = ".index-snapshot.tmp"  # the index as this backup copies it, in DIR


class Progress(Protocol):
    def begin(self, text: str, files: int, nbytes: int) -> None:
        """What is about to be copied (`files` of `nbytes` in all)."""

    def advance(self, files: int, nbytes: int) -> None:
        """So many files and bytes done; called after each file."""


@dataclass
class Summary:
    directory: str
    generation: int  # of the backup DIR now holds
    files: int = 0  # stored files in it
    bytes: int = 0  # their size
    copied: int = 0  # stored files this backup copied (new, or a damaged copy replaced)
    copied_bytes: int = 0
    skipped: int = 0  # stored files DIR held already
    recopied: list[str] = field(default_factory=list)  # DIR's copies that were not the file any more
    # Of those, the ones the archive's file is not the earlier backup's copy of either: stored
    # files never change, so the archive's may be damaged (the backup now holds it as it is).
    changed: list[str] = field(default_factory=list)
    removed: int = 0  # files of earlier backups it no longer names (deleted instances, leftovers)
    instances: int = 0
    studies: int = 0
    deleted_during: int = 0  # instances deleted or replaced after the snapshot: not in the backup
    lost: list[str] = field(default_factory=list)  # files the live index names that the archive lacks
    not_removed: list[str] = field(default_factory=list)  # "name: why", the first few
    same_disk: bool = False  # DIR is on the data directory's file system
    seconds: float = 0.0
    mb_per_s: float = 0.0  # copied bytes per second (MB = 10^6 bytes)


def back_up(config_file: Path, config: Config, directory: Path, progress: Progress,
            verify_all: bool = False) -> Summary:
    """Back the archive configured in `config` (read from `config_file`) up into `directory`."""
    started = time.monotonic()
    data, store = data_dir(config), store_dir(config)
    if not directory.is_dir():
        raise BackupFailed(f"{directory} is not a directory (is the disk or share mounted?)")
    for what, inside in (("data directory", data), ("store directory", store)):
        if directory.resolve() == inside.resolve() or inside.resolve() in directory.resolve().parents:
            raise BackupFailed(f"{directory} is inside the {what} {inside}: a backup belongs on another disk")
    try:
        previous = read_manifest(directory)
    except Unreadable as exc:
        raise BackupFailed(f"{exc}; a backup does not write over what it cannot read") from None
    try:
        held = lock.hold(directory, "service-tool backup --full")
    except lock.InUse as exc:
        raise BackupFailed(f"{exc}: one backup at a time") from None
    except OSError as exc:
        raise BackupFailed(f"{directory} is not writable: {error_text(exc)}") from None
    # The index snapshot is made in DIR, under its lock: not in /tmp, which on the box is on the
    # root slot (issue 21) and would keep a copy of the patient data after a killed backup. Its
    # name is one _sweep removes; one a killed backup left goes first.
    snapshot = directory / SNAPSHOT
    try:
        snapshot.unlink(missing_ok=True)
        try:
            summary = _Run(config_file, config.index.url, data, store, directory, previous, progress,
                           verify_all).run(snapshot)
        finally:
            snapshot.unlink(missing_ok=True)
    except (BackupFailed, OSError, Damaged, PeeweeException) as exc:
        text = error_text(exc) if isinstance(exc, OSError) else first_line(exc)
        raise BackupFailed(f"{text}; {directory} holds the previous backup as it was") from None
    finally:
        held.close()
    summary.same_disk = os.stat(directory).st_dev in (os.stat(data).st_dev, os.stat(store).st_dev)
    summary.seconds = round(time.monotonic() - started, 2)
    summary.mb_per_s = round(summary.copied_bytes / 1e6 / summary.seconds, 1) if summary.seconds else 0.0
    return summary


class _Run:
    def __init__(self, config_file: Path, url: str, data: Path, store: Path, directory: Path, previous: Manifest | None,
                 progress: Progress, verify_all: bool):
        self.config_file, self.url, self.data, self.store = config_file, url, data, store
        self.directory, self.previous = directory, previous
        self.progress, self.verify_all = progress, verify_all
        self.written: list[Path] = []  # new in DIR: removed if this backup fails

    def run(self, snapshot: Path) -> Summary:
        made = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        taken = backup(self.url, self.data, snapshot)
        stored = _stored_files(snapshot)
        generation = self.previous.generation + 1 if self.previous else 1
        held = self.previous.files if self.previous else {}
        new = [(path, size) for path, size in stored if held.get(f"{STORE}/{path}", (None,))[0] != size]
        _check_space(self.directory, [size for _, size in new] + [taken.size, self.config_file.stat().st_size])
        self.progress.begin(f"index snapshot of {taken.instances} instances in {taken.studies} studies; "
                            f"{len(stored)} stored files ({_mb(stored)} MB), {len(new)} of them "
                            f"({_mb(new)} MB) not in {self.directory} yet", len(stored), _total(stored))
        summary = Summary(str(self.directory), generation)
        try:
            files, gone = self._copy_stored(stored, held, summary)
            summary.instances, summary.studies = _prune(snapshot, gone) if gone else (taken.instances, taken.studies)
            summary.lost = _still_indexed(self.url, self.data, gone)
            summary.deleted_during = len(gone) - len(summary.lost)
            config_name, index_name = f"config-{generation}.toml", f"index-{generation}.sqlite"
            head = {config_name: self._copy(self.config_file, config_name),
                    index_name: self._copy(snapshot, index_name)}
            fsync_dir(self.directory)
            write_manifest(self.directory, Manifest(
                generation, made, socket.gethostname(), str(self.data), str(self.config_file.resolve()),
                config_name, index_name, summary.instances, summary.studies, {**head, **files}))
        except BaseException:
            for path in self.written:
                path.unlink(missing_ok=True)
            raise
        summary.files, summary.bytes = len(files), sum(size for size, _ in files.values())
        summary.removed, summary.not_removed = _sweep(self.directory, {**head, **files})
        return summary

    def _copy_stored(self, stored: list[tuple[str, int]], held: dict, summary: Summary):
        """Each stored file into DIR unless DIR holds it: (manifest entries, paths gone meanwhile)."""
        files: dict[str, tuple[int, str]] = {}
        gone: list[str] = []
        made_dirs: set[Path] = set()
        done_bytes = 0
        for done, (path, size) in enumerate(stored, 1):
            name = f"{STORE}/{path}"
            target = self.directory / name
            entry = held.get(name)
            if entry is not None and entry[0] == size and self._holds(target, entry):
                files[name] = entry
                summary.skipped += 1
            else:
                if target.parent not in made_dirs:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    made_dirs.add(target.parent)
                source = self.store / path
                try:
                    files[name] = copy_verified(source, target)
                except FileNotFoundError as exc:
                    if exc.filename != str(source):
                        raise
                    gone.append(path)
                else:
                    if entry is None:
                        self.written.append(target)
                    else:
                        summary.recopied.append(name)
                        if files[name] != tuple(entry):
                            summary.changed.append(name)
                    summary.copied += 1
                    summary.copied_bytes += size
            done_bytes += size
            self.progress.advance(done, done_bytes)
        for directory in sorted(made_dirs):  # the new names durable before the manifest names them
            fsync_dir(directory)
        if made_dirs:
            fsync_dir(self.directory / STORE)
        return files, gone

    def _holds(self, target: Path, entry: tuple[int, str]) -> bool:
        """Whether DIR's copy is the file its manifest entry describes (by size, or by content)."""
        try:
            return hash_file(target) == tuple(entry) if self.verify_all else target.stat().st_size == entry[0]
        except OSError:
            return False

    def _copy(self, source: Path, name: str) -> tuple[int, str]:
        target = self.directory / name
        entry = copy_verified(source, target)
        self.written.append(target)
        return entry


def _mb(files: list[tuple[str, int]]) -> int:
    return round(_total(files) / 1e6)


def _total(files: list[tuple[str, int]]) -> int:
    return sum(size for _, size in files)


def _check_space(directory: Path, sizes: list[int]) -> None:
    """Refuse before writing anything when DIR has no room for what is to be copied."""
    st = os.statvfs(directory)
    block = st.f_frsize or 4096
    needed = sum(-(-size // block) * block for size in sizes)
    free = st.f_bavail * st.f_frsize
    if needed > free:
        raise BackupFailed(f"{directory} has {free / 1e6:.1f} MB free and this backup needs {needed / 1e6:.1f} MB "
                           "more (the disk is full)")


def _snapshot_db(snapshot: Path) -> SqliteDatabase:
    return SqliteDatabase(str(snapshot), pragmas={"foreign_keys": 1})


def _stored_files(snapshot: Path) -> list[tuple[str, int]]:
    """(path under store/, size) of every instance the snapshot holds, in path order: one store
    directory after the other."""
    db = _snapshot_db(snapshot)
    with db.bind_ctx(ALL_MODELS), db.connection_context():
        return list(Instance.select(Instance.path, Instance.size).order_by(Instance.path).tuples())


def _prune(snapshot: Path, gone: list[str]) -> tuple[int, int]:
    """Remove the instances whose files went from the snapshot, and the series, studies and
    patients that held nothing else; (instances, studies) left."""
    db = _snapshot_db(snapshot)
    with db.bind_ctx(ALL_MODELS), db.connection_context():
        with db.atomic():
            series = set()
            for chunk in _chunks(gone):
                series.update(Instance.select(Instance.series).where(Instance.path.in_(chunk)).scalars())
                Instance.delete().where(Instance.path.in_(chunk)).execute()
            studies = _delete_empty(Series, series, Instance.series, Series.study)
            patients = _delete_empty(Study, studies, Series.study, Study.patient)
            _delete_empty(Patient, patients, Study.patient, None)
        counts = Instance.select().count(), Study.select().count()
    fsync_file(snapshot)
    return counts


def _delete_empty(model, ids: set[int], child_key, parent_key) -> set[int]:
    """Delete the rows of `model` among `ids` that no row refers to through `child_key`; the ids
    their `parent_key` named (the next level up to look at)."""
    empty = [i for i in ids if not child_key.model.select().where(child_key == i).exists()]
    parents = set()
    for chunk in _chunks(empty):
        if parent_key is not None:
            parents.update(model.select(parent_key).where(model.id.in_(chunk)).scalars())
        model.delete().where(model.id.in_(chunk)).execute()
    return parents


def _still_indexed(url: str, data: Path, gone: list[str]) -> list[str]:
    """Those of `gone` the live index still names: lost from the archive, not deleted."""
    if not gone:
        return []
    with read_only(url, data) as live:
        named = {path for chunk in _chunks(gone)
                 for path in Instance.select(Instance.path).where(Instance.path.in_(chunk)).scalars(live)}
    return [f"{STORE}/{path}" for path in gone if path in named]



def _sweep(directory: Path, files: dict) -> tuple[int, list[str]]:
    """Remove from DIR what its manifest does not name: stored files of instances deleted since
    an earlier backup, the earlier generation's index and configuration, and what interrupted
    backups left. (stored files removed, "name: why" of the first few that could not be)."""
    removed, failed = 0, []
    for path in directory.iterdir():
        if path.name not in files and _LEFT_BEHIND.fullmatch(path.name) and path.is_file():
            _remove(path, failed)
    store = directory / STORE
    for sub in sorted(store.iterdir()) if store.is_dir() else []:
        changed = False
        for path in sub.iterdir():
            if f"{STORE}/{sub.name}/{path.name}" not in files and path.is_file() and _remove(path, failed):
                removed += not path.name.startswith(".")  # not the temporary file of a copy
                changed = True
        if changed:
            fsync_dir(sub)
    fsync_dir(directory)
    return removed, failed[:_LISTED]


def _remove(path: Path, failed: list[str]) -> bool:
    try:
        path.unlink()
        return True
    except OSError as exc:
        failed.append(error_text(exc))
        return False


def _chunks(items: list) -> list[list]:
    items = list(items)
    return [items[i:i + _CHUNK] for i in range(0, len(items), _CHUNK)]
