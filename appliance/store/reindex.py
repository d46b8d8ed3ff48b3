"""`service-tool reindex`: a new index built from the stored files, then put in the old one's place.

For an index that is lost, corrupted, or built with another normaliser (db.py). Offline: the
caller holds the data directory lock (lock.py), so the service is not running.

Each `store/aa/<uuid>.dcm` goes through the C-STORE pipeline's own steps, its File Meta
standing for the C-STORE-RQ (pynetdicom wrote the request's UIDs and transfer syntax there):
`read_header`, `check_required`, `coercion.index_values` with the configured policy, and
`Archive.index_instance`. Files go in in arrival order (modification time), because what the
ingest decided depended on what was indexed before: the Patient ID rule (EL-06/07), the study
and series values of a study's first instance, and which of two files with one SOP Instance
UID keeps it (ST-17) or wins (ST-18).

What the files do not hold is taken from the old index when it can still be read: each file's
received time, calling AE title and the UID ST-17 gave it as a duplicate, and the storage
commitment requests not yet reported (SC-24). Without it the received time is the file's
modification time, the calling AE title is the File Meta's Source Application Entity Title,
duplicates get UIDs made from their file names (as the C-STORE gave them), and pending
commitment reports are lost (the modality's request times out and it may ask again).

A file still journaled in spool/ (not stored for good when the service stopped, files.py) is
indexed when the old index has it or it is sealed, which is what start-up recovery decides;
an unsealed one was never acknowledged and is left for recovery to remove. Files that cannot
be read, and older files an ST-18 replacement superseded, are reported and left in place.
The ingest's other decisions are made as a C-STORE makes them, and such files are reported and
left in place too: a file whose data set is byte for byte that of a file indexed before it
with the same SOP Instance UID (ST-25: an identical re-send, not indexed twice; an archive
stored before ST-25 may hold such copies as ST-17 duplicates), and, under `hierarchy_conflict
= "refuse"`, a file whose series or study the new index holds under another parent (ST-26; a
C-STORE refused it, so it can only be one journaled when the process was killed, or an
archive stored under "keep").

The new index is built beside the old one and renamed over it only when complete; the old
database (with its -wal and -shm) is kept as `index.sqlite.replaced-<UTC time>`.

On PostgreSQL (IX-01) the new index is built the same way, into an SQLite file in the data
directory, and then replaces the database's content in one transaction (snapshot.py: TRUNCATE
... RESTART IDENTITY, its rows with their ids, the id sequences set past them). The old content
is kept first, as a snapshot in an SQLite file under the same `index.sqlite.replaced-<UTC time>`
name, which is also where what the files lack is read from. The database is shared by the boxes
of one archive (IX-02), so the rebuild is refused while any other box's service is connected to
it (Index.alone), and a box that starts meanwhile waits until it is done. The stored files are
those of `storage.store_dir`.
"""

from __future__ import annotations

import datetime
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from peewee import DatabaseError, PeeweeException, SqliteDatabase

from appliance.config import Config, data_dir as data_dir_of, store_dir
from appliance.config.model import StorageSCP
from appliance.errors import DicomStatusError
from appliance.store import INDEX_NAME, coercion, dialect, snapshot
from appliance.store.db import SqliteIndex, open_index
from appliance.durable import fsync_dir, fsync_file, hand_over
from appliance.store.files import InFlight, StorageArea
from appliance.store.header import Unparseable, read_header
from appliance.store.ingest import AlreadyStored, Archive, check_required, stored_request
from appliance.store.models import CommitmentRequest, Instance, Study

_SIDE_FILES = ("-wal", "-shm")
_BATCH = 500  # instances per transaction: one fsync'd commit each
_LISTED = 10  # unreadable and superseded files named in the summary
_FANOUT = re.compile(r"[0-9a-f]{2}")
_STORED_NAME = re.compile(r"([0-9a-f]{32})\.dcm")
_COMMITMENT_COLUMNS = ("transaction_uid", "requester", "received_at", "committed", "failed", "attempts",
                       "next_attempt")


class Refused(Exception):
    """The data directory is not an archive that can be reindexed."""


@dataclass
class Summary:
    files: int = 0  # stored files examined
    instances: int = 0  # in the new index
    studies: int = 0
    unreadable: int = 0  # left in place, not indexed
    unreadable_files: list[str] = field(default_factory=list)  # the first few, "path: why"
    superseded: int = 0  # ST-18: an older file of a UID a later file replaced; left in place
    superseded_files: list[str] = field(default_factory=list)
    identical: int = 0  # ST-25: the same data set as an earlier file with its UID; left in place
    identical_files: list[str] = field(default_factory=list)
    conflicting: int = 0  # ST-26, hierarchy_conflict refuse: filed under another parent; left in place
    conflicting_files: list[str] = field(default_factory=list)
    unacknowledged: int = 0  # journaled files neither sealed nor in the old index (recovery removes them)
    ignored: int = 0  # other names under store/
    old_index: str | None = None  # where the replaced index was kept
    old_index_unreadable: str = ""  # why nothing could be carried over from it
    carried_instances: int = 0  # rows whose received time, calling AE and UID came from the old index
    carried_commitment_requests: int = 0
    seconds: float = 0.0


