"""`service-tool restore DIR`: a box rebuilt from a whole-archive backup (full_backup.py, MG-05).

Offline: the data directory's lock (lock.py) is held throughout, so the service does not run
on it. What goes where: the configuration to the configuration file named (one already there
is kept as `<name>.replaced-<UTC time>`, unless it is the same), the index and the stored
files into the data directory that configuration names, or into `data_dir` when given, which
the written configuration then names instead.

The data directory must hold no archive: absent, empty, or as a service that never stored an
instance leaves it (a new box after its first boot: an index without instances, empty store
directories, its log, lock, audit spool and node-id). Anything else there is refused, naming it.
So is a `storage.store_dir` elsewhere that holds a stored file.

On PostgreSQL (IX-01) the index goes into the database the restored configuration names: it
must hold no instances and no storage commitment requests, and no other box's service may be
connected to it (Index.alone; a box starting meanwhile waits until the restore is done). The
backup's snapshot (SQLite, brought to this release's schema) then replaces the database's
content in one transaction, ids kept (snapshot.replace_content).

Every file is checked against the manifest as it is copied, and read back after its fsync
(backup_set.copy_verified); one that differs stops the restore, naming it, and what the
restore wrote is removed again. A marker (RESTORE_MARKER) is durable before the first stored
file and goes once the index, the last file, is in place: the service does not start while it
is there (daemon.py), and the next restore clears what an interrupted one left.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import re
import shutil
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import tomlkit
from peewee import Database, PeeweeException

from appliance.config import data_dir, load_dict, store_dir
from appliance.config.write import write_document
from appliance.durable import fsync_dir, hand_over, write_bytes
from appliance.errors import ConfigError
from appliance.store import INDEX_NAME, RESTORE_MARKER, lock, snapshot
from appliance.store.db import Index, SqliteIndex, first_line, open_index, read_only
from appliance.store.models import CommitmentRequest, Instance
from appliance.store.node import NODE_FILE
from appliance.store.backup_set import (MANIFEST_NAME, STORE, Damaged, Manifest, Unreadable, copy_verified,
                                        error_text, read_manifest)
from appliance.store.full_backup import Progress

_STAGED_INDEX = f"{INDEX_NAME}.restoring"
_INDEX_SIDE_FILES = (f"{INDEX_NAME}-wal", f"{INDEX_NAME}-shm")
_STAGED_SIDE_FILES = (f"{_STAGED_INDEX}-wal", f"{_STAGED_INDEX}-shm")
# What a box's service makes in its data directory besides the archive: kept by a restore.
# Its node-id (IX-02) stays: the restored archive is served by this box.
_BOX_OWN = {lock.LOCK_NAME, "control.sock", "audit-spool", NODE_FILE, *_INDEX_SIDE_FILES}
_SERVICE_LOG = re.compile(r".+\.log(\.\d+)?")  # logging.file and its rotated backups


class Refused(Exception):
    """Nothing was changed: the restore cannot go ahead, or it failed and was undone."""


class Incomplete(Exception):
    """The restore failed after the configuration was written: the marker keeps the service
    from starting on the data directory until a restore completes."""


@dataclass
class Summary:
    directory: str
    generation: int
    made: str
    host: str
    config: str  # the configuration file written
    config_replaced: str | None  # where the file that was there is kept
    data_dir: str
    data_dir_given: bool  # --data-dir: the written configuration names it (else it named it already)
    data_dir_created: bool
    files: int
    bytes: int
    instances: int
    studies: int
    seconds: float = 0.0
    mb_per_s: float = 0.0


def restore(directory: Path, config_file: Path, progress: Progress, data_override: Path | None = None) -> Summary:
    """Restore the backup in `directory`; Refused (nothing changed) when it cannot."""
    started = time.monotonic()
    try:
        manifest = read_manifest(directory)
    except Unreadable as exc:
        raise Refused(str(exc)) from None
    if manifest is None:
        raise Refused(f"{directory} holds no backup (there is no {directory / MANIFEST_NAME})")
    document, config = _configuration(directory, manifest, config_file, data_override)
    data, store = data_dir(config), store_dir(config)
    created = not data.exists()
    try:
        data.mkdir(mode=0o750, parents=True, exist_ok=True)
        held = lock.hold(data, "service-tool restore")
    except lock.InUse as exc:
        raise Refused(f"{exc}; stop the service first") from None
    except OSError as exc:
        raise Refused(f"cannot use the data directory: {error_text(exc)}") from None
    try:
        hand_over(data / lock.LOCK_NAME, data)
        with _database(config.index.url, data) as index:
            if not (data / RESTORE_MARKER).exists() and (found := _not_empty(data, store)):
                raise Refused(f"the data directory {data} is not empty: {found}. A restore goes into an empty data "
                              "directory only (or another one: --data-dir)")
            if index is not None and (found := _indexed(index.db, f"the index database {index.where}")):
                raise Refused(f"{found}. A restore goes into an empty archive only")
            summary = _Restore(directory, manifest, data, store, index, progress).run(config_file, document)
    except Incomplete:
        raise  # what is there stays, with the marker, for the next restore
    except BaseException as exc:
        if created:
            shutil.rmtree(data, ignore_errors=True)
        if isinstance(exc, (OSError, Damaged, ConfigError, PeeweeException)):
            text = error_text(exc) if isinstance(exc, OSError) else first_line(exc)
            raise Refused(f"{text}; the restore was undone") from None
        raise
    finally:
        held.close()
    summary.data_dir_given, summary.data_dir_created = data_override is not None, created
    summary.seconds = round(time.monotonic() - started, 2)
    summary.mb_per_s = round(summary.bytes / 1e6 / summary.seconds, 1) if summary.seconds else 0.0
    return summary


@contextlib.contextmanager
def _database(url: str, data: Path):
    """The PostgreSQL index the restored configuration names, to itself (Index.alone), or None
    for SQLite (the data directory's lock, held, is enough)."""
    if not url:
        yield None
        return
    from appliance.store.postgres import OtherBoxes

    try:
        index = open_index(url, data, application_name="service-tool", check_normaliser=False)
    except (PeeweeException, RuntimeError) as exc:
        raise Refused(f"the index database cannot be used: {first_line(exc)}") from None
    try:
        with index.alone():
            yield index
    except OtherBoxes as exc:
        raise Refused(str(exc)) from None
    finally:
        index.close()



def _configuration(directory: Path, manifest: Manifest, config_file: Path, data_override: Path | None):
    """The backed-up configuration as a document to write at `config_file` (naming `data_override`
    as its data directory when given), and as the service will load it from there."""
    source = directory / manifest.config
    try:
        text = source.read_bytes()
    except OSError as exc:
        raise Refused(f"the backup's configuration cannot be read: {error_text(exc)}") from None
    if (len(text), hashlib.sha256(text).hexdigest()) != tuple(manifest.files.get(manifest.config, ())):
        raise Refused(f"{source} is not the file the manifest names (its checksum differs): the backup is damaged")
    document = tomlkit.parse(text.decode("utf-8"))
    if data_override is not None:
        if "storage" not in document:
            document["storage"] = tomlkit.table()
        document["storage"]["data_dir"] = str(data_override.resolve())
    try:
        config = load_dict(tomllib.loads(tomlkit.dumps(document)), base_dir=str(config_file.resolve().parent))
    except ConfigError as exc:
        raise Refused(f"the configuration in the backup is not valid for this release: {exc}") from None
    return document, config


class _Restore:
    def __init__(self, directory: Path, manifest: Manifest, data: Path, store: Path, index: Index | None,
                 progress: Progress):
        self.directory, self.manifest, self.data, self.progress = directory, manifest, data, progress
        self.store = store
        self.index = index  # PostgreSQL's; None: the index is the SQLite file in the data directory
        self.made: list[Path] = []  # files and directories this restore made: removed if it fails

    def run(self, config_file: Path, document) -> Summary:
        marker = self.data / RESTORE_MARKER
        if marker.exists():
            self._clear_interrupted()
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        write_bytes(marker, f"restore from {self.directory} started {stamp} (pid {os.getpid()})\n".encode(), 0o644)
        hand_over(marker, self.data)
        stored = self.manifest.stored()
        total = sum(self.manifest.files[name][0] for name in stored)
        m = self.manifest
        self.progress.begin(f"backup {m.generation} of {m.host}, made {m.made}: {len(stored)} stored files "
                            f"({total / 1e6:.0f} MB) into {self.data}", len(stored), total)
        filled = False
        try:
            self._copy_stored(stored)
            staged = self._copy(m.index, self.data / _STAGED_INDEX)
            if self.index is not None:
                self._fill(staged)
                filled = True
            replaced = _write_config(config_file, document)
        except BaseException:
            if filled:  # it held no archive before (restore()), and no box has used it since (alone)
                snapshot.empty(self.index)
            for path in reversed(self.made):
                (path.rmdir if path.is_dir() else path.unlink)()
            for name in _STAGED_SIDE_FILES:
                (self.data / name).unlink(missing_ok=True)
            marker.unlink()
            fsync_dir(self.data)
            raise
        try:
            if self.index is not None:
                staged.unlink()
            else:
                # The service's own empty index goes, -wal and -shm first: a log left beside the
                # new index would be applied to it.
                for name in (*_INDEX_SIDE_FILES, INDEX_NAME):
                    (self.data / name).unlink(missing_ok=True)
                os.rename(staged, self.data / INDEX_NAME)
            fsync_dir(self.data)
            marker.unlink()
            fsync_dir(self.data)
        except OSError as exc:
            raise Incomplete(f"{error_text(exc)}; the service will not start on {self.data} until a restore "
                             "completes: run it again") from None
        return Summary(str(self.directory), m.generation, m.made, m.host, str(config_file),
                       str(replaced) if replaced else None, str(self.data), False, False, len(stored), total,
                       m.instances, m.studies)

    def _fill(self, staged: Path) -> None:
        """The PostgreSQL index's content replaced by the snapshot's, in one transaction. The
        snapshot, a file of this restore's own, is first brought to this release's schema."""
        source = SqliteIndex(staged, check_normaliser=False)  # a normaliser change: reindex, as on SQLite
        try:
            snapshot.replace_content(self.index, source.db)
        finally:
            source.close()

    def _copy_stored(self, stored: list[str]) -> None:
        done_bytes = 0
        directories: set[Path] = set()
        if not self.store.exists():  # storage.store_dir elsewhere, not there yet
            self.store.mkdir(mode=0o750, parents=True)
            hand_over(self.store, self.data)
            self.made.append(self.store)
        for done, name in enumerate(stored, 1):
            target = self.store / name.removeprefix(f"{STORE}/")
            for directory in (target.parent.parent, target.parent):
                if directory not in directories and not directory.exists():
                    directory.mkdir(mode=0o750)
                    hand_over(directory, self.data)
                    self.made.append(directory)
                directories.add(directory)
            self._copy(name, target)
            done_bytes += self.manifest.files[name][0]
            self.progress.advance(done, done_bytes)
        for directory in sorted(directories, reverse=True):
            fsync_dir(directory)

    def _copy(self, name: str, target: Path) -> Path:
        """The backup's file `name` to `target`, checked against the manifest."""
        source = self.directory / name
        try:
            copy_verified(source, target, self.manifest.files[name])
        except FileNotFoundError as exc:
            if exc.filename == str(source):
                raise Damaged(f"{source} is missing: the backup is damaged") from None
            raise
        except Damaged as exc:
            raise Damaged(f"{exc}: the backup is damaged") from None
        self.made.append(target)
        hand_over(target, self.data)
        return target

    def _clear_interrupted(self) -> None:
        """What an interrupted restore left (the marker says the archive files are its own)."""
        store = self.store
        for path in sorted(store.rglob("*"), reverse=True) if store.is_dir() else []:
            if path.is_file():
                path.unlink()
        for name in (_STAGED_INDEX, *_STAGED_SIDE_FILES, *_INDEX_SIDE_FILES, INDEX_NAME):
            (self.data / name).unlink(missing_ok=True)
        fsync_dir(self.data)


def _not_empty(data: Path, store: Path) -> str | None:
    """What in the data directory is not a new box's own (module docstring), or None; or the
    stored file a store directory elsewhere holds."""
    if store != data / STORE and (found := _stored_file(store)):
        return found
    for entry in sorted(data.iterdir()):
        name = entry.name
        if name in _BOX_OWN or (_SERVICE_LOG.fullmatch(name) and entry.is_file()):
            continue
        if name == INDEX_NAME:
            found = _indexed_file(data)
        elif name == STORE:
            found = _stored_file(entry)
        elif name in ("spool", "quarantine"):  # the spool's files made ahead are empty (files.py)
            found = next((f"{p} is not empty" for p in sorted(entry.iterdir()) if p.is_dir() or p.stat().st_size),
                         None)
        else:
            found = f"{entry} is not the service's"
        if found:
            return found
    return None


def _stored_file(store: Path) -> str | None:
    if not store.is_dir():
        return None
    return next((f"{p} is a stored file" for p in sorted(store.rglob("*")) if not p.is_dir()), None)


def _indexed_file(data: Path) -> str | None:
    """Why the SQLite index in the data directory is not an empty archive's, or None."""
    index = data / INDEX_NAME
    try:
        with read_only("", data) as db:
            return _indexed(db, str(index))
    except (PeeweeException, OSError) as exc:
        return f"{index} cannot be read ({exc})"


def _indexed(db: Database, where: str) -> str | None:
    """Why the index `db` (named `where`) is not an empty archive's, or None."""
    tables = set(db.get_tables())
    for model, what in ((Instance, "instances"), (CommitmentRequest, "storage commitment requests")):
        if model._meta.table_name in tables and (count := model.select().count(db)):
            return f"{where} holds {count} {what}"
    return None


def _write_config(config_file: Path, document) -> Path | None:
    """Write the restored configuration; where the file that was there is kept, if it differed."""
    text = tomlkit.dumps(document)
    replaced = None
    if config_file.exists() and config_file.read_text(encoding="utf-8", errors="replace") != text:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        replaced = config_file.with_name(f"{config_file.name}.replaced-{stamp}")
        os.link(config_file, replaced)  # the old file keeps its inode; the new one is renamed over its name
        fsync_dir(config_file.parent)
    config_file.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    try:
        write_document(config_file, document)
    except BaseException:
        if replaced:
            replaced.unlink()
        raise
    return replaced
