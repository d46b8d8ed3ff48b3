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
from helpers import wait_for

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


@contextlib.contextmanager
def set_aside(url: str, keep_as: str):
    """For a restore onto a new box, whose backed-up configuration names the original's database
    (`url`; "" for SQLite: nothing to do): for the block, that database is renamed away and an
    empty one takes its place, as after the loss of the database; after it, the one the block
    filled is renamed `keep_as` (its URL is yielded) and the original's comes back. Nothing may
    be connected to either meanwhile."""
    if not url:
        yield ""
        return
    base, name = url.rsplit("/", 1)
    aside = f"{name}_aside"
    with postgres.connect(f"{base}/postgres") as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(name), sql.Identifier(aside)))
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'")
                      .format(sql.Identifier(name)))
    try:
        yield f"{base}/{keep_as}"
    finally:
        with postgres.connect(f"{base}/postgres") as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(keep_as)))
            # A tool killed in the block may still have its session, ending.
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            wait_for(lambda: not admin.execute("SELECT 1 FROM pg_stat_activity WHERE datname = %s",
                                               (name,)).fetchone(), f"the sessions on {name} to end")
            admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(name),
                                                                          sql.Identifier(keep_as)))
            admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(aside),
                                                                          sql.Identifier(name)))


def drop(url: str) -> None:
    """Drop the database `url` names, if it exists."""
    base, name = url.rsplit("/", 1)
    with postgres.connect(f"{base}/postgres") as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
