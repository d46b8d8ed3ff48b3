"""`service-tool restore DIR`: a box rebuilt from a whole-archive backup (full_backup.py, MG-05).

Offline: the data directory's lock (lock.py) is held throughout, so the service does not run
on it. What goes where: the configuration to the configuration file named (one already there
is kept as `<name>.replaced-<UTC time>`, unless it is the same), the index and the stored
files into the data directory that configuration names, or into `data_dir` when given, which
the written configuration then names instead.

The data directory must hold no archive: absent, empty, or as a service that never stored an
instance leaves it (a new box after its first boot: an index without instances, empty store
directories, its log, lock, audit spool and node-id). Anything else there is refused, naming it.

Every file is checked against the manifest as it is copied, and read back after its fsync
(backup_set.copy_verified); one that differs stops the restore, naming it, and what the
restore wrote is removed again. A marker (RESTORE_MARKER) is durable before the first stored
file and goes once the index, the last file, is in place: the service does not start while it
is there (daemon.py), and the next restore clears what an interrupted one left.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import shutil
import sqlite3
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import tomlkit

from appliance.config import data_dir, load_dict
from appliance.config.write import write_document
from appliance.durable import fsync_dir, hand_over, write_bytes
from appliance.errors import ConfigError
from appliance.store import INDEX_NAME, RESTORE_MARKER, lock
from appliance.store.backup import read_only
from appliance.store.node import NODE_FILE
from appliance.store.backup_set import (MANIFEST_NAME, STORE, Damaged, Manifest, Unreadable, copy_verified,
                                        error_text, read_manifest)
from appliance.store.full_backup import Progress

_STAGED_INDEX = f"{INDEX_NAME}.restoring"
_INDEX_SIDE_FILES = (f"{INDEX_NAME}-wal", f"{INDEX_NAME}-shm")
# What a box's service makes in its data directory besides the archive: kept by a restore.
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
    data = data_dir(config)
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
        if not (data / RESTORE_MARKER).exists() and (found := _not_empty(data)):
            raise Refused(f"the data directory {data} is not empty: {found}. A restore goes into an empty data "
                          "directory only (or another one: --data-dir)")
        summary = _Restore(directory, manifest, data, progress).run(config_file, document)
    except Incomplete:
        raise  # what is there stays, with the marker, for the next restore
    except BaseException as exc:
        if created:
            shutil.rmtree(data, ignore_errors=True)
        if isinstance(exc, (OSError, Damaged, ConfigError)):
            raise Refused(f"{error_text(exc) if isinstance(exc, OSError) else exc}; the restore was undone") from None
        raise
    finally:
        held.close()
    summary.data_dir_given, summary.data_dir_created = data_override is not None, created
    summary.seconds = round(time.monotonic() - started, 2)
    summary.mb_per_s = round(summary.bytes / 1e6 / summary.seconds, 1) if summary.seconds else 0.0
    return summary


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
    def __init__(self, directory: Path, manifest: Manifest, data: Path, progress: Progress):
        self.directory, self.manifest, self.data, self.progress = directory, manifest, data, progress
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
        try:
            self._copy_stored(stored)
            staged = self._copy(m.index, self.data / _STAGED_INDEX)
            replaced = _write_config(config_file, document)
        except BaseException:
            for path in reversed(self.made):
                (path.rmdir if path.is_dir() else path.unlink)()
            marker.unlink()
            fsync_dir(self.data)
            raise
        try:
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

    def _copy_stored(self, stored: list[str]) -> None:
        done_bytes = 0
        directories: set[Path] = set()
        for done, name in enumerate(stored, 1):
            target = self.data / name
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
        store = self.data / STORE
        for path in sorted(store.rglob("*"), reverse=True) if store.is_dir() else []:
            if path.is_file():
                path.unlink()
        for name in (_STAGED_INDEX, *_INDEX_SIDE_FILES, INDEX_NAME):
            (self.data / name).unlink(missing_ok=True)
        fsync_dir(self.data)


def _not_empty(data: Path) -> str | None:
    """What in the data directory is not a new box's own (module docstring), or None."""
    for entry in sorted(data.iterdir()):
        name = entry.name
        if name in _BOX_OWN or (_SERVICE_LOG.fullmatch(name) and entry.is_file()):
            continue
        if name == INDEX_NAME:
            found = _indexed(entry)
        elif name == STORE:
            found = next((f"{p} is a stored file" for p in sorted(entry.rglob("*")) if not p.is_dir()), None)
        elif name in ("spool", "quarantine"):  # the spool's files made ahead are empty (files.py)
            found = next((f"{p} is not empty" for p in sorted(entry.iterdir()) if p.is_dir() or p.stat().st_size),
                         None)
        else:
            found = f"{entry} is not the service's"
        if found:
            return found
    return None


def _indexed(index: Path) -> str | None:
    """Why the index at `index` is not an empty archive's, or None."""
    try:
        with read_only(index) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            counts = {table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # noqa: S608 (own names)
                      for table in ("instance", "commitment_request") if table in tables}
    except sqlite3.Error as exc:
        return f"{index} cannot be read ({exc})"
    if counts.get("instance"):
        return f"{index} holds {counts['instance']} instances"
    if counts.get("commitment_request"):
        return f"{index} holds {counts['commitment_request']} storage commitment requests"
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
