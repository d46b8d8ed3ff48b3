"""STORAGE-SCP C-STORE statuses (F.4.2.3.4.1.4, Annex F.8.1.1), sent with pynetdicom.

Each refused dataset travels on an association that first stored a good instance: the refusal
is logged with its status in hex and its reason (LG-05/LG-07), as a WARNING (the sender's data,
not the service's problem: issue 22), the reason also in the response's Error Comment (UL-05);
it leaves nothing in store/, spool/ or the index (ST-08..ST-12), keeps the earlier instance, and
the service still answers C-ECHO.
"""

from __future__ import annotations

import re

import pytest
from pydicom.uid import generate_uid

import datasets
import scu
from datasets import CT, ELE, ILE, MR
from helpers import Appliance, says_why

pytestmark = pytest.mark.index_backends  # C-STORE on SQLite and on PostgreSQL (IX-01)

SUCCESS, MISMATCH, CANNOT_UNDERSTAND = 0x0000, 0xA900, 0xC000


@pytest.fixture(scope="module")
def app(tmp_path_factory, new_index_url):
    app = Appliance(tmp_path_factory.mktemp("statuses"), index_url=new_index_url()).start()
    yield app
    assert app.stop() == 0, app.log()


def crafted(tmp_path, mutate, transfer_syntax=ELE):
    """A CT instance as a Part 10 file after `mutate(ds, meta)` changed the dataset and/or
    the File Meta (whose UIDs become the C-STORE-RQ's); returns (path, request UID)."""
    ds = datasets.image(CT, transfer_syntax)
    meta = {"sop_class": CT, "sop_instance_uid": ds.SOPInstanceUID}
    body_of = mutate(ds, meta)
    path = tmp_path / f"{meta['sop_instance_uid']}.dcm"
    body = datasets.dataset_bytes(datasets.write(ds, path))
    datasets.part10(path, body_of(body) if body_of else body, meta["sop_class"],
                    meta["sop_instance_uid"], transfer_syntax)
    return path, meta["sop_instance_uid"]


def without(keyword):
    def mutate(ds, _meta):
        delattr(ds, keyword)
    return mutate


def with_value(keyword, value):
    def mutate(ds, _meta):
        setattr(ds, keyword, value)
    return mutate


def request_says(key, value):
    def mutate(_ds, meta):
        meta[key] = value
    return mutate


def body(transform):
    return lambda _ds, _meta: transform


def assert_refused(app, tmp_path, path, uid, expected):
    """Send a good CT, then `path`; check the refusal and what it left behind."""
    good_ds = datasets.image(CT, ELE)
    good = datasets.write(good_ds, tmp_path / "good.dcm")
    files_before = set(app.stored_files())
    with scu.association(app.storage_port) as assoc:
        assert scu.send_file(assoc, good) == SUCCESS
        refused = scu.store_response(assoc, path)
        assert refused.Status == expected
        assert scu.echo_status(assoc) == SUCCESS
    logged = app.wait_log(rf"WARNING appliance\.storage_scp: .*C-STORE {re.escape(uid)} class [\d.]+ "
                          rf"status 0x{expected:04X}: (\S.*)")
    assert says_why(refused.get("ErrorComment"), logged.group(1)), (refused.get("ErrorComment"), logged.group(1))
    [kept] = datasets.stored_paths(app, good_ds.SOPInstanceUID)
    assert set(app.stored_files()) - files_before == {kept}
    assert datasets.dataset_bytes(kept) == datasets.dataset_bytes(good)
    assert datasets.stored_paths(app, uid) == []
    assert app.index_rows("SELECT count(*) FROM instance WHERE file_sop_instance_uid = ? OR sop_instance_uid = ?",
                          uid, uid) == [(0,)]
    assert app.in_flight() == []
    with scu.association(app.storage_port) as assoc:
        assert scu.echo_status(assoc) == SUCCESS


MISMATCHES = {
    # ST-08: mandatory identifiers absent or empty
    "no-StudyInstanceUID": without("StudyInstanceUID"),
    "empty-StudyInstanceUID": with_value("StudyInstanceUID", ""),
    "no-SeriesInstanceUID": without("SeriesInstanceUID"),
    "no-SOPInstanceUID": without("SOPInstanceUID"),
    "no-SOPClassUID": without("SOPClassUID"),
    # ST-09 / D-12: values needed for display
    "no-PhotometricInterpretation": without("PhotometricInterpretation"),
    "no-BitsAllocated": without("BitsAllocated"),
    "no-BitsStored": without("BitsStored"),
    "no-Rows": without("Rows"),
    "no-Columns": without("Columns"),
    "no-PixelData": without("PixelData"),
    "empty-PixelData": with_value("PixelData", b""),
    # ST-10: the dataset disagrees with the C-STORE-RQ
    "other-SOPInstanceUID": request_says("sop_instance_uid", generate_uid()),
    "other-SOPClassUID": request_says("sop_class", MR),
}


