"""DCMTK findscu against QUERY-RETRIEVE-SCP: both information models, every level (QF-*, CS-*).

One appliance per module holds the archive of tests/support/query_archive.py, stored through the real
STORAGE-SCP. findscu writes each pending response's identifier to rspNNNN.dcm (-X), read back
with pydicom; its -v log names the status of every response and of the final one. findscu is
run with its arguments as Latin-1 bytes and its output read as Latin-1 (helpers.dcmtk works on
UTF-8 text), so a Latin-1 query value goes over the wire as Latin-1, as a viewer set to
ISO_IR 100 sends it.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

import query_archive
from helpers import Appliance, dcmtk, dcmtk_error_comment, says_why
from query_archive import uid

pytestmark = pytest.mark.index_backends  # C-FIND on SQLite and on PostgreSQL (IX-01)

CALLED = "EX_QUERY_SCP"
PENDING = "Pending"  # findscu's name for FF00; FF01 is "Pending: WarningUnsupportedOptionalKeys"
SUCCESS = "Success"
A900 = "Error: DataSetDoesNotMatchSOPClass"
C001 = "Failed: UnableToProcess"


@dataclass
class Found:
    pending: list[str]  # findscu's status text of each pending response
    final: str  # findscu's status text of the final response
    identifiers: list[pydicom.Dataset]  # the identifier of each pending response, in order
    files: list[Path]  # where findscu wrote them
    output: str

    def raw(self, index: int, keyword: str) -> bytes:
        """An element's bytes as sent, trailing padding removed (read afresh: undecoded)."""
        return pydicom.dcmread(self.files[index]).get_item(keyword).value.rstrip(b" ")


def findscu(app: Appliance, out_dir: Path, model: str, keys: list[str], calling: str = "FINDSCU") -> Found:
    """One C-FIND with findscu (`model` -P or -S, `keys` as for -k) on its own association."""
    out_dir.mkdir(parents=True)
    args = ["findscu", "-v", "-aet", calling, "-aec", CALLED, model, "-X", "-od", str(out_dir)]
    for key in keys:
        args += ["-k", key]
    args += ["127.0.0.1", str(app.qr_port)]
    run = subprocess.run([arg.encode("latin-1") for arg in args], capture_output=True, timeout=60,
                         env={**os.environ, "TCP_NODELAY": "1"})
    output = (run.stdout + run.stderr).decode("latin-1")
    assert run.returncode == 0, output
    pending = re.findall(r"Received Find Response \d+ \((.*)\)", output)
    [final] = re.findall(r"Received Final Find Response \((.*)\)", output) or [None]
    assert final is not None, f"findscu saw no final C-FIND response:\n{output}"
    files = sorted(out_dir.glob("rsp*.dcm"))
    assert len(files) == len(pending), output
    return Found(pending, final, [pydicom.dcmread(path) for path in files], files, output)


def text(ds: pydicom.Dataset, keyword: str) -> str:
    """An element's value as text; "" when zero-length."""
    value = ds[keyword].value
    return "" if value is None else str(value)


def entity(ds: pydicom.Dataset, level: str) -> str:
    """Which patient (its ID) or study/series/instance (its query_archive label) a response is."""
    if level == "PATIENT":
        return text(ds, "PatientID")
    keyword = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}[level]
    return query_archive.label(text(ds, keyword))


S1, S1_1, S1_1_2, S2_1_1 = uid("S1"), uid("S1.1"), uid("S1.1.2"), uid("S2.1.1")

