"""Opening the index database: schema migrations and the single-writer rule, on SQLite (one
box, the default) or PostgreSQL (IX-01: several boxes sharing one archive, store/postgres.py).

The rest of the code speaks peewee through the models, so both backends hold the same tables;
what SQL differs between them (C-FIND's wildcards and UID lists, a query plan) is in
store/dialect.py. `open_index(config)` picks the backend from `[index] url`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Callable

from peewee import Database, SqliteDatabase

from appliance import systemd
from appliance.durable import fsync_dir, fsync_file, hand_over_wal_files
from appliance.store import INDEX_NAME, coercion, models

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


def _migration_6(db) -> None:
    """IX-02, several boxes on one index: the generation that tells a box another one deleted or
    moved rows (its cached row ids are stale), and which box holds a commitment request. The
    tables migrations 1 and 3 create from today's models have the columns already; the
    definitions are the models' (SQL DEFAULT included), so both ways give one schema."""
    for table, column, definition in (("schema_info", "generation", "INTEGER NOT NULL DEFAULT 0"),
                                      ("commitment_request", "node", "VARCHAR(64) NOT NULL DEFAULT ''")):
        if column not in {existing.name for existing in db.get_columns(table)}:
            db.execute_sql(f'ALTER TABLE "{table}" ADD COLUMN "{column}" {definition}')


# Append-only: migration N takes the schema from version N-1 to N.
MIGRATIONS = (_migration_1, _migration_2, _migration_3, _migration_4, _migration_5, _migration_6)
# How the service's status (systemctl status) begins while it migrates: the update health check
# waits for a start that says so (service_tool/update_cmd.py).
MIGRATING = "migrating the index"


