"""Opening the index database: PRAGMAs, schema migrations, and the single-writer rule.

Everything SQLite-specific lives here; the rest of the code speaks peewee, so a site that
outgrows one box can bind the same models to PostgreSQL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path

from peewee import SqliteDatabase

from appliance.durable import hand_over_wal_files
from appliance.store import coercion, models

log = logging.getLogger(__name__)

# Bump when the text folding behind the *_folded columns changes; a mismatch on open means
# the index must be rebuilt from the files (service-tool reindex), never silently mixed.
NORMALISER_VERSION = 2

PRAGMAS = {
    # First, so that every later PRAGMA waits for a lock another process (the service tool)
    # holds instead of failing the start; meanwhile the listeners answer 2/3/1 (AS-02).
    "busy_timeout": 30000,
    "journal_mode": "wal",
    # NORMAL: a commit writes the log without flushing it; `write()` flushes it itself (`sync`),
    # except for the C-STORE pipeline, whose commits are flushed several at a time (IndexFlusher)
    # because the stored file itself is the journal until then (store/files.py).
    "synchronous": "normal",
    "foreign_keys": 1,
    "cache_size": -16384,  # 16 MiB page cache per connection
    "wal_autocheckpoint": 1000,
}


def _migration_1(db) -> None:
    db.create_tables([models.Patient, models.Study, models.Series, models.Instance, models.SchemaInfo])
    models.SchemaInfo.create(normaliser_version=1)


def _migration_2(db) -> None:
    """Normaliser 2 (coercion.pn_search_key): folded names lose trailing empty components, so
    that "DOE" matches a patient indexed without a first name and "*OE" ends where the name
    does; the referring physician is folded like the patient's name."""
    db.execute_sql("UPDATE patient SET name_folded = rtrim(name_folded, '^')")
    for study_id, referring in db.execute_sql("SELECT id, referring_physician FROM study").fetchall():
        models.Study.update(referring_physician_folded=coercion.pn_search_key(referring)).where(
            models.Study.id == study_id).execute()
    models.SchemaInfo.update(normaliser_version=2).execute()


def _migration_3(db) -> None:
    """Storage Commitment requests waiting for their report (SC-24)."""
    db.create_tables([models.CommitmentRequest])


def _migration_4(db) -> None:
    """ST-26 (hierarchy_conflict keep): a Study Instance UID is unique per patient and a Series
    Instance UID per study, no longer in the whole index. The UID-wide unique indexes go; the
    models' indexes are then created as a new index has them: plain ones on the UIDs under the
    same names (lookups by UID still use them) and the unique pairs. No table is rebuilt."""
    db.execute_sql('DROP INDEX IF EXISTS "study_study_instance_uid"')
    db.execute_sql('DROP INDEX IF EXISTS "series_series_instance_uid"')
    for model in (models.Study, models.Series):
        model._schema.create_indexes(safe=True)


def _migration_5(db) -> None:
    """Study edits and their history (MG-03); instances by received time (MG-01, MG-04)."""
    db.create_tables([models.StudyEdit])
    db.execute_sql('CREATE INDEX IF NOT EXISTS "instance_received_at" ON "instance" ("received_at")')


# Append-only: migration N takes the schema from user_version N-1 to N.
MIGRATIONS = (_migration_1, _migration_2, _migration_3, _migration_4, _migration_5)


@contextlib.contextmanager
def read_only(path: Path):
    """The index at `path` bound to the models for reading only, as the service tool reads a
    stopped box's index (`study list`): no migration, no write. The -wal and -shm files such a
    connection may create are handed to the data directory's owner (durable.hand_over_wal_files)."""
    if not path.exists():
        raise FileNotFoundError(f"there is no index at {path}")
    db = SqliteDatabase(f"{path.resolve().as_uri()}?mode=ro", uri=True, pragmas={"busy_timeout": 30000})
    models.database.initialize(db)
    try:
        with db.connection_context():
            yield db
    finally:
        hand_over_wal_files(path)


class Index:
    """The open index. Readers use per-thread connections; writes go through `write()`."""

    def __init__(self, path: Path):
        self.path = path
        self.db = SqliteDatabase(str(path), pragmas=PRAGMAS, check_same_thread=False)
        models.database.initialize(self.db)
        # One writer at a time inside the process: SQLite would serialise anyway, but a
        # Python lock avoids busy-wait retries between association threads.
        self._write_lock = threading.Lock()
        self.db.connect(reuse_if_open=True)
        self._migrate()

    def _migrate(self) -> None:
        version = self.db.pragma("user_version")
        if version > len(MIGRATIONS):
            raise RuntimeError(f"index {self.path} has schema {version}, newer than this release "
                               f"({len(MIGRATIONS)}); refusing to open it")
        for number in range(version + 1, len(MIGRATIONS) + 1):
            with self.db.atomic():
                MIGRATIONS[number - 1](self.db)
                self.db.pragma("user_version", number)
            self.sync()
        if version == 0:
            log.info("index %s created (schema %d)", self.path, len(MIGRATIONS))
        elif version < len(MIGRATIONS):
            log.info("index %s migrated from schema %d to %d", self.path, version, len(MIGRATIONS))
        stored = models.SchemaInfo.get().normaliser_version
        if stored != NORMALISER_VERSION:
            raise RuntimeError(f"index {self.path} was built with normaliser {stored}, this release "
                               f"uses {NORMALISER_VERSION}: run 'service-tool reindex'")

    @contextlib.contextmanager
    def write(self, durable: bool = True):
        """A write transaction; BEGIN IMMEDIATE so other processes (service tool) queue cleanly.
        `durable`: on disk when this returns (`sync`), with every transaction committed before."""
        with self._write_lock:
            self.db.connect(reuse_if_open=True)
            with self.db.atomic("IMMEDIATE"):
                yield
        if durable:
            self.sync()

    def sync(self) -> None:
        """Flush the write-ahead log: every transaction committed so far survives a power cut.
        fdatasync applies to the file, whichever descriptor names it: SQLite's frames are in it."""
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except FileNotFoundError:  # no log: everything is in the database file, flushed by SQLite
            return
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Checkpoint the WAL so the database file alone is complete, then close."""
        with self._write_lock:
            self.db.connect(reuse_if_open=True)
            self.db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            self.db.close()
