"""Schema migrations of the index (appliance/store/db.py) on a real SQLite file: an index a
released version made is brought to this release's schema with its rows, and ends up with
exactly the schema a new index has."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
from pathlib import Path

import pytest
from peewee import IntegrityError

from appliance.store.db import MIGRATING, MIGRATIONS, SqliteIndex
from helpers import RESOURCES
from appliance.store.models import Patient, Series, Study



def schema(path: Path) -> set[tuple]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return set(db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE sql IS NOT NULL"))


def released(path: Path, version: int) -> Path:
    """An index as release schema `version` made it (tests/resources/index-schema-N.sql),
    holding one instance."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript((RESOURCES / f"index-schema-{version}.sql").read_text())
        db.executescript(f"""
            PRAGMA user_version = {version};
            INSERT INTO schema_info (normaliser_version) VALUES (2);
            INSERT INTO patient VALUES (1, 'PID', 'PID', 'DOE', 'JANE', 'doe^jane', '19700101', 'F', '', '');
            INSERT INTO study VALUES (1, 1, '1.2.3', '20240101', '120000', 'ACC', '1', '', '', 'CT', '');
            INSERT INTO series VALUES (1, 1, '1.2.3.1', 'CT', '1', '', '', '', '');
            INSERT INTO instance VALUES (1, 1, '1.2.3.1.1', '1.2.3.1.1', '1.2.840.10008.5.1.4.1.1.2', '1',
                                         '1.2.840.10008.1.2.1', '', 'ab/ab.dcm', 1000,
                                         '2024-01-01 12:00:00.000000+00:00', 'CT1');
        """)
        db.commit()
    return path


def test_schema_3_is_migrated_to_this_release_with_its_rows(tmp_path):
    old = released(tmp_path / "old.sqlite", 3)
    SqliteIndex(old).close()
    fresh = tmp_path / "fresh.sqlite"
    SqliteIndex(fresh).close()

    assert schema(old) == schema(fresh)
    with contextlib.closing(sqlite3.connect(old)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        assert db.execute("SELECT sop_instance_uid, path, size FROM instance").fetchall() == [
            ("1.2.3.1.1", "ab/ab.dcm", 1000)]


def test_the_log_says_created_for_a_new_index_and_migrated_for_an_old_one(tmp_path, caplog):
    """Issue 22 item 7: a fresh start is not an upgrade from schema 1, 2, 3..."""
    with caplog.at_level("INFO", logger="appliance.store.db"):
        SqliteIndex(tmp_path / "fresh.sqlite").close()
        SqliteIndex(released(tmp_path / "old.sqlite", 3)).close()
        SqliteIndex(tmp_path / "fresh.sqlite").close()  # nothing to do: nothing said
    assert [r.getMessage().split(" ", 2)[2] for r in caplog.records] == [
        f"created (schema {len(MIGRATIONS)})", f"migrated from schema 3 to {len(MIGRATIONS)}"]


def test_a_migration_under_systemd_says_so_and_keeps_the_start_from_timing_out(tmp_path, monkeypatch):
    """Issue 21: the first boot of a newer version migrates the index before READY. systemd
    (its notify socket here, a real one) hears what the start is doing, with the start timeout
    extended and the watchdog fed, so that neither it nor the update's health check kills a
    migration that takes long on a large archive."""
    heard = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    heard.bind(str(tmp_path / "notify"))
    heard.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    old = released(tmp_path / "old.sqlite", 3)
    SqliteIndex(old).close()
    with heard:
        fields = heard.recv(4096).decode().split("\n")
    assert fields == [f"STATUS={MIGRATING} {old} from schema 3 to {len(MIGRATIONS)}", "EXTEND_TIMEOUT_USEC=30000000",
                      "WATCHDOG=1"]


def test_after_migration_4_a_uid_may_have_a_second_parent_but_never_twice_the_same(tmp_path):
    """ST-26 (hierarchy_conflict keep): a Study Instance UID is unique per patient and a Series
    Instance UID per study, no longer in the whole index."""
    index = SqliteIndex(released(tmp_path / "old.sqlite", 3))
    try:
        with index.write():
            other = Patient.create(patient_id="PID2", original_patient_id="PID2")
            study = Study.create(patient=other, study_instance_uid="1.2.3")
            Series.create(study=study, series_instance_uid="1.2.3.1")
        with pytest.raises(IntegrityError), index.write():
            Study.create(patient=1, study_instance_uid="1.2.3")
        with pytest.raises(IntegrityError), index.write():
            Series.create(study=1, series_instance_uid="1.2.3.1")
    finally:
        index.close()


def test_a_migration_keeps_a_copy_that_a_rollback_to_the_older_release_reopens(tmp_path, monkeypatch):
    """Issue 21: the first boot of a newer release migrates the index and keeps the copy from
    before; the older release, booted again by a rollback, finds the index newer than itself and
    puts that copy back instead of refusing to start. The newer release is this one with one more
    (empty) migration."""
    from appliance.store import db as index_db

    index = released(tmp_path / "index.sqlite", 3)
    SqliteIndex(index).close()  # this release, from an old index: its schema-3 copy is kept too
    this_release = len(MIGRATIONS)
    monkeypatch.setattr(index_db, "MIGRATIONS", MIGRATIONS + (lambda db: None,))  # the update
    SqliteIndex(index).close()
    copy = tmp_path / f"index.sqlite.schema-{this_release}"
    with contextlib.closing(sqlite3.connect(copy)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (this_release,)

    monkeypatch.setattr(index_db, "MIGRATIONS", MIGRATIONS)  # the rollback
    SqliteIndex(index).close()
    with contextlib.closing(sqlite3.connect(index)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (this_release,)
        assert db.execute("SELECT sop_instance_uid FROM instance").fetchall() == [("1.2.3.1.1",)]
    assert (tmp_path / f"index.sqlite.schema-{this_release + 1}.rolled-back").exists()
    assert not copy.exists()
