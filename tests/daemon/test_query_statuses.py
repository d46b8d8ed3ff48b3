"""C-FIND statuses against the real daemon: A900, C001, FF00/FF01, FE00, A700 (QF-02..QF-19)."""

from __future__ import annotations

import pytest

import scu
from datasets import PATIENT_ROOT_FIND as PR
from datasets import STUDY_ROOT_FIND as SR
from helpers import says_why
from query_archive import uid
from test_query_matching import identifier

pytestmark = pytest.mark.index_backends  # C-FIND on SQLite and on PostgreSQL (IX-01)

A900, C001, FF00, FF01 = 0xA900, 0xC001, 0xFF00, 0xFF01


REFUSED = [
    # (id, model, identifier, status, logged reason)
    ("level-missing", SR, {"PatientID": "PID-1"}, A900, r"Query/Retrieve Level '' is not one of"),
    ("level-unknown", SR, {"QueryRetrieveLevel": "FOO", "PatientID": "PID-1"}, A900, "'FOO' is not one of"),
    ("level-patient-in-study-root", SR, {"QueryRetrieveLevel": "PATIENT", "PatientID": "PID-1"}, A900,
     "PATIENT is not part of Study Root"),
    ("pr-study-without-patient-id", PR, {"QueryRetrieveLevel": "STUDY", "StudyDate": "20240101"}, A900,
     "a STUDY query needs a single PatientID"),
    ("pr-study-wildcard-patient-id", PR, {"QueryRetrieveLevel": "STUDY", "PatientID": "PID*"}, A900,
     "a STUDY query needs a single PatientID"),
    ("sr-series-without-study", SR, {"QueryRetrieveLevel": "SERIES", "Modality": "CT"}, A900,
     "a SERIES query needs a single StudyInstanceUID"),
    ("sr-series-study-list", SR, {"QueryRetrieveLevel": "SERIES",
                                  "StudyInstanceUID": f"{uid('S1')}\\{uid('S2')}"}, A900,
     "a SERIES query needs a single StudyInstanceUID"),
    ("sr-image-without-series", SR, {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": uid("S1")}, A900,
     "an? IMAGE query needs a single SeriesInstanceUID"),
    ("invalid-date", SR, {"QueryRetrieveLevel": "STUDY", "StudyDate": "20241301"}, A900,
     "StudyDate '20241301' is not a valid date"),
    ("invalid-date-range", SR, {"QueryRetrieveLevel": "STUDY", "StudyDate": "2024-2025-2026"}, A900,
     "is not a valid date or range"),
    ("invalid-time", SR, {"QueryRetrieveLevel": "STUDY", "StudyTime": "10h30"}, A900, "is not a valid time"),
    ("invalid-uid", SR, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.abc"}, A900,
     "'1.2.abc' is not a valid UID"),
    ("invalid-integer", SR, {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": uid("S1"),
                             "SeriesNumber": "one"}, A900, "'one' is not an integer string"),
    # D-8: the Patient-ID-or-Name rules answer C001 (QF-15, QF-16)
    ("pr-patient-empty", PR, {"QueryRetrieveLevel": "PATIENT", "PatientID": "", "PatientName": ""}, C001,
     "no value for PatientID or PatientName: a Patient Root PATIENT query needs one"),
    ("pr-patient-only-stars", PR, {"QueryRetrieveLevel": "PATIENT", "PatientID": "*", "PatientName": "**"},
     C001, "no value for PatientID or PatientName"),
    ("pr-patient-other-key", PR, {"QueryRetrieveLevel": "PATIENT", "PatientBirthDate": "19700101"}, C001,
     "no value for PatientID or PatientName"),
    ("sr-study-empty", SR, {"QueryRetrieveLevel": "STUDY", "PatientName": "", "StudyDate": ""}, C001,
     "no value for PatientID, PatientName or a study key: a Study Root STUDY query needs one"),
    ("sr-study-sex-only", SR, {"QueryRetrieveLevel": "STUDY", "PatientSex": "F"}, C001,
     "no value for PatientID, PatientName or a study key"),
]


@pytest.mark.parametrize("model,keys,status,reason", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused(archive_appliance, qr, model, keys, status, reason):
    """QF-02, QF-03, QF-15..QF-17, LG-06: one failure response, no pending, a log line with the
    reason; UL-05: the response's Error Comment gives that reason. Issue 22: the requester's
    mistake is a WARNING, not an error of the service."""
    start = len(archive_appliance.log())
    [(final, found)] = scu.find_statuses(qr, model, scu.identifier(keys))
    assert (final.Status, found) == (status, None)
    logged = archive_appliance.wait_log(rf"WARNING appliance.qr_scp: QUERY-RETRIEVE-SCP #\d+ TEST_SCU@\S+: C-FIND #\d+ "
                                        rf"status 0x{status:04X}: (.*{reason}.*)", since=start)
    assert says_why(final.get("ErrorComment"), logged.group(1)), (final.get("ErrorComment"), logged.group(1))


ACCEPTED = [
    # (id, model, level, keys, pending status)
    ("key-below-level", SR, "STUDY", {"PatientID": "PID-1", "PatientName": "", "Modality": ""}, FF01),
    ("all-supported-study", SR, "STUDY", {"PatientID": "PID-1", "PatientName": "", "OtherPatientIDs": "",
                                          "NumberOfStudyRelatedInstances": ""}, FF00),
    ("return-only-with-value", SR, "STUDY", {"PatientID": "PID-1", "OtherPatientIDs": "X"}, FF01),
    ("unknown-key", SR, "STUDY", {"PatientID": "PID-1", "RetrieveAETitle": ""}, FF01),
    ("birth-date-range", SR, "STUDY", {"PatientID": "PID-1", "PatientBirthDate": "19000101-19100101"}, FF01),
    ("modality-wildcard", SR, "SERIES", {"StudyInstanceUID": uid("S1"), "Modality": "C*"}, FF01),
    ("id-list", SR, "STUDY", {"PatientID": "PID-1\\PID-2", "AccessionNumber": "ACC-1"}, FF01),
    ("series-in-patient-root", PR, "SERIES", {"PatientID": "PID-1", "StudyInstanceUID": uid("S1")}, FF00),
]


@pytest.mark.parametrize("model,level,keys,pending", [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_pending_status(qr, model, level, keys, pending):
    """QF-13, QF-14, D-15(b): FF01 when an optional key is not supported as used, and that key
    restricts nothing (the birth-date range and the ID list still find PID-1's studies)."""
    responses = scu.find(qr, model, identifier(level, keys))
    assert responses[-1] == (0x0000, None)
    assert responses[:-1], "no match"
    assert {status for status, _ in responses[:-1]} == {pending}