class Index:
    """The open index: per-thread connections for readers, writes through `write()`, one
    writer at a time in the whole archive. The backends below supply the database."""

    backend = ""

    def __init__(self, db: Database, where: str, check_normaliser: bool = True):
        self.db = db
        self.where = where  # for log lines and `status`: the file, or the server and database
        # False: opened to have its content replaced (reindex, restore), whatever built it.
        self.check_normaliser = check_normaliser
        self.found_schema = 0  # the schema version it had when opened; 0: it was created now
        models.database.initialize(db)
        # One writer at a time inside the process: the database serialises writers anyway,
        # but a Python lock spares the threads its busy-waits and retries.
        self._write_lock = threading.Lock()
        # Called (under the write lock) when another box changed rows this one may have cached.
        self.on_changed_elsewhere: list[Callable[[], None]] = []
        self.db.connect(reuse_if_open=True)
        with self._migration_lock():
            self._migrate()

    # --- what a backend provides -------------------------------------------------------------
    def _schema_version(self) -> int:
        raise NotImplementedError

    def _set_schema_version(self, version: int) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def _migration_lock(self):
        yield

    @contextlib.contextmanager
    def _transaction(self):
        """A write transaction holding the archive's writer lock."""
        raise NotImplementedError

    def sync(self) -> None:
        """Every transaction committed so far survives a power cut when this returns."""

    def describe(self) -> dict:
        """What `service-tool status` shows of the index: backend, version, where, connection."""
        raise NotImplementedError

    @contextlib.contextmanager
    def alone(self):
        """For the commands that replace the archive's content (reindex, restore): no box may
        serve it meanwhile. On SQLite the data directory's lock, which the caller holds, says so."""
        yield

    def _clear_tables(self) -> None:
        """Inside `write()`: every table emptied (snapshot.replace_content)."""
        raise NotImplementedError

    def _ids_copied(self) -> None:
        """Inside `write()`, after rows were copied in with their ids: later inserts get new ones."""

    # --- shared ------------------------------------------------------------------------------
    def _snapshot(self, version: int) -> None:
        """Before migrating from schema `version`: a copy a rollback can reopen (SQLite only)."""

    def _restore_snapshot(self, version: int) -> bool:
        """On an index newer than this release: put back the copy taken before it was migrated
        from `version`, if there is one (a rollback after an update, issue 21)."""
        return False

    def _migrate(self) -> None:
        version = self._schema_version()
        if version > len(MIGRATIONS) and self._restore_snapshot(len(MIGRATIONS)):
            version = self._schema_version()
        self.found_schema = version
        if version > len(MIGRATIONS):
            raise RuntimeError(f"index {self.where} has schema {version}, newer than this release "
                               f"({len(MIGRATIONS)}); refusing to open it")
        if version < len(MIGRATIONS):
            doing = (f"{MIGRATING} {self.where} from schema {version} to {len(MIGRATIONS)}" if version
                     else f"creating the index {self.where}")
            with systemd.keep_starting(doing):
                if version > 0:
                    self._snapshot(version)
                for number in range(version + 1, len(MIGRATIONS) + 1):
                    with self.db.atomic():
                        MIGRATIONS[number - 1](self.db)
                        self._set_schema_version(number)
                    self.sync()
        if version == 0:
            log.info("index %s created (schema %d)", self.where, len(MIGRATIONS))
        elif version < len(MIGRATIONS):
            log.info("index %s migrated from schema %d to %d", self.where, version, len(MIGRATIONS))
        stored = models.SchemaInfo.get().normaliser_version
        if self.check_normaliser and stored != NORMALISER_VERSION:
            raise RuntimeError(f"index {self.where} was built with normaliser {stored}, this release "
                               f"uses {NORMALISER_VERSION}: run 'service-tool reindex'")

    @contextlib.contextmanager
    def write(self, durable: bool = True):
        """A write transaction. `durable`: on disk when this returns (`sync`), with every
        transaction committed before."""
        with self._write_lock:
            self.db.connect(reuse_if_open=True)
            with self._transaction():
                yield
        if durable:
            self.sync()

    def rows_changed(self) -> None:
        """Inside `write()`: rows were deleted or moved to another parent (MG-02, MG-03), so
        other boxes sharing the index forget the row ids they cached (IX-02)."""
        models.SchemaInfo.update(generation=models.SchemaInfo.generation + 1).execute()

    def close(self) -> None:
        with self._write_lock:
            self.db.close()


class SqliteIndex(Index):
    """The index file in the data directory: WAL, flushed by `sync` (see PRAGMAS)."""

    backend = "sqlite"

    def __init__(self, path: Path, check_normaliser: bool = True):
        self.path = path
        super().__init__(SqliteDatabase(str(path), pragmas=PRAGMAS, check_same_thread=False), str(path),
                         check_normaliser)

    def _schema_version(self) -> int:
        return self.db.pragma("user_version")

    def _set_schema_version(self, version: int) -> None:
        self.db.pragma("user_version", version)

    def snapshot_path(self, version: int) -> Path:
        return self.path.with_name(f"{self.path.name}.schema-{version}")

    def _snapshot(self, version: int) -> None:
        """The index as it was at schema `version`, beside it, before the first boot of a newer
        release migrates it (SQLite's backup API, then fsync): the previous release, booted again
        by a rollback, reopens that copy (issue 21). The archive's files are not touched."""
        target = self.snapshot_path(version)
        partial = target.with_name(target.name + ".partial")
        partial.unlink(missing_ok=True)
        copy = sqlite3.connect(str(partial))
        try:
            self.db.connection().backup(copy)
        finally:
            copy.close()
        fsync_file(partial)
        os.replace(partial, target)
        fsync_dir(target.parent)
        log.debug("index %s: copy at schema %d kept as %s for a rollback", self.where, version, target.name)

    def _restore_snapshot(self, version: int) -> bool:
        snapshot = self.snapshot_path(version)
        if not snapshot.exists():
            return False
        newer = self._schema_version()
        self.db.close()
        aside = self.path.with_name(f"{self.path.name}.schema-{newer}.rolled-back")
        os.replace(self.path, aside)
        for suffix in ("-wal", "-shm"):  # the newer index's log goes with it
            if Path(f"{self.path}{suffix}").exists():
                os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
        os.replace(snapshot, self.path)
        fsync_dir(self.path.parent)
        self.db.connect()
        log.warning("index %s had schema %d, newer than this release's %d (a rollback): the copy kept before "
                    "its migration is back in use, the newer one is %s; instances received since the update "
                    "are on disk but not in this index: 'service-tool reindex' adds them",
                    self.where, newer, version, aside.name)
        return True

    @contextlib.contextmanager
    def _transaction(self):
        # BEGIN IMMEDIATE: other processes (the service tool) queue on the lock, not on a retry.
        with self.db.atomic("IMMEDIATE"):
            yield

    def sync(self) -> None:
        """Flush the write-ahead log. fdatasync applies to the file, whichever descriptor
        names it: SQLite's frames are in it."""
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except FileNotFoundError:  # no log: everything is in the database file, flushed by SQLite
            return
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def describe(self) -> dict:
        return describe_sqlite(self.path)

    def _clear_tables(self) -> None:
        for model in reversed(models.ALL_MODELS_BY_PARENT):  # children first: the foreign keys hold
            model.delete().execute(self.db)

    def close(self) -> None:
        """Checkpoint the WAL so the database file alone is complete, then close."""
        with self._write_lock:
            self.db.connect(reuse_if_open=True)
            self.db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            self.db.close()


