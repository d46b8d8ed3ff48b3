"""C-FIND matching rules (QF-07..QF-12, CS-02, D-15), table-driven, against the real daemon.

Each case is a query and the exact set of entities it must find in tests/support/query_archive.py's
archive: studies, series and instances by label (S1, S1.2, S1.2.1), patients by Patient ID.
"""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

import query_archive
import scu
from datasets import PATIENT_ROOT_FIND as PR
from datasets import STUDY_ROOT_FIND as SR
from query_archive import uid

pytestmark = pytest.mark.index_backends  # C-FIND on SQLite and on PostgreSQL (IX-01)

UNIQUE = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
          "IMAGE": "SOPInstanceUID"}
ALL_STUDIES = set(query_archive.STUDIES)

CASES = [
    # (id, model, level, keys, expected)
    # Single value and wildcard matching, case-sensitive for LO/SH/CS (QF-08)
    ("id-exact", SR, "STUDY", {"PatientID": "PID-1"}, {"S1", "S2"}),
    ("id-star", SR, "STUDY", {"PatientID": "PID*"}, ALL_STUDIES),
    ("id-question", SR, "STUDY", {"PatientID": "PID-?"}, ALL_STUDIES - {"S6"}),
    ("id-percent-literal", SR, "STUDY", {"PatientID": "PID%5"}, {"S6"}),
    ("id-underscore-literal", SR, "STUDY", {"PatientID": "PID_1"}, set()),
    ("accession-percent", SR, "STUDY", {"AccessionNumber": "ACC%2"}, {"S2"}),
    ("accession-underscore", SR, "STUDY", {"AccessionNumber": "ACC_3"}, {"S3"}),
    ("accession-question", SR, "STUDY", {"AccessionNumber": "ACC?3"}, {"S3"}),
    ("accession-brackets", SR, "STUDY", {"AccessionNumber": "ACC[4]"}, {"S4"}),
    ("accession-bracket-wildcard", SR, "STUDY", {"AccessionNumber": "ACC[*"}, {"S4"}),
    ("accession-case-sensitive", SR, "STUDY", {"AccessionNumber": "acc-1"}, set()),
    ("description-exact", SR, "STUDY", {"StudyDescription": "CT CHEST"}, {"S1", "S5"}),
    ("description-case-sensitive", SR, "STUDY", {"StudyDescription": "ct*"}, {"S3"}),
    ("description-suffix", SR, "STUDY", {"StudyDescription": "*CHEST"}, {"S1", "S5"}),
    ("description-latin1", SR, "STUDY", {"StudyDescription": "Lun*"}, {"S4"}),
    ("description-utf8", SR, "STUDY", {"StudyDescription": "Θώ*", "SpecificCharacterSet": "ISO_IR 192"}, {"S7"}),
    ("study-id-one-char", SR, "STUDY", {"StudyID": "?"}, ALL_STUDIES),
    ("study-id-exact", SR, "STUDY", {"StudyID": "4"}, {"S4"}),
    # PN: case-insensitive (QF-08), last^first as indexed (EL-01, EL-03), Latin-1 (CS-02)
    ("name-prefix", SR, "STUDY", {"PatientName": "DOE*"}, {"S1", "S2", "S3", "S5"}),
    ("name-exact-other-case", SR, "STUDY", {"PatientName": "doe^john"}, {"S1", "S2"}),
    ("name-last-only", SR, "STUDY", {"PatientName": "Doering"}, {"S5"}),
    ("name-trailing-caret", SR, "STUDY", {"PatientName": "DOERING^"}, {"S5"}),
    ("name-last-only-not-prefix", SR, "STUDY", {"PatientName": "DOE"}, set()),
    ("name-any-first", SR, "STUDY", {"PatientName": "DOE^*"}, {"S1", "S2", "S3"}),
    ("name-any-first-none-indexed", SR, "STUDY", {"PatientName": "Doering^*"}, {"S5"}),
    ("name-suffix", SR, "STUDY", {"PatientName": "*JOHN"}, {"S1", "S2"}),
    ("name-question", SR, "STUDY", {"PatientName": "D?E^J*"}, {"S1", "S2", "S3"}),
    ("name-middle-ignored", SR, "STUDY", {"PatientName": "Doe^John^Quincy"}, {"S1", "S2"}),
    ("name-latin1-prefix", SR, "STUDY", {"PatientName": "Müller*", "SpecificCharacterSet": "ISO_IR 100"}, {"S4"}),
    ("name-latin1-upper", SR, "STUDY", {"PatientName": "MÜLLER^HANS", "SpecificCharacterSet": "ISO_IR 100"}, {"S4"}),
    ("name-utf8", SR, "STUDY", {"PatientName": "παπαδόπουλος*", "SpecificCharacterSet": "ISO_IR 192"},
     {"S7"}),
    ("name-percent-literal", SR, "STUDY", {"PatientName": "Per%cent*"}, {"S6"}),
    ("name-underscore-literal", SR, "STUDY", {"PatientName": "Per_cent*"}, set()),
    ("referring-case", SR, "STUDY", {"ReferringPhysicianName": "SMITH^ANNA"}, {"S1", "S3"}),
    ("referring-latin1", SR, "STUDY", {"ReferringPhysicianName": "meier^jü*",
                                       "SpecificCharacterSet": "ISO_IR 100"}, {"S4"}),
    # Universal matching (QF-10): empty and "*" restrict nothing; another key narrows
    ("universal-star-and-key", SR, "STUDY", {"PatientName": "*", "AccessionNumber": "ACC-1"}, {"S1"}),
    # Dates and times: single value, ranges open on either side (QF-11, D-15)
    ("date-single", SR, "STUDY", {"StudyDate": "20240101"}, {"S1", "S5"}),
    ("date-closed", SR, "STUDY", {"StudyDate": "20240101-20240315"}, {"S1", "S2", "S5"}),
    ("date-open-start", SR, "STUDY", {"StudyDate": "-20221231"}, {"S4", "S6", "S7"}),
    ("date-open-end", SR, "STUDY", {"StudyDate": "20240102-"}, {"S2"}),
    ("date-and-name", SR, "STUDY", {"StudyDate": "20240101", "PatientName": "DOE*"}, {"S1", "S5"}),
    ("time-single-is-range", SR, "STUDY", {"StudyTime": "1430"}, {"S2"}),
    ("time-open-start", SR, "STUDY", {"StudyTime": "-1030"}, {"S1", "S3", "S5"}),
    ("time-open-end", SR, "STUDY", {"StudyTime": "103000-"}, {"S2", "S3", "S4", "S6", "S7"}),
    ("time-closed", SR, "STUDY", {"StudyTime": "1200-1200"}, {"S6", "S7"}),
    ("birth-date-and-id", SR, "STUDY", {"PatientID": "PID*", "PatientBirthDate": "19700101"}, {"S1", "S2"}),
    ("sex-and-id", SR, "STUDY", {"PatientID": "PID*", "PatientSex": "F"}, {"S3"}),
    # UID lists (QF-12), one and many
    ("uid-one", SR, "STUDY", {"StudyInstanceUID": uid("S2")}, {"S2"}),
    ("uid-list", SR, "STUDY", {"StudyInstanceUID": f"{uid('S1')}\\{uid('S3')}\\{uid('S9')}"}, {"S1", "S3"}),
    # Series and image levels (QF-02, QF-03)
    ("series-all", SR, "SERIES", {"StudyInstanceUID": uid("S1")}, {"S1.1", "S1.2"}),
    ("series-modality", SR, "SERIES", {"StudyInstanceUID": uid("S2"), "Modality": "MR"}, {"S2.1"}),
    ("series-modality-case", SR, "SERIES", {"StudyInstanceUID": uid("S1"), "Modality": "ct"}, set()),
    ("series-number", SR, "SERIES", {"StudyInstanceUID": uid("S1"), "SeriesNumber": "2"}, {"S1.2"}),
    ("series-number-wildcard", SR, "SERIES", {"StudyInstanceUID": uid("S3"), "SeriesNumber": "1?"}, {"S3.1"}),
    ("series-uid-list", SR, "SERIES", {"StudyInstanceUID": uid("S1"),
                                       "SeriesInstanceUID": f"{uid('S1.2')}\\{uid('S2.1')}"}, {"S1.2"}),
    ("image-all", SR, "IMAGE", {"StudyInstanceUID": uid("S1"), "SeriesInstanceUID": uid("S1.1")},
     {"S1.1.1", "S1.1.2"}),
    ("image-number", SR, "IMAGE", {"StudyInstanceUID": uid("S1"), "SeriesInstanceUID": uid("S1.1"),
                                   "InstanceNumber": "2"}, {"S1.1.2"}),
    ("image-number-wildcard", SR, "IMAGE", {"StudyInstanceUID": uid("S2"), "SeriesInstanceUID": uid("S2.1"),
                                            "InstanceNumber": "1*"}, {"S2.1.1"}),
    ("image-uid-list", SR, "IMAGE", {"StudyInstanceUID": uid("S1"), "SeriesInstanceUID": uid("S1.1"),
                                     "SOPInstanceUID": f"{uid('S1.1.1')}\\{uid('S1.2.1')}"}, {"S1.1.1"}),
    # Patient Root: every level; the hierarchy is followed, not just the lowest key
    ("pr-patient-name", PR, "PATIENT", {"PatientName": "DOE*"}, {"PID-1", "PID-2", "PID-4"}),
    ("pr-patient-id", PR, "PATIENT", {"PatientID": "PID%5"}, {"PID%5"}),
    ("pr-study", PR, "STUDY", {"PatientID": "PID-1"}, {"S1", "S2"}),
    ("pr-study-date", PR, "STUDY", {"PatientID": "PID-1", "StudyDate": "20240315"}, {"S2"}),
    ("pr-series", PR, "SERIES", {"PatientID": "PID-1", "StudyInstanceUID": uid("S1")}, {"S1.1", "S1.2"}),
    ("pr-series-other-patient", PR, "SERIES", {"PatientID": "PID-2", "StudyInstanceUID": uid("S1")}, set()),
    ("pr-image", PR, "IMAGE", {"PatientID": "PID-1", "StudyInstanceUID": uid("S1"),
                               "SeriesInstanceUID": uid("S1.2")}, {"S1.2.1"}),
]


