"""The index: Patient / Study / Series / Instance with typed, indexed columns.

Columns hold every C-FIND key of QF-07 and the Annex elements of EL-*, with index values
(after coercion) rather than file values: C-FIND answers and exports come from here
(QF-06, SU-14). `*_folded` columns hold the case-folded PN used for case-insensitive
matching (QF-08); the folding is part of the schema (see NORMALISER_VERSION in db.py).
"""

from __future__ import annotations

import datetime

from peewee import (
    SQL,
    BigIntegerField,
    CharField,
    DatabaseProxy,
    DateTimeField,
    DoubleField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
    fn,
)

database = DatabaseProxy()


class UtcDateTimeField(DateTimeField):
    """A time in UTC, handed back with its offset on both backends: SQLite keeps the offset in
    the text, PostgreSQL's timestamp column has none (the session's zone is UTC, postgres.py)."""

    def python_value(self, value):
        value = super().python_value(value)
        if isinstance(value, datetime.datetime) and value.tzinfo is None:
            return value.replace(tzinfo=datetime.timezone.utc)
        return value


class _Base(Model):
    class Meta:
        database = database
        legacy_table_names = False


class Patient(_Base):
    patient_id = CharField(max_length=64, unique=True)  # as indexed (EL-06 may coerce it)
    original_patient_id = CharField(max_length=64, index=True)  # as received
    last_name = CharField(max_length=64, default="")  # EL-01
    first_name = CharField(max_length=64, default="")
    name_folded = CharField(max_length=129, default="", index=True)  # "last^first", casefolded
    birth_date = CharField(max_length=8, default="", index=True)  # DA
    sex = CharField(max_length=1, default="U")  # EL-09: M, F, O or U
    other_patient_ids = CharField(max_length=1024, default="")
    other_patient_names = CharField(max_length=1024, default="")


class Study(_Base):
    patient = ForeignKeyField(Patient, backref="studies", on_delete="RESTRICT")
    study_instance_uid = CharField(max_length=64, index=True)  # unique per patient (ST-26)
    study_date = CharField(max_length=8, default="", index=True)
    study_time = CharField(max_length=16, default="", index=True)
    accession_number = CharField(max_length=16, default="", index=True)
    study_id = CharField(max_length=16, default="", index=True)
    referring_physician = CharField(max_length=324, default="")
    referring_physician_folded = CharField(max_length=324, default="", index=True)
    study_description = CharField(max_length=64, default="", index=True)
    exam_type = CharField(max_length=64, default="")  # EL-12

    class Meta:
        # ST-26 (hierarchy_conflict keep): one Study Instance UID may be filed under two patients.
        indexes = ((("patient", "study_instance_uid"), True),)


class Series(_Base):
    study = ForeignKeyField(Study, backref="series", on_delete="RESTRICT")
    series_instance_uid = CharField(max_length=64, index=True)  # unique per study (ST-26)
    modality = CharField(max_length=16, default="", index=True)
    series_number = CharField(max_length=12, default="", index=True)  # IS kept as text (D-15 wildcards)
    series_description = CharField(max_length=64, default="")
    operators_name = CharField(max_length=324, default="")
    body_part = CharField(max_length=16, default="")
    exam_type = CharField(max_length=64, default="")

    class Meta:
        indexes = ((("study", "series_instance_uid"), True),)  # ST-26, as Study's


class Instance(_Base):
    series = ForeignKeyField(Series, backref="instances", on_delete="RESTRICT")
    sop_instance_uid = CharField(max_length=64, unique=True)  # as indexed (ST-17 may reassign)
    file_sop_instance_uid = CharField(max_length=64, index=True)  # as in the file
    sop_class_uid = CharField(max_length=64, index=True)
    instance_number = CharField(max_length=12, default="", index=True)
    transfer_syntax_uid = CharField(max_length=64)
    specific_character_set = CharField(max_length=128, default="")
    path = CharField(max_length=255, unique=True)  # relative to the store root
    size = BigIntegerField()
    received_at = UtcDateTimeField(index=True)  # `study list --received`, the ingest rate (MG-01, MG-04)
    calling_ae = CharField(max_length=16, default="")


class CommitmentRequest(_Base):
    """A Storage Commitment request that was acknowledged (N-ACTION-RSP 0000) and not yet
    reported: the decision is made and stored before the acknowledgement (SC-06, SC-24), so a
    restart loses no promise. The row goes when the report is delivered or abandoned."""

    transaction_uid = CharField(max_length=64)
    requester = CharField(max_length=16)  # the N-ACTION's calling AE title: where the report goes
    received_at = UtcDateTimeField()
    committed = TextField()  # JSON [[SOP class UID, SOP instance UID], ...]
    failed = TextField()  # JSON [[SOP class UID, SOP instance UID, failure reason], ...]
    attempts = IntegerField(default=0)  # failed deliveries over a new association (SC-20)
    # Due for delivery over a new association from then; NULL while the N-ACTION's own
    # association is delivering it (SC-11), and after a restart (recover) due at once.
    next_attempt = DoubleField(null=True, index=True)  # time.time(): 8 bytes (PostgreSQL REAL has 4)
    # IX-02: the box that holds the request (its `node-id`): it delivers the report, and at
    # its restart (recover) makes the ones it was delivering due. Others take a request only
    # once it is due, claiming the row (commitment.py).
    node = CharField(max_length=64, default="", constraints=[SQL("DEFAULT ''")])


class StudyEdit(_Base):
    """One value changed by `service-tool study edit` (MG-03): the history `study show` prints.
    Patient-level values (name, ID, birth date, sex) are recorded on the study they were edited
    through; the index holds the new value, the stored files keep the received one (D-9)."""

    study = ForeignKeyField(Study, backref="edits", on_delete="CASCADE")
    edited_at = UtcDateTimeField()
    keyword = CharField(max_length=64)  # the DICOM keyword, e.g. PatientName
    old_value = TextField()
    new_value = TextField()
    operator = CharField(max_length=64, default="")  # who asked for it, when the tool knows


class SchemaInfo(_Base):
    """One row: which normaliser produced the *_folded columns (so a change forces a reindex)."""

    normaliser_version = IntegerField()
    # IX-02: counts deletions and moves (MG-02, MG-03); a box that sees it change forgets the
    # row ids it cached (db.Index.rows_changed).
    generation = IntegerField(default=0, constraints=[SQL("DEFAULT 0")])


def total_size():
    """The instances' bytes as an integer on both backends (PostgreSQL's SUM of a bigint is a
    numeric), 0 for none: `status` and `study list` count the same way."""
    return fn.COALESCE(fn.SUM(Instance.size), 0).cast("BIGINT")


ALL_MODELS = (Patient, Study, Series, Instance, SchemaInfo, CommitmentRequest, StudyEdit)
# Every table, each after those its foreign keys name: the order to fill an index in.
ALL_MODELS_BY_PARENT = (SchemaInfo, Patient, Study, Series, Instance, StudyEdit, CommitmentRequest)