def describe_sqlite(path: Path) -> dict:
    import sqlite3

    return {"backend": "sqlite", "version": sqlite3.sqlite_version, "where": str(path), "connected": True}


def first_line(exc: Exception) -> str:
    """What an index error says, for a log line or a status: libpq's messages run over several
    lines, and the first says what happened."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def open_index(url: str, data_dir: Path, application_name: str = "appliance", check_normaliser: bool = True) -> Index:
    """The index `[index] url` names: "" = index.sqlite in the data directory. The service tool
    opens it for writing (reindex, restore) as application "service-tool" (PostgreSQL's
    pg_stat_activity tells the boxes from the tool), without the normaliser check."""
    if not url:
        return SqliteIndex(data_dir / INDEX_NAME, check_normaliser)
    from appliance.store.postgres import PostgresIndex

    return PostgresIndex(url, application_name, check_normaliser)


@contextlib.contextmanager
def read_only(url: str, data_dir: Path):
    """The index bound to the models for reading only, as the service tool reads it while the
    service is stopped (`study list`, `status`): no migration, no write."""
    if url:
        from appliance.store.postgres import read_only_database

        db = read_only_database(url)
    else:
        path = data_dir / INDEX_NAME
        if not path.exists():
            raise FileNotFoundError(f"there is no index at {path}")
        db = SqliteDatabase(f"{path.resolve().as_uri()}?mode=ro", uri=True, pragmas={"busy_timeout": 30000})
    models.database.initialize(db)
    try:
        with db.connection_context():
            yield db
    finally:
        if not url:
            # The -wal and -shm files such a connection may create go to the data directory's owner.
            hand_over_wal_files(data_dir / INDEX_NAME)


def describe(url: str, data_dir: Path, db: Database | None = None) -> dict:
    """`Index.describe` for the service tool with the service stopped: `db`, when given, is a
    `read_only` connection to the index; PostgreSQL's server is asked through it (or a new one)."""
    if not url:
        path = data_dir / INDEX_NAME
        described = describe_sqlite(path)
        if not path.exists():
            described.update(connected=False, error=f"there is no index at {path}")
        return described
    from appliance.store.postgres import describe_server, read_only_database, safe_url

    if db is not None:
        return describe_server(db, safe_url(url))
    db = read_only_database(url)
    try:
        return describe_server(db, safe_url(url))
    finally:
        db.close()
