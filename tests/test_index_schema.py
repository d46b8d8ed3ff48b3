"""The index's schema migrations on a real SQLite file: an index of an older release opens,
keeps its rows, and ends with the schema a new index has (db.py, models.py)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from peewee import IntegrityError

from appliance.store.db import MIGRATIONS, Index
from appliance.store.models import Series, Study
from helpers import REPO

SCHEMA_3 = REPO / "tests" / "resources" / "index-schema-3.sql"


def schema(path: Path) -> list[tuple]:
    with closing(sqlite3.connect(path)) as db:
        return sorted(db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))


def rows(path: Path, table: str) -> list[tuple]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()


def test_a_schema_3_index_migrates_keeping_its_rows(tmp_path):
    """Migration 4 (ST-26, hierarchy_conflict keep): the UID-wide unique indexes of study and
    series become unique per parent, plain indexes on the UIDs stay; rows are kept, and the
    schema is a new index's."""
    old = tmp_path / "old.sqlite"
    with closing(sqlite3.connect(old)) as db, db:
        db.executescript(SCHEMA_3.read_text())
        db.execute("INSERT INTO schema_info (normaliser_version) VALUES (2)")
        db.execute("INSERT INTO patient VALUES (1, 'P1', 'P1', 'One', '', 'one', '', 'U', '', '')")
        db.execute("INSERT INTO patient VALUES (2, 'P2', 'P2', 'Two', '', 'two', '', 'U', '', '')")
        db.execute("INSERT INTO study (id, patient_id, study_instance_uid, study_date, study_time, accession_number, "
                   "study_id, referring_physician, referring_physician_folded, study_description, exam_type) "
                   "VALUES (1, 1, '1.2.3', '', '', '', '', '', '', '', '')")
        db.execute("INSERT INTO series VALUES (1, 1, '1.2.3.1', 'CT', '1', '', '', '', '')")
        db.execute("INSERT INTO instance VALUES (1, 1, '1.2.3.1.1', '1.2.3.1.1', '1.2.840.10008.5.1.4.1.1.2', '1', "
                   "'1.2.840.10008.1.2.1', '', 'ab/ab.dcm', 10, '2026-01-01 00:00:00+00:00', 'SCU')")
        db.execute("PRAGMA user_version = 3")
    before = {table: rows(old, table) for table in ("patient", "study", "series", "instance")}
    fresh = tmp_path / "fresh.sqlite"
    Index(fresh).close()

    index = Index(old)
    try:
        assert index.db.pragma("user_version") == len(MIGRATIONS)  # 4, and any later one
        assert {table: rows(old, table) for table in before} == before
        with index.write():  # a Study Instance UID for a second patient (keep), a Series UID in a second study
            study = Study.create(patient=2, study_instance_uid="1.2.3")
            Series.create(study=study, series_instance_uid="1.2.3.1")
        with pytest.raises(IntegrityError), index.write():  # but never twice under one parent
            Study.create(patient=1, study_instance_uid="1.2.3")
    finally:
        index.close()
    assert schema(old) == schema(fresh)
