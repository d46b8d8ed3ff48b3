"""The C-FIND keys QUERY-RETRIEVE-SCP supports (QF-07) and the index columns behind them.

Levels are numbered top-down in the Patient Root model. In the Study Root model the patient
keys are study-level keys (seed table "Study Root C-FIND SCP Supported Elements"); `Model`
maps between the two, so one key table serves both (QF-07: identical for both models).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Callable

from peewee import Case, Node, fn

from appliance.store.coercion import pn_search_key
from appliance.store.models import Instance, Patient, Series, Study


class Level(IntEnum):
    PATIENT = 0
    STUDY = 1
    SERIES = 2
    IMAGE = 3


@dataclass(frozen=True)
class Model:
    """A query/retrieve information model: its levels, top first."""

    name: str
    levels: tuple[Level, ...]

    def level_of(self, key_level: Level) -> Level:
        """Where a key sits in this model (Study Root has no patient level)."""
        return max(key_level, self.levels[0])


PATIENT_ROOT = Model("Patient Root", (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE))
STUDY_ROOT = Model("Study Root", (Level.STUDY, Level.SERIES, Level.IMAGE))


def _patient_name_search(value: str) -> str:
    """The index keeps only last and first name (EL-01, EL-03): compare those two components."""
    return pn_search_key("^".join(c.strip() for c in value.split("=", 1)[0].split("^")[:2]))


def _as_is(value: str) -> str:
    return value


@dataclass(frozen=True)
class Key:
    keyword: str
    tag: int
    vr: str
    level: Level  # in the Patient Root model
    matching: str  # the seed's matching types (S, *, R, U, L); "" = NONE, return only (QF-13)
    value: Node  # the returned value (QF-06: always from the index)
    search: Node | None = None  # the column compared; None for return-only keys
    search_form: Callable[[str], str] = _as_is  # query value -> the form `search` holds


_patient_name = Case(None, [(Patient.first_name == "", Patient.last_name)],
                     Patient.last_name.concat("^").concat(Patient.first_name))
_patient_sex = Case(None, [(Patient.sex == "U", "")], Patient.sex)  # EL-10: U is never shown

# Correlated counts (Part 4 C.6.1.1; not in the seed's table, asked for by viewers): aliases,
# so that they also work in queries that join the counted table themselves.
_S, _Se, _I = Study.alias(), Series.alias(), Instance.alias()
_patient_studies = _S.select(fn.COUNT(_S.id)).where(_S.patient == Patient.id)
_patient_series = _Se.select(fn.COUNT(_Se.id)).join(_S, on=_Se.study == _S.id).where(_S.patient == Patient.id)
_patient_instances = (_I.select(fn.COUNT(_I.id)).join(_Se, on=_I.series == _Se.id)
                      .join(_S, on=_Se.study == _S.id).where(_S.patient == Patient.id))
_study_series = _Se.select(fn.COUNT(_Se.id)).where(_Se.study == Study.id)
_study_instances = _I.select(fn.COUNT(_I.id)).join(_Se, on=_I.series == _Se.id).where(_Se.study == Study.id)
_series_instances = _I.select(fn.COUNT(_I.id)).where(_I.series == Series.id)

P, S, SE, IM = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE

KEYS = (
    Key("PatientName", 0x00100010, "PN", P, "S*U", _patient_name, Patient.name_folded, _patient_name_search),
    Key("PatientID", 0x00100020, "LO", P, "S*U", Patient.patient_id, Patient.patient_id),
    Key("PatientBirthDate", 0x00100030, "DA", P, "SU", Patient.birth_date, Patient.birth_date),
    Key("PatientSex", 0x00100040, "CS", P, "SU", _patient_sex, Patient.sex),
    Key("OtherPatientIDs", 0x00101000, "LO", P, "", Patient.other_patient_ids),  # QF-20
    Key("OtherPatientNames", 0x00101001, "PN", P, "", Patient.other_patient_names),
    Key("NumberOfPatientRelatedStudies", 0x00201200, "IS", P, "", _patient_studies),
    Key("NumberOfPatientRelatedSeries", 0x00201202, "IS", P, "", _patient_series),
    Key("NumberOfPatientRelatedInstances", 0x00201204, "IS", P, "", _patient_instances),
    Key("StudyDate", 0x00080020, "DA", S, "SRU", Study.study_date, Study.study_date),
    Key("StudyTime", 0x00080030, "TM", S, "RU", Study.study_time, Study.study_time),
    Key("AccessionNumber", 0x00080050, "SH", S, "S*U", Study.accession_number, Study.accession_number),
    Key("StudyID", 0x00200010, "SH", S, "S*U", Study.study_id, Study.study_id),
    Key("StudyInstanceUID", 0x0020000D, "UI", S, "SUL", Study.study_instance_uid, Study.study_instance_uid),
    Key("ReferringPhysicianName", 0x00080090, "PN", S, "S*U", Study.referring_physician,
        Study.referring_physician_folded, pn_search_key),
    Key("StudyDescription", 0x00081030, "LO", S, "S*U", Study.study_description, Study.study_description),
    Key("NumberOfStudyRelatedSeries", 0x00201206, "IS", S, "", _study_series),
    Key("NumberOfStudyRelatedInstances", 0x00201208, "IS", S, "", _study_instances),
    Key("Modality", 0x00080060, "CS", SE, "SU", Series.modality, Series.modality),
    Key("SeriesNumber", 0x00200011, "IS", SE, "S*U", Series.series_number, Series.series_number),  # D-15(b)
    Key("SeriesInstanceUID", 0x0020000E, "UI", SE, "SUL", Series.series_instance_uid, Series.series_instance_uid),
    Key("OperatorsName", 0x00081070, "PN", SE, "", Series.operators_name),
    Key("NumberOfSeriesRelatedInstances", 0x00201209, "IS", SE, "", _series_instances),
    Key("InstanceNumber", 0x00200013, "IS", IM, "S*U", Instance.instance_number, Instance.instance_number),
    Key("SOPInstanceUID", 0x00080018, "UI", IM, "SUL", Instance.sop_instance_uid, Instance.sop_instance_uid),
)
BY_TAG = {key.tag: key for key in KEYS}

# The unique key of each level (QF-03): below the top level, every higher one is required.
UNIQUE = {P: BY_TAG[0x00100020], S: BY_TAG[0x0020000D], SE: BY_TAG[0x0020000E], IM: BY_TAG[0x00080018]}

# The table each level's rows come from.
TABLES = {P: Patient, S: Study, SE: Series, IM: Instance}

SPECIFIC_CHARACTER_SET = 0x00080005
QUERY_RETRIEVE_LEVEL = 0x00080052