def rebuild(config: Config, progress=None, every: int = 1000) -> Summary:
    """Rebuild the configured archive's index from its files; `progress(done, total)` every
    `every` files. The caller holds the data directory lock. On any error the old index is left
    as it was. PostgreSQL: OtherBoxes (store/postgres.py) while another box is connected."""
    started = time.monotonic()
    data_dir, store = data_dir_of(config), store_dir(config)
    if not store.is_dir():
        raise Refused(f"{data_dir} has no store/ directory: no archive to reindex" if store == data_dir / "store"
                      else f"the store directory {store} does not exist: no archive to reindex")
    live = data_dir / INDEX_NAME
    new = data_dir / f"{INDEX_NAME}.reindex"
    summary = Summary()
    build = _Rebuild(data_dir, store, config.storage_scp, summary)
    if not config.index.url:
        build.run(_OldIndex.open(live, summary), new, progress, every)
        kept = _replace(new, live)
    else:
        index = open_index(config.index.url, data_dir, application_name="service-tool", check_normaliser=False)
        try:
            with index.alone():
                kept = _keep(index, live, summary)
                try:
                    build.run(_OldIndex.open(kept, summary) if kept else None, new, progress, every)
                    try:
                        rebuilt = SqliteDatabase(str(new), pragmas={"foreign_keys": 1})
                        with rebuilt.connection_context():
                            snapshot.replace_content(index, rebuilt)
                    finally:
                        _remove_database(new)
                except BaseException:
                    if kept:  # the database is as it was: no copy of it to keep
                        _remove_database(kept)
                    raise
        finally:
            index.close()
    summary.old_index = str(kept) if kept else None
    summary.seconds = round(time.monotonic() - started, 2)
    return summary


def _keep(index, live: Path, summary: Summary) -> Path | None:
    """The PostgreSQL index's content as it is, in an SQLite file under the name a replaced
    SQLite index gets (None: the database held no index before this opened it)."""
    if not index.found_schema:
        summary.old_index_unreadable = "there is none"
        return None
    kept = _unused_name(live)
    try:
        snapshot.to_sqlite(index.db, kept)
        fsync_file(kept)
        fsync_dir(kept.parent)
    except BaseException:
        _remove_database(kept)
        raise
    return kept


