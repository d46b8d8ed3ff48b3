"""The index's content copied between backends (snapshot.py, IX-01): a snapshot of an index on
either backend is an SQLite file of this release's schema with every row, id and UTC time as
the index held them, and an index's content replaced by a snapshot's gets the same rows, and
ids past them for later inserts."""

from __future__ import annotations

import contextlib
import datetime
import sqlite3

import pytest
from peewee import SqliteDatabase

from appliance.store import snapshot
from appliance.store.db import MIGRATIONS, open_index
from appliance.store.models import (ALL_MODELS_BY_PARENT, CommitmentRequest, Instance, Patient, SchemaInfo, Series,
                                    Study, StudyEdit)

pytestmark = pytest.mark.index_backends

RECEIVED = datetime.datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=datetime.timezone.utc)


def fill(index) -> None:
    """Rows in every table, with gaps in the ids (deleted rows) and a generation bumped."""
    with index.write():
        for n in range(3):
            patient = Patient.create(patient_id=f"PID-{n}", original_patient_id=f"PID-{n}", last_name="Müller")
            study = Study.create(patient=patient, study_instance_uid=f"1.2.{n}")
            series = Series.create(study=study, series_instance_uid=f"1.2.{n}.1", modality="CT")
            for i in range(2):
                Instance.create(series=series, sop_instance_uid=f"1.2.{n}.1.{i}",
                                file_sop_instance_uid=f"1.2.{n}.1.{i}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                                transfer_syntax_uid="1.2.840.10008.1.2.1",
                                path=f"{n:02x}/{n:02x}{i:030x}.dcm", size=1000 + i,
                                received_at=RECEIVED + datetime.timedelta(hours=n, microseconds=i))
            StudyEdit.create(study=study, edited_at=RECEIVED, keyword="AccessionNumber", old_value="", new_value="A1")
        Instance.delete().where(Instance.sop_instance_uid == "1.2.0.1.0").execute()
        CommitmentRequest.create(transaction_uid="9.9", requester="CT_1", received_at=RECEIVED, committed="[]",
                                 failed="[]", attempts=2, next_attempt=1767261600.25, node="box-1")
        index.rows_changed()


def rows(db) -> dict:
    """Every table's rows in id order, times as aware UTC datetimes."""
    return {model.__name__: list(model.select().order_by(model.id).tuples().execute(db))
            for model in ALL_MODELS_BY_PARENT}


def test_a_snapshot_is_an_sqlite_file_with_every_row_id_and_time(tmp_path, new_index_url):
    index = open_index(new_index_url(), tmp_path)
    try:
        fill(index)
        before = rows(index.db)
        target = tmp_path / "snapshot.sqlite"

        snapshot.to_sqlite(index.db, target)
    finally:
        index.close()

    with contextlib.closing(sqlite3.connect(target)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        # The text form SQLite's index keeps and its ranges rely on, whatever the source.
        assert db.execute("SELECT received_at FROM instance ORDER BY id LIMIT 1").fetchone() == (
            "2026-03-04 05:06:07.890124+00:00",)
        assert db.execute("SELECT generation FROM schema_info").fetchone() == (1,)
    db = SqliteDatabase(str(target))
    with db.connection_context():
        assert rows(db) == before


def test_an_index_replaced_by_a_snapshot_holds_its_rows_and_gives_new_ids_after_them(tmp_path, new_index_url):
    (tmp_path / "source").mkdir()
    source = open_index("", tmp_path / "source")  # a snapshot is SQLite
    try:
        fill(source)
        before = rows(source.db)
    finally:
        source.close()
    target = open_index(new_index_url(), tmp_path)
    try:
        with target.write():
            Patient.create(patient_id="OLD", original_patient_id="OLD")  # replaced, not kept
        snapshot_db = SqliteDatabase(str(tmp_path / "source" / "index.sqlite"))
        with snapshot_db.connection_context():
            snapshot.replace_content(target, snapshot_db)
        assert rows(target.db) == before
        with target.write():
            patient = Patient.create(patient_id="NEW", original_patient_id="NEW")
            assert patient.id == max(row[0] for row in before["Patient"]) + 1
            assert SchemaInfo.select().count() == 1
    finally:
        target.close()
