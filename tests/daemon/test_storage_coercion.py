"""What STORAGE-SCP puts in the index (Annex F.8.1.1, EL-*), and that coercions stay there.

Every test also checks EL-00 / ST-04: the stored file holds the sent dataset bytes, whatever
the index made of them.
"""

from __future__ import annotations

import re

import pytest
from pydicom.uid import generate_uid

import datasets
import scu
from datasets import CT, US
from helpers import Appliance, dcmtk, dcmtk_error_comment, says_why, wait_for

pytestmark = pytest.mark.index_backends  # C-STORE on SQLite and on PostgreSQL (IX-01)

SUCCESS, COERCED = 0x0000, 0xB000
DEFAULTS = {"patient_name": "UNKNOWN^PATIENT", "patient_id": "NOID", "patient_birth_date": "19000101",
            "study_date": "20000101", "accession_number": "NOACC", "modality": "OT"}
EXAM_TYPES = ["CHEST", "ABDOMEN", "KNEE", "LUNG"]
COLUMNS = {
    "patient_id": "p.patient_id", "original_patient_id": "p.original_patient_id",
    "last_name": "p.last_name", "first_name": "p.first_name", "name_folded": "p.name_folded",
    "sex": "p.sex", "birth_date": "p.birth_date", "study_uid": "st.study_instance_uid",
    "study_date": "st.study_date", "accession_number": "st.accession_number",
    "referring_physician": "st.referring_physician", "modality": "se.modality",
    "operators_name": "se.operators_name", "sop_instance_uid": "i.sop_instance_uid", "path": "i.path",
}


def start(tmp_path_factory, index_url, name, overrides=None):
    app = Appliance(tmp_path_factory.mktemp(name), overrides or {}, index_url=index_url).start()
    yield app
    assert app.stop() == 0, app.log()


@pytest.fixture(scope="module")
def app(tmp_path_factory, new_index_url):
    """Default configuration: no default values, B000 off, duplicates get a new UID."""
    yield from start(tmp_path_factory, new_index_url(), "coercion-default")


@pytest.fixture(scope="module")
def configured(tmp_path_factory, new_index_url):
    """EL-02 default values, ST-14 coercion warning on, ST-18 duplicates replace, EL-12 exam types."""
    yield from start(tmp_path_factory, new_index_url(), "coercion-configured", {"storage_scp": {
        "coercion_warning": True, "duplicate_policy": "replace", "default_values": DEFAULTS,
        "exam_types": EXAM_TYPES}})


def store(app, path_dir, ds, name=None) -> tuple[int, object]:
    """C-STORE `ds` on its own association; returns (status, the sent file)."""
    sent = datasets.write(ds, path_dir / (name or f"{generate_uid()}.dcm"))
    with scu.association(app.storage_port) as assoc:
        return scu.send_file(assoc, sent), sent


def indexed(app, file_sop_instance_uid) -> list[dict]:
    """Index rows (joined up to the patient) of instances sent with this SOP Instance UID."""
    rows = app.index_rows(
        f"SELECT {', '.join(COLUMNS.values())} FROM instance i JOIN series se ON i.series_id = se.id "
        "JOIN study st ON se.study_id = st.id JOIN patient p ON st.patient_id = p.id "
        "WHERE i.file_sop_instance_uid = ? ORDER BY i.id", file_sop_instance_uid)
    return [dict(zip(COLUMNS, row)) for row in rows]


def assert_file_kept(app, row, sent) -> None:
    """EL-00, ST-04: the stored file holds exactly the sent dataset bytes."""
    assert datasets.dataset_bytes(app.data_dir / "store" / row["path"]) == datasets.dataset_bytes(sent)


def store_one(app, tmp_path, ds) -> dict:
    status, sent = store(app, tmp_path, ds)
    assert status == SUCCESS
    [row] = indexed(app, ds.SOPInstanceUID)
    assert_file_kept(app, row, sent)
    return row


