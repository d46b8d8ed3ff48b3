"""The export overlay (SU-14, QM-17, EL-00, D-9), against the real daemon: values the index holds
differently from the stored file go out in the exported copy, and every other element goes
out with the bytes it was stored with. The stored files stay as received."""

from __future__ import annotations

import pytest

import datasets
import scu
from destinations import Destination, move, move_contexts, move_identifier
from helpers import free_port
from query_archive import uid

pytestmark = pytest.mark.index_backends  # C-MOVE on SQLite and on PostgreSQL (IX-01)

DEFAULTS = {"patient_id": "NO-ID", "patient_name": "Müller^Default"}


@pytest.fixture(scope="module")
def overlay(tmp_path_factory, new_index_url):
    """An appliance with default values (EL-02), DEST in its remote AE table, and the destination."""
    from helpers import Appliance
    root = tmp_path_factory.mktemp("overlay")
    port = free_port()
    app = Appliance(root / "appliance", {
        "remote_aes": [{"ae_title": "DEST", "host": "127.0.0.1", "port": port}],
        "storage_scp": {"default_values": DEFAULTS}}, index_url=new_index_url()).start()
    app.files = root / "files"
    app.files.mkdir()
    destination = Destination("DEST", port)
    yield app, destination
    destination.stop()
    assert app.stop() == 0, app.log()


def store(app, label: str, **elements) -> None:
    """One CT instance of study `label`.1 (series `label`.1.1, instance `label`.1.1.1 unless given)."""
    elements.setdefault("sop_instance_uid", uid(f"{label}.1.1"))
    ds = datasets.image(study_uid=uid(label), series_uid=uid(f"{label}.1"), **elements)
    for keyword in [k for k, v in elements.items() if v is None]:
        delattr(ds, keyword)
    path = datasets.write(ds, app.files / f"{label}-{len(list(app.files.iterdir()))}.dcm")
    with scu.association(app.storage_port, app.storage_title) as assoc:
        assert scu.send_file(assoc, path) == 0


def moved(app, destination, label: str) -> list:
    """The arrivals of a Study Root C-MOVE of study `label` (which must succeed)."""
    destination.arrivals.clear()
    with scu.association(app.qr_port, "EX_QUERY_SCP", move_contexts()) as assoc:
        responses = move(assoc, move_identifier("STUDY", StudyInstanceUID=uid(label)), "DEST")
    assert responses[-1].status == 0x0000, responses
    return destination.arrivals


def changed(app, arrival) -> dict:
    """Top-level elements whose value bytes differ between the stored file and what arrived:
    tag -> (stored, sent), None for an element on one side only."""
    ((relative,),) = app.index_rows("SELECT path FROM instance WHERE sop_instance_uid = ?", arrival.sop_instance)
    path = app.data_dir / "store" / relative
    stored = datasets.read_dataset(datasets.dataset_bytes(path), implicit_vr=False)
    sent = datasets.read_dataset(arrival.data, implicit_vr=arrival.transfer_syntax == datasets.ILE)
    out = {}
    for tag in sorted(set(stored.keys()) | set(sent.keys())):
        before = stored.get_item(tag).value if tag in stored else None
        after = sent.get_item(tag).value if tag in sent else None
        if before != after:
            out[int(tag)] = (before, after)
    return out


def test_clean_instance_is_unchanged(overlay):
    app, destination = overlay
    store(app, "S40", patient_id="OV-0", patient_name="Clean^Carl", PatientSex="M")
    (arrival,) = moved(app, destination, "S40")
    assert changed(app, arrival) == {}


def test_coerced_patient_id_is_exported(overlay):
    """EL-06: a second name under an existing Patient ID is indexed as ID_2; exports say so."""
    app, destination = overlay
    store(app, "S41", patient_id="OV-1", patient_name="Alpha^Ann")
    store(app, "S42", patient_id="OV-1", patient_name="Beta^Bob")
    (arrival,) = moved(app, destination, "S42")
    assert changed(app, arrival) == {0x00100020: (b"OV-1", b"OV-1_2")}
    app.wait_log(rf"C-STORE {uid('S42.1.1')} status 0x0000; index values applied: PatientID")