# id: (model, level, the other keys, {entity: {keyword: returned value}})
LEVELS = {
    "patient-root-PATIENT": ("-P", "PATIENT", ["PatientName=doe*", "PatientID", "PatientBirthDate", "PatientSex"], {
        "PID-1": {"PatientName": "Doe^John", "PatientBirthDate": "19700101", "PatientSex": "M"},
        "PID-2": {"PatientName": "DOE^JANE", "PatientBirthDate": "19800202", "PatientSex": "F"},
        # Sex X is indexed as U and sent empty (EL-09, EL-10)
        "PID-4": {"PatientName": "Doering", "PatientBirthDate": "19900404", "PatientSex": ""},
    }),
    "patient-root-STUDY": ("-P", "STUDY", ["PatientID=PID-1", "StudyInstanceUID", "StudyDate", "AccessionNumber",
                                           "StudyDescription"], {
        "S1": {"PatientID": "PID-1", "StudyDate": "20240101", "AccessionNumber": "ACC-1",
               "StudyDescription": "CT CHEST"},
        "S2": {"PatientID": "PID-1", "StudyDate": "20240315", "AccessionNumber": "ACC%2",
               "StudyDescription": "MR_HEAD"},
    }),
    "patient-root-SERIES": ("-P", "SERIES", ["PatientID=PID-1", f"StudyInstanceUID={S1}", "SeriesInstanceUID",
                                             "Modality", "SeriesNumber"], {
        "S1.1": {"StudyInstanceUID": S1, "Modality": "CT", "SeriesNumber": "1"},
        "S1.2": {"StudyInstanceUID": S1, "Modality": "CT", "SeriesNumber": "2"},
    }),
    "patient-root-IMAGE": ("-P", "IMAGE", ["PatientID=PID-1", f"StudyInstanceUID={S1}", f"SeriesInstanceUID={S1_1}",
                                           "SOPInstanceUID", "InstanceNumber"], {
        "S1.1.1": {"SeriesInstanceUID": S1_1, "InstanceNumber": "1"},
        "S1.1.2": {"SeriesInstanceUID": S1_1, "InstanceNumber": "2"},
    }),
    # Study Root: patient keys are study-level keys (QF-07); "CT*" is case-sensitive (QF-08), not "ct chest" (S3).
    "study-root-STUDY": ("-S", "STUDY", ["StudyDescription=CT*", "StudyInstanceUID", "PatientName", "PatientID",
                                         "StudyDate", "StudyTime"], {
        "S1": {"StudyDescription": "CT CHEST", "PatientName": "Doe^John", "PatientID": "PID-1",
               "StudyDate": "20240101", "StudyTime": "083000"},
        "S5": {"StudyDescription": "CT CHEST", "PatientName": "Doering", "PatientID": "PID-4",
               "StudyDate": "20240101", "StudyTime": "000000"},
    }),
    "study-root-STUDY-no-match": ("-S", "STUDY", ["AccessionNumber=NO-SUCH", "StudyInstanceUID"], {}),
    "study-root-SERIES": ("-S", "SERIES", [f"StudyInstanceUID={S1}", "SeriesNumber=2", "SeriesInstanceUID",
                                           "Modality"], {
        "S1.2": {"SeriesNumber": "2", "Modality": "CT"},
    }),
    # A UID list (QF-12) naming an instance of another series: hierarchical, so only S1.1.2 (QF-03).
    "study-root-IMAGE": ("-S", "IMAGE", [f"StudyInstanceUID={S1}", f"SeriesInstanceUID={S1_1}",
                                         f"SOPInstanceUID={S1_1_2}\\{S2_1_1}", "InstanceNumber"], {
        "S1.1.2": {"InstanceNumber": "2"},
    }),
}


@pytest.mark.parametrize("model,level,keys,expected", LEVELS.values(), ids=LEVELS.keys())
def test_findscu_finds_exactly_the_matches_at_each_level(archive_appliance, tmp_path, model, level, keys, expected):
    """QF-01, QF-02: findscu's C-FIND at every level of Patient Root (-P) and Study Root (-S).
    QF-04: one Pending FF00 per match, then the final Success (no matches: only the final).
    QF-05: each response holds exactly the requested keys, level included; QF-06/QF-07: the
    values are the stored ones; QF-08..QF-12: the matching type each key is used with."""
    found = findscu(archive_appliance, tmp_path / "out", model, [f"QueryRetrieveLevel={level}", *keys])
    assert found.final == SUCCESS, found.output
    assert found.pending == [PENDING] * len(found.identifiers), found.output  # FF00, not FF01 (QF-14)
    by_entity = {entity(ds, level): ds for ds in found.identifiers}
    assert sorted(by_entity) == sorted(expected), found.output
    assert len(by_entity) == len(found.identifiers), "a match was returned twice"
    requested = {"QueryRetrieveLevel", *(key.split("=")[0] for key in keys)}
    for name, values in expected.items():
        ds = by_entity[name]
        assert {element.keyword for element in ds} == requested, name  # QF-05: no extras, no charset
        assert text(ds, "QueryRetrieveLevel") == level
        assert {keyword: text(ds, keyword) for keyword in values} == values, name


@pytest.mark.parametrize("pattern", ["Müller*", "MÜLLER*"], ids=["as-stored", "other-case"])
def test_a_latin1_query_finds_the_latin1_patient(archive_appliance, tmp_path, pattern):
    """CS-01, CS-02: findscu sends `PatientName=Müller*` in ISO_IR 100 (Latin-1 bytes, Specific
    Character Set in the identifier) and finds Müller^Hans, stored from an ISO_IR 100 instance;
    PN matching ignores case beyond ASCII too (QF-08). CS-03: the response says ISO_IR 100 and
    carries the names as Latin-1 bytes."""
    found = findscu(archive_appliance, tmp_path / "out", "-S",
                    ["QueryRetrieveLevel=STUDY", "SpecificCharacterSet=ISO_IR 100", f"PatientName={pattern}",
                     "StudyInstanceUID", "ReferringPhysicianName"])
    assert found.final == SUCCESS, found.output
    assert found.pending == [PENDING], found.output
    [ds] = found.identifiers
    assert entity(ds, "STUDY") == "S4"
    assert text(ds, "SpecificCharacterSet") == "ISO_IR 100"
    assert text(ds, "PatientName") == "Müller^Hans"
    assert text(ds, "ReferringPhysicianName") == "Meier^Jürgen"
    assert found.raw(0, "PatientName") == "Müller^Hans".encode("latin-1")
    assert found.raw(0, "ReferringPhysicianName") == "Meier^Jürgen".encode("latin-1")