@pytest.mark.parametrize("mutate", MISMATCHES.values(), ids=MISMATCHES.keys())
def test_a900_data_set_does_not_match(app, tmp_path, mutate):
    """ST-08, ST-09, ST-10, LG-05: A900, logged, nothing kept; earlier instance kept."""
    path, uid = crafted(tmp_path, mutate)
    assert_refused(app, tmp_path, path, uid, MISMATCH)


UNPARSEABLE = {
    "garbage-ELE": (ELE, body(lambda _: b"\xde\xad\xbe\xef" * 256)),
    "garbage-ILE": (ILE, body(lambda _: b"\xde\xad\xbe\xef" * 256)),
    "truncated-ELE": (ELE, body(lambda data: data[:-1000])),
    "truncated-ILE": (ILE, body(lambda data: data[:-1000])),
    "trailing-bytes": (ELE, body(lambda data: data + b"\x00\x00")),
    "out-of-order": (ELE, body(lambda data: data[data.index(b"\x10\x00\x10\x00"):] + data)),
}


@pytest.mark.parametrize("transfer_syntax, mutate", UNPARSEABLE.values(), ids=UNPARSEABLE.keys())
def test_c000_cannot_understand(app, tmp_path, transfer_syntax, mutate):
    """ST-12, PY-02, LG-05: bytes that do not parse into elements get C000 (not pynetdicom's
    C210/C211), logged, nothing kept; the earlier instance on the association is kept."""
    path, uid = crafted(tmp_path, mutate, transfer_syntax)
    assert_refused(app, tmp_path, path, uid, CANNOT_UNDERSTAND)


# (0009,1002) UN, undefined length: one item holding (0010,0010) "A^B " in Implicit VR.
UN_SEQUENCE = (b"\x09\x00\x02\x10UN\x00\x00\xff\xff\xff\xff"
               b"\xfe\xff\x00\xe0\xff\xff\xff\xff" b"\x10\x00\x10\x00\x04\x00\x00\x00A^B "
               b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
STORED_ANYWAY = {
    # ST-11: the A900 check is a subset check, not IOD validation
    "no-SamplesPerPixel": without("SamplesPerPixel"),
    "no-HighBit": without("HighBit"),
    "no-PixelRepresentation": without("PixelRepresentation"),
    "no-Modality": without("Modality"),
    "no-PatientID": without("PatientID"),
    "no-StudyDate": without("StudyDate"),
    # D-12: presence only; binary values whose bytes look like padding (0x20 0x00) are values
    "32x32": lambda ds, _meta: ds.update({"Rows": 32, "Columns": 32, "PixelData": bytes(32 * 32 * 2)}),
    "BitsAllocated-32": lambda ds, _meta: ds.update(
        {"BitsAllocated": 32, "BitsStored": 32, "HighBit": 31, "PixelData": bytes(64 * 64 * 4)}),
    "Columns-8192": lambda ds, _meta: ds.update({"Rows": 1, "Columns": 8192, "PixelData": bytes(8192 * 2)}),
    # PS3.5 6.2.2: an undefined-length UN element in Explicit VR holds an Implicit VR sequence
    "UN-sequence": body(lambda data: data.replace(b"\x10\x00\x10\x00PN", UN_SEQUENCE + b"\x10\x00\x10\x00PN", 1)),
}


@pytest.mark.parametrize("mutate", STORED_ANYWAY.values(), ids=STORED_ANYWAY.keys())
def test_other_missing_elements_still_stored(app, tmp_path, mutate):
    """ST-11, D-12, ST-03: a well-formed dataset outside the A900 subset gets 0x0000 and is
    kept bit-identical (ST-04)."""
    path, uid = crafted(tmp_path, mutate)
    with scu.association(app.storage_port) as assoc:
        assert scu.send_file(assoc, path) == SUCCESS
    [stored] = datasets.stored_paths(app, uid)
    assert datasets.dataset_bytes(stored) == datasets.dataset_bytes(path)


def test_quarantine_keeps_refused_datasets_bounded(make_appliance, tmp_path):
    """ST-13 (CF-38): with quarantine on, each dataset refused with A900 or C000 is kept in
    quarantine/ with its reason, only the newest `quarantine_max_files`; nothing in store/."""
    app = make_appliance({"storage_scp": {"quarantine": True, "quarantine_max_files": 2}})
    refused = [crafted(tmp_path, without("StudyInstanceUID")),
               crafted(tmp_path, body(lambda _: b"\xde\xad\xbe\xef" * 64)),
               crafted(tmp_path, without("PhotometricInterpretation"))]
    with scu.association(app.storage_port) as assoc:
        statuses = [scu.send_file(assoc, path) for path, _uid in refused]
    assert statuses == [MISMATCH, CANNOT_UNDERSTAND, MISMATCH]
    kept = sorted((app.data_dir / "quarantine").glob("*.dcm"), key=lambda p: p.stat().st_mtime)
    assert [datasets.dataset_bytes(p) for p in kept] == [datasets.dataset_bytes(p) for p, _ in refused[1:]]
    reasons = [p.with_suffix(".txt").read_text() for p in kept]
    assert "cannot be parsed" in reasons[0] and "Photometric Interpretation" in reasons[1]
    assert app.stored_files() == [] and app.in_flight() == []
