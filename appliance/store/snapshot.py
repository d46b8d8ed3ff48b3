"""The index's content moved as rows, whichever backend holds it (IX-01): the snapshot of the live
index that `backup`, `backup --full` and `reindex` make, and an index's whole content replaced by
another's (`restore`, and `reindex` on PostgreSQL).

A snapshot is always one self-contained SQLite file with this release's schema (the backup set's
`index-<n>.sqlite`, backup_set.py), so a backup restores onto either backend:

- SQLite: SQLite's online backup API copies the index file in one step, that is inside one read
  transaction: the index as of one commit, and the service's writers are not held up meanwhile.
- PostgreSQL: every table's rows, read through the models in one read-only REPEATABLE READ
  transaction (the index as of one commit, while the boxes go on writing), into a new
  `SqliteIndex` file, ids and all.

`replace_content` empties an index and copies another's rows into it, ids kept, in one write
transaction; on PostgreSQL the id sequences then continue past the highest id.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from peewee import Database, DateTimeField

from appliance.store import dialect
from appliance.store.db import NORMALISER_VERSION, Index, SqliteIndex, read_only
from appliance.store.models import ALL_MODELS_BY_PARENT, SchemaInfo

_ROWS = 2000  # rows read at a time
_PARAMETERS = 30000  # per INSERT: under SQLite's limit (32766) and PostgreSQL's (65535)


def copy_rows(source: Database, target: Database) -> None:
    """Every row of every table of `source` into `target`'s (empty) tables, with its id, parents
    first. The caller holds a transaction on each: one consistent read, one write."""
    timestamp = dialect.of(target).timestamp
    for model in ALL_MODELS_BY_PARENT:
        fields = list(model._meta.sorted_fields)
        key = fields.index(model._meta.primary_key)
        times = [n for n, field in enumerate(fields) if isinstance(field, DateTimeField)]
        per_insert = max(1, _PARAMETERS // len(fields))
        last = None
        while True:
            query = model.select(*fields).order_by(model._meta.primary_key).limit(_ROWS)
            if last is not None:
                query = query.where(model._meta.primary_key > last)
            rows = [list(row) for row in query.tuples().execute(source)]
            if not rows:
                break
            last = rows[-1][key]
            for row in rows:
                for n in times:
                    if row[n] is not None:  # as the target holds a UTC time (dialect.py)
                        row[n] = timestamp(row[n])
            for start in range(0, len(rows), per_insert):
                model.insert_many(rows[start:start + per_insert], fields=fields).execute(target)


def replace_content(index: Index, source: Database) -> None:
    """`index`'s rows replaced by `source`'s in one write transaction (`source` is not written
    meanwhile: a snapshot file, or read in a transaction of its own)."""
    with index.write():
        index._clear_tables()
        copy_rows(source, index.db)
        index._ids_copied()


def empty(index: Index) -> None:
    """`index` as a new one is: no rows but its schema_info."""
    with index.write():
        index._clear_tables()
        SchemaInfo.insert(normaliser_version=NORMALISER_VERSION).execute(index.db)


@contextlib.contextmanager
def consistent(db: Database):
    """One read transaction over `db`: what it reads is the index as of one commit."""
    if dialect.of(db) is dialect.PostgresDialect:
        with db.atomic(isolation_level="REPEATABLE READ"):
            yield
    else:
        with db.atomic():
            yield


def to_sqlite(source: Database, target: Path) -> None:
    """`source`'s rows into a new SQLite index at `target` (which does not exist, or is empty)."""
    index = SqliteIndex(target, check_normaliser=False)  # the source's normaliser version comes with its rows
    try:
        with consistent(source):
            replace_content(index, source)
    finally:
        index.close()


def take(url: str, data_dir: Path, target: Path) -> None:
    """The live index `[index] url` names as one self-contained SQLite file at `target` (new or
    empty); the boxes may go on writing meanwhile."""
    if url:
        with read_only(url, data_dir) as source:
            to_sqlite(source, target)
        return
    with read_only(url, data_dir) as source, contextlib.closing(sqlite3.connect(target)) as copy:
        source.connection().backup(copy)  # pages=-1: every page in one step, one read transaction