def test_defaults_are_exported_in_a_character_set_that_holds_them(overlay):
    """EL-02: empty Patient ID and name took the configured defaults; the default name is not
    ASCII and the file declares no character set, so the copy goes out in ISO_IR 192."""
    app, destination = overlay
    store(app, "S43", patient_id="", patient_name="", PatientSex="F")
    (arrival,) = moved(app, destination, "S43")
    assert changed(app, arrival) == {
        0x00080005: (None, b"ISO_IR 192"),
        0x00100010: (b"", "Müller^Default".encode("utf-8") + b" "),  # 15 bytes, padded
        0x00100020: (b"", b"NO-ID "),
    }


def test_a_latin1_file_keeps_its_character_set(overlay):
    app, destination = overlay
    store(app, "S44", patient_id="", patient_name="", charset="ISO_IR 100", PatientSex="F")
    (arrival,) = moved(app, destination, "S44")
    assert changed(app, arrival) == {0x00100010: (b"", "Müller^Default".encode("latin-1")),
                                     0x00100020: (b"", b"NO-ID ")}


@pytest.mark.parametrize("sex, sent", [("X", b""), ("male", b"M "), (None, b"")], ids=["other", "word", "absent"])
def test_patient_sex_goes_out_normalised_and_u_as_empty(overlay, sex, sent):
    """EL-09, EL-10: M/F/O from the first letter; U is exported as a present, empty element."""
    app, destination = overlay
    label = {"X": "S45", "male": "S46", None: "S47"}[sex]
    store(app, label, patient_id=f"OV-{label}", patient_name="Sex^Test", PatientSex=sex)
    (arrival,) = moved(app, destination, label)
    stored = None if sex is None else sex.encode() + b" " * (len(sex) % 2)
    assert changed(app, arrival) == {0x00100040: (stored, sent)}


def test_reassigned_sop_instance_uid_is_exported(overlay):
    """ST-17: a second, different instance with a used SOP Instance UID got a new UID; both
    are exported, the second under its new UID, in the command and in the data set."""
    app, destination = overlay
    store(app, "S48", patient_id="OV-48", patient_name="Dup^Dan", InstanceNumber="1")
    store(app, "S48", patient_id="OV-48", patient_name="Dup^Dan", InstanceNumber="2")
    (new_uid,) = [u for (u,) in app.index_rows(
        "SELECT sop_instance_uid FROM instance WHERE file_sop_instance_uid = ? AND sop_instance_uid != ?",
        uid("S48.1.1"), uid("S48.1.1"))]
    first, second = moved(app, destination, "S48")
    assert (first.sop_instance, second.sop_instance) == (uid("S48.1.1"), new_uid)
    assert changed(app, first) == {}
    assert changed(app, second) == {0x00080018: (uid("S48.1.1").encode() + b"\0" * (len(uid("S48.1.1")) % 2),
                                                 new_uid.encode() + b"\0" * (len(new_uid) % 2))}


def test_study_values_come_from_the_index(overlay):
    """QM-17: the study's indexed Accession Number (from its first instance) goes out on every
    instance of it, also one whose file says otherwise."""
    app, destination = overlay
    store(app, "S49", patient_id="OV-49", patient_name="Acc^Ada", AccessionNumber="FIRST", InstanceNumber="1")
    store(app, "S49", patient_id="OV-49", patient_name="Acc^Ada", AccessionNumber="SECOND", InstanceNumber="2",
          sop_instance_uid=uid("S49.1.2"))
    first, second = moved(app, destination, "S49")
    assert changed(app, first) == {}
    assert changed(app, second) == {0x00080050: (b"SECOND", b"FIRST ")}


def test_stored_files_are_never_changed(overlay):
    """D-9, EL-00: after all the exports above, every stored file is still the bytes received."""
    app, _ = overlay
    for path in app.files.iterdir():
        ds = datasets.read_dataset(datasets.dataset_bytes(path), implicit_vr=False)
        stored = [app.data_dir / "store" / p for (p,) in app.index_rows(
            "SELECT path FROM instance WHERE file_sop_instance_uid = ?", str(ds.SOPInstanceUID))]
        assert any(datasets.dataset_bytes(s) == datasets.dataset_bytes(path) for s in stored), path.name


def test_every_index_value_listed_for_export_is_compared():
    """SU-14 (in-process): the index columns a C-MOVE reads for an instance are exactly the
    values store/export.py compares with the file, so none is read and then ignored."""
    from appliance.query.retrieve import EXPORTED_COLUMNS
    from appliance.store.export import ELEMENTS
    assert set(EXPORTED_COLUMNS) == set(ELEMENTS) | {"last_name", "first_name", "sex"}