def test_index_values(app, tmp_path):
    """ST-05, EL-08: the Annex F.8.1.1 elements are in the index as sent."""
    ds = datasets.image(CT, patient_id="EL08", OperatorsName="Op^Erator", AccessionNumber="A-42")
    row = store_one(app, tmp_path, ds)
    assert row | {"path": None} == {
        "patient_id": "EL08", "original_patient_id": "EL08", "last_name": "Doe", "first_name": "Jane",
        "name_folded": "doe^jane", "sex": "F", "birth_date": "19700101", "study_uid": ds.StudyInstanceUID,
        "study_date": "20260101", "accession_number": "A-42", "referring_physician": "Ref^Doctor",
        "modality": "CT", "operators_name": "Op^Erator", "sop_instance_uid": ds.SOPInstanceUID, "path": None}


def test_modality_of_other_length_kept(app, tmp_path):
    """EL-11, D-15(a): indexed as received, with a warning in the service log."""
    assert store_one(app, tmp_path, datasets.image(CT, Modality="SEG"))["modality"] == "SEG"
    app.wait_log(r"WARNING .*Modality 'SEG' is not two characters; indexed as received")


@pytest.mark.parametrize("name, last, first", [
    ("Last^First", "Last", "First"),  # EL-03
    ("Last^First^Middle^Dr^Jr", "Last", "First"),  # EL-03: further components ignored
    ("Last^First=Ideo^Graphic", "Last", "First"),  # EL-03: alphabetic group only
    ("Last, First", "Last", "First"),  # EL-04
    ("  Last ,  First  ", "Last", "First"),  # EL-04: spaces trimmed
    ("Last First", "Last First", ""),  # EL-05
    ("L" * 70 + "^" + "F" * 70, "L" * 64, "F" * 64),  # EL-01: 64 characters each in the index
])
def test_patient_name_split(app, tmp_path, name, last, first):
    """EL-01, EL-03..EL-05, EL-00."""
    row = store_one(app, tmp_path, datasets.image(CT, patient_name=name, patient_id=generate_uid()[-20:]))
    assert (row["last_name"], row["first_name"]) == (last, first)


@pytest.mark.parametrize("sent, indexed_as", [
    ("M", "M"), ("m", "M"), ("F", "F"), ("female", "F"), ("O", "O"), ("other", "O"),
    ("X", "U"), ("U", "U"), ("", "U"), (None, "U"),
])
def test_patient_sex_normalised(app, tmp_path, sent, indexed_as):
    """EL-09, EL-00 (None: element absent)."""
    ds = datasets.image(CT, patient_id=generate_uid()[-20:])
    if sent is None:
        del ds.PatientSex
    else:
        ds.PatientSex = sent
    assert store_one(app, tmp_path, ds)["sex"] == indexed_as


def test_patient_id_coerced_for_another_name(app, tmp_path):
    """EL-06, EL-07: an ID already held by another name is indexed as ID_2 (then ID_3), the
    same conflicting name maps to the same coerced ID (case-insensitive), the original owner
    keeps the ID; ST-14: still 0x0000 by default; EL-00: files keep the sent Patient ID."""
    pid = "PID-" + generate_uid()[-12:]
    arrivals = [("Smith^John", pid), ("Jones^Ann", f"{pid}_2"), ("JONES^ann", f"{pid}_2"),
                ("smith^JOHN", pid), ("Brown^Bob", f"{pid}_3"), ("Jones^Ann", f"{pid}_2")]
    for name, expected in arrivals:
        row = store_one(app, tmp_path, datasets.image(CT, patient_name=name, patient_id=pid))
        assert (row["patient_id"], row["original_patient_id"]) == (expected, pid), name
    assert app.index_rows("SELECT count(*) FROM patient WHERE original_patient_id = ?", pid) == [(3,)]
    app.wait_log(rf"Patient ID '{re.escape(pid)}' already belongs to another name; indexed as '{re.escape(pid)}_2'")


