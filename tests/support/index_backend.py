"""A test appliance's index on either backend (IX-01), for the maintenance commands' tests: lost,
copied along with a copied data directory, written to behind the service's back.

On SQLite the index is `index.sqlite` in the data directory (copied with it); on PostgreSQL it is
the appliance's own database of the tests' cluster (conftest.py's fixtures make one per
appliance), which these helpers drop, re-create and copy as the cluster's superuser.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from psycopg import sql

import postgres

SQLITE_FILES = ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm")


def is_postgresql(app) -> bool:
    return bool(app.index_url)


def database_name(app) -> str:
    return app.index_url.rsplit("/", 1)[1]


def _admin(app):
    """The superuser's connection to the cluster's `postgres` database."""
    return postgres.connect(app.index_url.rsplit("/", 1)[0] + "/postgres")


def lose(app) -> None:
    """The index gone, as after the loss of its file or of its database (the database is there
    again, empty, as an administrator makes a new one)."""
    if not is_postgresql(app):
        for name in SQLITE_FILES:
            (app.data_dir / name).unlink(missing_ok=True)
        return
    name = sql.Identifier(database_name(app))
    with _admin(app) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(name))
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'")
                      .format(name))


def copy(source, target) -> None:
    """`target`'s index made a copy of `source`'s (both stopped). On SQLite the file travels with
    a copy of the data directory: nothing to do."""
    if not is_postgresql(source):
        return
    with _admin(source) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database_name(target))))
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(database_name(target)), sql.Identifier(database_name(source))))


def execute(app, statement: str, *params) -> None:
    """A statement (sqlite3's `?` placeholders) that writes the index, committed."""
    if is_postgresql(app):
        with postgres.connect(app.index_url) as db:
            db.execute(postgres.qmark_to_format(statement), params)
        return
    with contextlib.closing(sqlite3.connect(Path(app.data_dir) / "index.sqlite")) as db, db:
        db.execute(statement, params)


def executemany(app, statement: str, rows: list[tuple]) -> None:
    if is_postgresql(app):
        with postgres.connect(app.index_url) as db, db.cursor() as cursor:
            cursor.executemany(postgres.qmark_to_format(statement), rows)
        return
    with contextlib.closing(sqlite3.connect(Path(app.data_dir) / "index.sqlite")) as db, db:
        db.executemany(statement, rows)
