"""No C-FIND scans a table when its matching key has an index (issue 4): the database's own
query plan for the statement appliance.query.matching builds, on a real SQLite index file and
on a real PostgreSQL database (IX-01)."""

from __future__ import annotations

import pytest

import scu
from appliance.query import identifier, matching
from appliance.query.keys import PATIENT_ROOT, STUDY_ROOT
from appliance.store import dialect
from appliance.store.db import open_index

RETURN_KEYS = {"PatientName": "", "PatientID": "", "StudyDate": "", "StudyInstanceUID": "",
               "NumberOfStudyRelatedSeries": "", "NumberOfStudyRelatedInstances": ""}

ANCHORED = [
    (STUDY_ROOT, "STUDY", {"PatientID": "PID-1"}),
    (STUDY_ROOT, "STUDY", {"PatientID": "PID*"}),
    (STUDY_ROOT, "STUDY", {"PatientName": "DOE*"}),
    (STUDY_ROOT, "STUDY", {"PatientName": "DOE^*"}),
    (STUDY_ROOT, "STUDY", {"PatientName": "Müller^Hans"}),
    (STUDY_ROOT, "STUDY", {"StudyDate": "20200101-20201231"}),
    (STUDY_ROOT, "STUDY", {"StudyDate": "-20201231"}),
    (STUDY_ROOT, "STUDY", {"StudyTime": "0800-1000"}),
    (STUDY_ROOT, "STUDY", {"AccessionNumber": "ACC-1"}),
    (STUDY_ROOT, "STUDY", {"AccessionNumber": "ACC*"}),
    (STUDY_ROOT, "STUDY", {"StudyID": "12"}),
    (STUDY_ROOT, "STUDY", {"StudyInstanceUID": "1.2.3"}),
    (STUDY_ROOT, "STUDY", {"StudyInstanceUID": "1.2.3\\1.2.4\\1.2.5"}),
    (STUDY_ROOT, "STUDY", {"ReferringPhysicianName": "SMITH*"}),
    (STUDY_ROOT, "STUDY", {"StudyDescription": "CT*"}),
    (STUDY_ROOT, "SERIES", {"StudyInstanceUID": "1.2.3", "Modality": "CT", "SeriesNumber": "1*"}),
    (STUDY_ROOT, "IMAGE", {"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4", "InstanceNumber": "7"}),
    (PATIENT_ROOT, "PATIENT", {"PatientName": "DOE*", "NumberOfPatientRelatedInstances": ""}),
    (PATIENT_ROOT, "PATIENT", {"PatientID": "PID-1", "PatientBirthDate": "19700101"}),
    (PATIENT_ROOT, "STUDY", {"PatientID": "PID-1"}),
    (PATIENT_ROOT, "IMAGE", {"PatientID": "PID-1", "StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4",
                             "SOPInstanceUID": "1.2.3.4.5\\1.2.3.4.6"}),
]


pytestmark = pytest.mark.index_backends


@pytest.fixture(scope="module")
def index(tmp_path_factory, new_index_url):
    index = open_index(new_index_url(), tmp_path_factory.mktemp("plans"))
    yield index
    index.close()


@pytest.mark.parametrize("model,level,keys", ANCHORED, ids=[f"{m.name}-{lv}-{'-'.join(k)}" for m, lv, k in ANCHORED])
def test_indexed_keys_are_searched_not_scanned(index, model, level, keys):
    query = identifier.parse(scu.identifier({"QueryRetrieveLevel": level, **RETURN_KEYS, **keys}), model)
    plan = matching.plan(query)
    assert not dialect.current().scans(plan), "\n".join(plan)
    assert dialect.current().searches(plan), "\n".join(plan)


def test_a_leading_wildcard_does_scan(index):
    """The other side of the rule, and proof that the check above can fail: no index helps
    `*CHEST`, so the database reads the table (bounded by the study count, streamed)."""
    query = identifier.parse(scu.identifier({"QueryRetrieveLevel": "STUDY", "StudyDescription": "*CHEST"}), STUDY_ROOT)
    assert dialect.current().scans(matching.plan(query))