@pytest.mark.parametrize("missing", ["absent", "empty"])
def test_default_values_applied_in_index(configured, tmp_path, missing):
    """EL-02 (absent or empty), ST-14 (B000 when enabled), EL-00 (file keeps what was sent)."""
    ds = datasets.image(US)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "AccessionNumber", "Modality"):
        if missing == "absent":
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, "")
    status, sent = store(configured, tmp_path, ds)
    assert status == COERCED
    [row] = indexed(configured, ds.SOPInstanceUID)
    assert_file_kept(configured, row, sent)
    assert {k: row[k] for k in ("last_name", "first_name", "patient_id", "birth_date", "study_date",
                                "accession_number", "modality")} == {
        "last_name": "UNKNOWN", "first_name": "PATIENT", "patient_id": "NOID", "birth_date": "19000101",
        "study_date": "20000101", "accession_number": "NOACC", "modality": "OT"}


def test_no_coercion_warning_when_nothing_coerced(configured, tmp_path):
    """ST-14: with coercion_warning on, a complete instance still gets 0x0000."""
    assert store_one(configured, tmp_path, datasets.image(CT, patient_id=generate_uid()[-20:]))["modality"] == "CT"


def test_coercion_warning_for_patient_id(configured, tmp_path):
    """ST-14 with EL-06: a coerced Patient ID gives B000 when enabled. UL-05: the warning's Error
    Comment names what was coerced, as its log line does."""
    pid = "PID-" + generate_uid()[-12:]
    assert store(configured, tmp_path, datasets.image(CT, patient_name="A^B", patient_id=pid))[0] == SUCCESS
    ds = datasets.image(CT, patient_name="C^D", patient_id=pid)
    with scu.association(configured.storage_port) as assoc:
        response = scu.store_response(assoc, datasets.write(ds, tmp_path / "coerced.dcm"))
    assert response.Status == COERCED
    assert indexed(configured, ds.SOPInstanceUID)[0]["patient_id"] == f"{pid}_2"
    logged = configured.wait_log(rf"INFO appliance\.storage_scp: .*C-STORE {ds.SOPInstanceUID} class [\d.]+ "
                                 r"status 0xB000: (stored; coerced PatientID)\n")
    assert says_why(response.get("ErrorComment"), logged.group(1)), response


def test_storescu_reads_what_was_coerced(configured, tmp_path):
    """ST-14, EL-02, UL-05 with DCMTK: storescu -d prints the B000's Error Comment, the elements
    given their default value, as the service log names them."""
    ds = datasets.image(US)
    for keyword in ("StudyDate", "AccessionNumber"):
        delattr(ds, keyword)
    run = dcmtk("storescu", "-d", "-aec", configured.storage_title, "127.0.0.1", str(configured.storage_port),
                str(datasets.write(ds, tmp_path / "defaults.dcm")))
    assert run.returncode == 0 and re.search(r"^D: DIMSE Status +: 0xb000: Warning", run.stdout + run.stderr, re.M), \
        run.stdout + run.stderr
    logged = configured.wait_log(rf"INFO appliance\.storage_scp: .*C-STORE {ds.SOPInstanceUID} class [\d.]+ "
                                 r"status 0xB000: (stored; coerced StudyDate, AccessionNumber)\n")
    assert says_why(dcmtk_error_comment(run.stdout + run.stderr), logged.group(1)), run.stdout + run.stderr


def duplicate_pair():
    first = datasets.image(CT, InstanceNumber="1")
    second = datasets.image(CT, sop_instance_uid=first.SOPInstanceUID, study_uid=first.StudyInstanceUID,
                            series_uid=first.SeriesInstanceUID, InstanceNumber="2")
    return first, second