def test_an_ascii_query_gets_latin1_values_with_their_character_set(archive_appliance, tmp_path):
    """CS-03, QF-05 [P]: a query without Specific Character Set whose match has a Latin-1 name
    gets Specific Character Set ISO_IR 100 added to the response (Patient Root, PATIENT)."""
    found = findscu(archive_appliance, tmp_path / "out", "-P",
                    ["QueryRetrieveLevel=PATIENT", "PatientID=PID-3", "PatientName"])
    assert found.final == SUCCESS, found.output
    [ds] = found.identifiers
    assert {element.keyword for element in ds} == {"SpecificCharacterSet", "QueryRetrieveLevel", "PatientID",
                                                    "PatientName"}
    assert text(ds, "SpecificCharacterSet") == "ISO_IR 100"
    assert text(ds, "PatientName") == "Müller^Hans"
    assert found.raw(0, "PatientName") == "Müller^Hans".encode("latin-1")


REFUSED = {
    # QF-02: PATIENT is not a level of Study Root.
    "study-root-PATIENT-level": ("-S", ["QueryRetrieveLevel=PATIENT", "PatientID=PID-1"], A900, "0xA900",
                                 "FIND_A900_LVL"),
    # QF-03: a Patient Root SERIES query needs Patient ID and Study Instance UID.
    "patient-root-SERIES-without-study": ("-P", ["QueryRetrieveLevel=SERIES", "PatientID=PID-1",
                                                 "SeriesInstanceUID", "Modality=CT"], A900, "0xA900", "FIND_A900_HIER"),
    # QF-15, D-8: Patient Root PATIENT with Patient ID and Patient's Name both empty ...
    "patient-root-PATIENT-empty": ("-P", ["QueryRetrieveLevel=PATIENT", "PatientID", "PatientName"], C001, "0xC001",
                                   "FIND_C001_EMPTY"),
    # ... or a lone "*", which is universal matching (D-8, QF-09).
    "patient-root-PATIENT-star": ("-P", ["QueryRetrieveLevel=PATIENT", "PatientID", "PatientName=*"], C001, "0xC001",
                                  "FIND_C001_STAR"),
    # QF-16, D-8: Study Root STUDY with no study key and no patient value.
    "study-root-STUDY-unspecific": ("-S", ["QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientName",
                                           "StudyDescription=*"], C001, "0xC001", "FIND_C001_STUDY"),
}


@pytest.mark.parametrize("model,keys,reported,code,calling", REFUSED.values(), ids=REFUSED.keys())
def test_findscu_reads_the_refusals(archive_appliance, tmp_path, model, keys, reported, code, calling):
    """QF-17 (A900 for an identifier that does not fit the model: QF-02, QF-03) and QF-15/QF-16
    (C001 for a top-level query that names nobody, D-8): findscu gets no pending response and
    reads the final status as meant; the appliance logs the refusal (QF-17, LG-06, LG-07: AE,
    peer, association, status) as a WARNING: the requester's mistake, not the service's (issue 22)."""
    found = findscu(archive_appliance, tmp_path / "out", model, keys, calling=calling)
    assert found.final == reported, found.output
    assert found.pending == [] and found.identifiers == [], found.output
    archive_appliance.wait_log(
        rf"WARNING [\w.]+: QUERY-RETRIEVE-SCP #\d+ {calling}@127\.0\.0\.1:\d+: C-FIND #1 status {code}: ")


def test_findscu_shows_why_a_query_is_refused(archive_appliance):
    """Issue 22 item 2, UL-05: `findscu -S -k PatientName=*` printed nothing, and with -v only
    "Failed: UnableToProcess". The C001 carries the reason of its log line in its Error Comment,
    which findscu -d prints."""
    start = len(archive_appliance.log())
    run = dcmtk("findscu", "-d", "-S", "-aet", "FIND_C001_WHY", "-aec", CALLED, "-k", "QueryRetrieveLevel=STUDY",
                "-k", "PatientName=*", "127.0.0.1", str(archive_appliance.qr_port))
    output = run.stdout + run.stderr
    assert re.search(r"^D: DIMSE Status +: 0xc001: Failed: Unable to process$", output, re.M), output
    logged = archive_appliance.wait_log(r"WARNING appliance\.qr_scp: QUERY-RETRIEVE-SCP #\d+ FIND_C001_WHY@"
                                        r"127\.0\.0\.1:\d+: C-FIND #1 status 0xC001: (no value for PatientID, "
                                        r"PatientName .*)", since=start)
    assert says_why(dcmtk_error_comment(output), logged.group(1)), output
