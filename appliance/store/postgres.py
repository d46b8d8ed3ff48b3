"""The index on a PostgreSQL server (IX-01), which several boxes can share (IX-02).

The rules of the SQLite index hold across boxes:

- one writer at a time in the whole archive: every write transaction first takes a
  transaction-scoped advisory lock, so C-STORE's duplicate decisions (ST-17, ST-18, ST-25),
  the parents it creates and the ST-26 checks are made by exactly one box at a time, with
  every other box's committed rows in view;
- a commit is durable when it returns (synchronous_commit, the server's default), so `sync`
  has nothing left to do;
- a box caches row ids of studies and series; a deletion or an edit on another box bumps
  `schema_info.generation`, and a writer that sees it changed forgets its cache first.

A lost connection fails the statement that found it (the caller answers A700, A701 or 0110
as for a broken index file), is logged once as ALERT, and the next statement connects again,
so the service recovers by itself when the server is back.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from peewee import InterfaceError, OperationalError, PostgresqlDatabase

from psycopg.conninfo import conninfo_to_dict

from appliance.log import alert
from appliance.store import models
from appliance.store.db import Index, first_line

log = logging.getLogger("appliance.store.db")

# Advisory lock keys (any 64-bit numbers no other application on the database uses).
WRITER_LOCK = 0x4150504C57524954  # "APPLWRIT": one writer in the archive
MIGRATION_LOCK = 0x4150504C4D494752  # "APPLMIGR": one box migrates, the others wait

# Byte order: C-FIND's ranges and wildcard prefixes (dialect.py) compare as SQLite does.
BYTEWISE_COLLATIONS = ("C", "POSIX", "C.UTF-8", "C.utf8", "ucs_basic")

CONNECT_TIMEOUT = 5  # seconds; a server that does not answer fails the statement, not hangs it
SERVICE = "appliance"  # the service's application_name; the service tool's is "service-tool"


class OtherBoxes(Exception):
    """A command that must have the archive to itself (reindex, restore) found boxes serving it."""


def safe_url(url: str) -> str:
    """The URL without its password, for log lines and `status` (as libpq reads it)."""
    parts = conninfo_to_dict(url)
    return f"postgresql://{parts.get('user', '')}@{parts.get('host', '')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


class _Database(PostgresqlDatabase):
    """peewee's PostgreSQL database that drops a dead connection instead of failing on it for
    good, and says once when the server was lost and when it is back."""

    _state_lock = threading.Lock()

    def __init__(self, url: str, application_name: str = SERVICE, options: str = ""):
        self.safe_url = safe_url(url)
        self.lost = False
        super().__init__(url, prefer_psycopg3=True, connect_timeout=CONNECT_TIMEOUT, application_name=application_name,
                         # received_at and edited_at are UTC; so is the session, whatever the server's zone
                         options=f"-c timezone=UTC {options}".strip())

    def connect(self, reuse_if_open=False):
        try:
            return super().connect(reuse_if_open)
        except (OperationalError, InterfaceError) as exc:
            self._connection_lost(exc)
            raise

    def cursor(self, named_cursor=None):
        conn = self._state.conn
        if conn is not None and (conn.closed or conn.broken) and not self.in_transaction():
            self._state.reset()  # a connection the server or the network ended: connect anew
        return super().cursor(named_cursor)

    def execute_sql(self, sql, params=None):
        try:
            cursor = super().execute_sql(sql, params)
        except (OperationalError, InterfaceError) as exc:
            conn = self._state.conn
            if conn is None or conn.closed or conn.broken:
                self._connection_lost(exc)
            raise
        if self.lost:
            self._connection_back()
        return cursor

    def _connection_lost(self, exc: Exception) -> None:
        with self._state_lock:
            if self.lost:
                return
            self.lost = True
        alert(log, "index database %s unreachable: %s; requests that need the index fail (A700, A701, 0110) "
                   "until it is back", self.safe_url, first_line(exc))

    def _connection_back(self) -> None:
        with self._state_lock:
            if not self.lost:
                return
            self.lost = False
        log.warning("index database %s reachable again", self.safe_url)


class PostgresIndex(Index):
    backend = "postgresql"

    def __init__(self, url: str, application_name: str = SERVICE, check_normaliser: bool = True):
        self._generation: int | None = None
        database = _Database(url, application_name)
        super().__init__(database, database.safe_url, check_normaliser)

    def _check_database(self) -> None:
        """UTF8 (Latin-1 and other names stored as text) and a byte-order collation (dialect.py)."""
        encoding, collation = self.db.execute_sql(
            "SELECT pg_encoding_to_char(encoding), datcollate FROM pg_database "
            "WHERE datname = current_database()").fetchone()
        if encoding != "UTF8" or collation not in BYTEWISE_COLLATIONS:
            raise RuntimeError(
                f"index.url: database {self.where} has encoding {encoding} and collation {collation}; the index "
                "needs UTF8 and C (createdb --encoding=UTF8 --locale=C --template=template0)")

    @contextlib.contextmanager
    def _migration_lock(self):
        self._check_database()
        self.db.execute_sql("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            yield
        finally:
            self.db.execute_sql("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))

    def _schema_version(self) -> int:
        self.db.execute_sql("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self.db.execute_sql("SELECT version FROM schema_version").fetchone()
        return row[0] if row else 0

    def _set_schema_version(self, version: int) -> None:
        self.db.execute_sql("DELETE FROM schema_version")
        self.db.execute_sql("INSERT INTO schema_version (version) VALUES (%s)", (version,))

    @contextlib.contextmanager
    def _transaction(self):
        with self.db.atomic():
            self.db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))
            generation = self.db.execute_sql("SELECT generation FROM schema_info").fetchone()[0]
            if generation != self._generation:
                if self._generation is not None:
                    for forget in self.on_changed_elsewhere:
                        forget()
                self._generation = generation
            yield

    def rows_changed(self) -> None:
        super().rows_changed()
        self._generation = None  # this box's own change: its caches are cleared by the caller

    def describe(self) -> dict:
        return describe_server(self.db, self.where)

    @contextlib.contextmanager
    def alone(self):
        """No other box may be connected: a running service keeps connections open (application
        name "appliance"), so one found names a box that serves the archive, or one starting.
        (A guard, not a proof: after the server restarted, an idle box's connections are back
        only at its next request. The documented procedure stops every box first.) Meanwhile
        this session holds the migration lock, which a box takes while it opens the index: one
        that starts now waits there (answering 2/3/1) until the command is done."""
        self.db.execute_sql("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            others = self.db.execute_sql(
                "SELECT COALESCE(host(client_addr), 'local socket'), COUNT(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = %s AND pid <> pg_backend_pid() "
                "GROUP BY 1 ORDER BY 1", (SERVICE,)).fetchall()
            if others:
                boxes = ", ".join(f"{address} ({count} connection{'s' if count > 1 else ''})"
                                  for address, count in others)
                raise OtherBoxes(f"the index database {self.where} is in use by the appliance service of other boxes, "
                                 f"connected from {boxes}; stop the service on every box that shares it first")
            yield
        finally:
            with contextlib.suppress(OperationalError, InterfaceError):  # a lost session has lost its lock too
                self.db.execute_sql("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))

    def _clear_tables(self) -> None:
        tables = ", ".join(f'"{model._meta.table_name}"' for model in models.ALL_MODELS_BY_PARENT)
        self.db.execute_sql(f"TRUNCATE {tables} RESTART IDENTITY")

    def _ids_copied(self) -> None:
        """Each table's id sequence past its highest id."""
        for model in models.ALL_MODELS_BY_PARENT:
            table = model._meta.table_name
            self.db.execute_sql(f"SELECT setval(pg_get_serial_sequence(%s, 'id'), "  # noqa: S608 (own names)
                                f'COALESCE((SELECT MAX(id) FROM "{table}"), 0) + 1, false)', (f'"{table}"',))

    def close(self) -> None:
        with self._write_lock:
            if not self.db.is_closed():
                self.db.close()


def describe_server(db: PostgresqlDatabase, where: str) -> dict:
    """Backend, server version, where, and whether the server answers now (else the error)."""
    described = {"backend": "postgresql", "where": where, "version": None, "connected": False}
    try:
        described["version"] = db.execute_sql("SHOW server_version").fetchone()[0]
        described["connected"] = True
    except (OperationalError, InterfaceError) as exc:
        described["error"] = first_line(exc)
    return described


def read_only_database(url: str) -> PostgresqlDatabase:
    """A connection for reading only (the service tool's `study list` with the service stopped)."""
    return _Database(url, "service-tool", "-c default_transaction_read_only=on")