class _OldIndex:
    """The index being replaced, for what the files cannot tell: the SQLite index file opened
    read-only, or the snapshot of the PostgreSQL index's content (`_keep`)."""

    def __init__(self, path: Path):
        # Without a -wal the file alone is complete and, the lock being held, nothing writes
        # it: immutable, so that SQLite creates no -wal or -shm beside it.
        immutable = "" if Path(f"{path}-wal").exists() else "&immutable=1"
        self.db = SqliteDatabase(f"{path.resolve().as_uri()}?mode=ro{immutable}", uri=True)
        try:
            self.db.connect()
            problems = [row[0] for row in self.db.execute_sql("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise DatabaseError("; ".join(problems[:3]))
            self.instance("")  # the columns it needs are there
            self.has_commitments = "commitment_request" in self.db.get_tables()
        except BaseException:
            self.db.close()
            raise

    @classmethod
    def open(cls, path: Path, summary: Summary) -> "_OldIndex | None":
        if not path.exists():
            summary.old_index_unreadable = "there is none"
            return None
        try:
            return cls(path)
        except PeeweeException as exc:
            summary.old_index_unreadable = str(exc)
            return None

    def instance(self, relative: str) -> tuple[str, str, datetime.datetime | str, str] | None:
        """(indexed UID, the file's UID, received at, calling AE) of the row for that file."""
        return (Instance.select(Instance.sop_instance_uid, Instance.file_sop_instance_uid, Instance.received_at,
                                Instance.calling_ae)
                .where(Instance.path == relative).tuples().first(self.db))

    def commitment_requests(self) -> list[tuple]:
        if not self.has_commitments:
            return []
        columns = [getattr(CommitmentRequest, name) for name in _COMMITMENT_COLUMNS]
        return list(CommitmentRequest.select(*columns).order_by(CommitmentRequest.id).tuples().execute(self.db))

    def close(self) -> None:
        self.db.close()


class _Rebuild:
    def __init__(self, data_dir: Path, store: Path, policy: StorageSCP, summary: Summary):
        self.area = StorageArea(data_dir, store)
        self.policy = policy
        self.summary = summary
        self.journaled = {p.stem for p in self.area.spool.glob("*.dcm")}  # not the retired (.old)

    def run(self, old: _OldIndex | None, new: Path, progress, every: int) -> None:
        """The new index at `new` (SQLite), complete and durable; none there on any error."""
        self.old = old
        try:
            _remove_database(new)  # left by a rebuild that was interrupted
            try:
                self._build(new, progress, every)
                fsync_file(new)
                hand_over(new, self.area.root)
            except BaseException:
                _remove_database(new)
                raise
        finally:
            if old is not None:
                old.close()

    def _build(self, new: Path, progress, every: int) -> None:
        keys, self.summary.ignored = _stored_files(self.area.store)
        index = SqliteIndex(new)
        try:
            self.archive = Archive(self.policy, index, self.area, reserve_bytes=0)
            for start in range(0, len(keys), _BATCH):
                with index.write():
                    for key in keys[start:start + _BATCH]:
                        self.add(key)
                        if progress and self.summary.files % every == 0:
                            progress(self.summary.files, len(keys))
            if self.old is not None:
                rows = self.old.commitment_requests()
                if rows:
                    with index.write():
                        CommitmentRequest.insert_many(rows, fields=_COMMITMENT_COLUMNS).execute()
                self.summary.carried_commitment_requests = len(rows)
            self.summary.instances = Instance.select().count()
            self.summary.studies = Study.select().count()
        finally:
            index.close()
        if Path(f"{new}-wal").exists():
            raise RuntimeError(f"{new}: its write-ahead log was not checkpointed into it")

    def add(self, key: bytes) -> None:
        mtime_ns, name = int.from_bytes(key[:8], "big"), key[8:].hex()
        relative = f"{name[:2]}/{name}.dcm"
        self.summary.files += 1
        known = self.old.instance(relative) if self.old is not None else None
        if name in self.journaled and known is None and InFlight(self.area, name).seal() is None:
            self.summary.unacknowledged += 1
            return
        path = self.area.store / relative
        try:
            request = stored_request(path, known[3] if known else None)
            header = read_header(path, request.implicit_vr)
            check_required(header, request)
            size = path.stat().st_size
        except (OSError, Unparseable) as exc:
            self._note("unreadable", f"store/{relative}: {exc}")
            return
        except DicomStatusError as exc:
            self._note("unreadable", f"store/{relative}: {exc.why}")
            return
        values = coercion.index_values(header, self.policy.default_values, self.policy.exam_types)
        received_at = datetime.datetime.fromtimestamp(mtime_ns / 1e9, datetime.timezone.utc)
        duplicate_uid = None
        if known is not None:
            received_at = dialect.as_utc(known[2])
            if known[0] != known[1]:
                duplicate_uid = known[0]
        try:
            # A savepoint (about 25 us a file, a tenth of a rebuild): a decision against the file undoes its rows.
            with self.archive.index.db.atomic():
                replaced = self.archive.index_instance(values, request, relative, size, received_at, duplicate_uid)
        except AlreadyStored as exc:
            self.archive.forget_cached_rows()
            self._note("identical", f"store/{relative}: {exc}")
            return
        except DicomStatusError as exc:
            self.archive.forget_cached_rows()
            self._note("conflicting", f"store/{relative}: {exc.why}")
            return
        if known is not None:
            self.summary.carried_instances += 1
        if replaced:
            self._note("superseded", f"store/{replaced}")

    def _note(self, kind: str, line: str) -> None:
        """One more file of a `kind` the summary counts and names the first few of."""
        setattr(self.summary, kind, getattr(self.summary, kind) + 1)
        listed = getattr(self.summary, f"{kind}_files")
        if len(listed) < _LISTED:
            listed.append(line)


def _stored_files(store: Path) -> tuple[list[bytes], int]:
    """Keys of the stored files in arrival order, and the number of other names under store/.

    A key is the modification time (8 bytes, big-endian) and the 16 bytes of the name, so a
    million files sort in about 65 MB.
    """
    keys, ignored = [], 0
    for directory in os.scandir(store):
        if not (_FANOUT.fullmatch(directory.name) and directory.is_dir(follow_symlinks=False)):
            ignored += 1
            continue
        for entry in os.scandir(directory.path):
            match = _STORED_NAME.fullmatch(entry.name)
            if match and entry.name.startswith(directory.name) and entry.is_file(follow_symlinks=False):
                keys.append(entry.stat().st_mtime_ns.to_bytes(8, "big") + bytes.fromhex(match[1]))
            else:
                ignored += 1
    keys.sort()
    return keys, ignored


def _replace(new: Path, live: Path) -> Path | None:
    """Rename `new` over `live`. The old database and its -wal/-shm get hard links under a
    `.replaced-<UTC time>` name first, so at no moment is there no copy of them."""
    present = [suffix for suffix in ("", *_SIDE_FILES) if Path(f"{live}{suffix}").exists()]
    kept = None
    if present:
        kept = _unused_name(live)
        for suffix in present:
            os.link(f"{live}{suffix}", f"{kept}{suffix}")
        fsync_dir(live.parent)
        # Before the new file takes the name: SQLite would replay an old -wal into it.
        for suffix in _SIDE_FILES:
            Path(f"{live}{suffix}").unlink(missing_ok=True)
    os.replace(new, live)
    fsync_dir(live.parent)
    return kept


def _unused_name(live: Path) -> Path:
    base = f"{live}.replaced-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    candidate, n = Path(base), 2
    while any(Path(f"{candidate}{suffix}").exists() for suffix in ("", *_SIDE_FILES)):
        candidate, n = Path(f"{base}-{n}"), n + 1
    return candidate


def _remove_database(path: Path) -> None:
    for suffix in ("", *_SIDE_FILES, "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