def identifier(level: str, keys: dict) -> Dataset:
    """`keys` at `level`, with the level's unique key as a return key when not given."""
    ds = scu.identifier({"QueryRetrieveLevel": level, **keys})
    if UNIQUE[level] not in ds:
        setattr(ds, UNIQUE[level], "")
    return ds


def found(responses: list, level: str) -> set[str]:
    labels = set()
    for status, ds in responses[:-1]:
        assert status in (0xFF00, 0xFF01), f"pending status 0x{status:04X}"
        value = str(getattr(ds, UNIQUE[level]))
        labels.add(value if level == "PATIENT" else query_archive.label(value))
    return labels


@pytest.mark.parametrize("model,level,keys,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_matching(qr, model, level, keys, expected):
    """QF-07..QF-12: exactly the expected entities, then a final 0000 (QF-04)."""
    responses = scu.find(qr, model, identifier(level, keys))
    assert responses[-1] == (0x0000, None)
    assert found(responses, level) == expected


@pytest.mark.parametrize("pattern", ["\U0010ffff*", "\ud7ff*"])
def test_prefix_at_the_end_of_unicode(qr, pattern):
    """A wildcard whose literal prefix ends in U+D7FF or U+10FFFF still gets an answer (the
    index range above it skips the surrogates or is left open), not a failure."""
    keys = {"PatientName": pattern, "SpecificCharacterSet": "ISO_IR 192"}
    responses = scu.find(qr, SR, identifier("STUDY", keys))
    assert responses == [(0x0000, None)]