def test_duplicate_gets_new_uid_by_default(app, tmp_path):
    """ST-17: both kept, the newcomer indexed under a new UID (logged); 0x0000 (ST-14 off)."""
    first, second = duplicate_pair()
    uid = first.SOPInstanceUID
    assert store(app, tmp_path, first, "first.dcm")[0] == SUCCESS
    assert store(app, tmp_path, second, "second.dcm")[0] == SUCCESS
    kept, new = indexed(app, uid)
    assert kept["sop_instance_uid"] == uid
    assert new["sop_instance_uid"] != uid and re.fullmatch(r"2\.25\.\d+", new["sop_instance_uid"])
    assert_file_kept(app, kept, tmp_path / "first.dcm")
    assert_file_kept(app, new, tmp_path / "second.dcm")
    app.wait_log(rf"C-STORE {re.escape(uid)} \(indexed as {re.escape(new['sop_instance_uid'])}\) .*status 0x0000")


def test_duplicate_replaces_when_configured(configured, tmp_path):
    """ST-18: one index row, the new file, the old file gone; replacing coerces no element,
    so 0x0000 even with coercion_warning on (ST-14)."""
    first, second = duplicate_pair()
    assert store(configured, tmp_path, first, "first.dcm")[0] == SUCCESS
    [old] = indexed(configured, first.SOPInstanceUID)
    assert store(configured, tmp_path, second, "second.dcm")[0] == SUCCESS
    [row] = indexed(configured, first.SOPInstanceUID)
    assert row["sop_instance_uid"] == first.SOPInstanceUID
    assert_file_kept(configured, row, tmp_path / "second.dcm")
    replaced = configured.data_dir / "store" / old["path"]
    wait_for(lambda: not replaced.exists(), "the replaced file to go once the new row is flushed")
    assert configured.index_rows("SELECT instance_number FROM instance WHERE sop_instance_uid = ?",
                                 first.SOPInstanceUID) == [("2",)]


def test_latin1_names_indexed_as_unicode(app, tmp_path):
    """CS-01, CS-02: ISO_IR 100 values decoded into the index; EL-00: file keeps Latin-1 bytes."""
    ds = datasets.image(CT, patient_name="Müller^Hans", patient_id=generate_uid()[-20:], charset="ISO_IR 100",
                        ReferringPhysicianName="Größe^Jörg")
    row = store_one(app, tmp_path, ds)
    assert (row["last_name"], row["first_name"], row["name_folded"]) == ("Müller", "Hans", "müller^hans")
    assert row["referring_physician"] == "Größe^Jörg"
    stored = datasets.dataset_bytes(app.data_dir / "store" / row["path"])
    assert b"M\xfcller^Hans" in stored and "Müller".encode() not in stored


@pytest.mark.parametrize("elements, exam_type", [
    ({"StudyDescription": "ABDOMEN"}, "ABDOMEN"),
    ({"SeriesDescription": "KNEE"}, "KNEE"),
    ({"BodyPartExamined": "CHEST"}, "CHEST"),
    ({"ImageType": ["ORIGINAL", "PRIMARY", "LUNG"]}, "LUNG"),
    ({"StudyDescription": "routine", "BodyPartExamined": "HAND"}, ""),
], ids=["study-description", "series-description", "body-part", "image-type-3rd-value", "no-match"])
def test_exam_type_from_the_configured_list(configured, tmp_path, elements, exam_type):
    """EL-12 (CF-39): Study/Series Description, Body Part Examined or the 3rd Image Type value
    found in the exam-type list is recorded as the study's and series' exam type."""
    ds = datasets.image(CT, **elements)
    status, _sent = store(configured, tmp_path, ds)
    assert status == SUCCESS
    [row] = configured.index_rows(
        "SELECT st.exam_type, se.exam_type FROM instance i JOIN series se ON i.series_id = se.id "
        "JOIN study st ON se.study_id = st.id WHERE i.file_sop_instance_uid = ?", ds.SOPInstanceUID)
    assert row == (exam_type, exam_type)
