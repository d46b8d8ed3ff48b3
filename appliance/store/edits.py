"""`service-tool study edit`: demographics corrected in the index, with a history (MG-03, TL-08, EL-15).

Only the index changes: C-FIND answers from it at once, and every later export writes the
index's values into the outgoing copy (store/export.py, D-9); stored files are never touched.
Patient Name, Birth Date and Sex belong to the patient, so they change for every study of
that patient; a new Patient ID moves the study to the patient with that ID (made from the old
one's demographics when there is none yet), and a patient left without studies goes.
"""

from __future__ import annotations

import datetime
import logging

from appliance.query.identifier import is_date
from appliance.store import coercion
from appliance.store.catalog import study_id
from appliance.store.db import Index
from appliance.store.models import Patient, Study, StudyEdit

log = logging.getLogger("appliance.store")

# keyword -> VR; the first four are the patient's (all their studies), the rest the study's.
EDITABLE = {"PatientName": "PN", "PatientID": "LO", "PatientBirthDate": "DA", "PatientSex": "CS",
            "AccessionNumber": "SH", "StudyDescription": "LO", "ReferringPhysicianName": "PN"}
_MAX_LENGTH = {"LO": 64, "SH": 16}


class BadEdit(ValueError):
    """A keyword that cannot be edited, or a value its VR does not allow (the text says which)."""


def validate(keyword: str, value: str) -> str:
    """The value as the index keeps it, checked as an incoming one would be (VR, length,
    characters); BadEdit names the keyword and the rule."""
    vr = EDITABLE.get(keyword)
    if vr is None:
        raise BadEdit(f"{keyword} cannot be edited; editable: {', '.join(EDITABLE)}")
    value = value.strip(" ")
    if any(ord(c) < 0x20 or c == "\x7f" for c in value) or "\\" in value:
        raise BadEdit(f"{keyword}: one value, without control characters or backslashes")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadEdit(f"{keyword}: {value!r} is not valid text") from None
    if vr == "PN":
        if "=" in value:
            raise BadEdit(f"{keyword}: only the alphabetic form is kept (no '=' component groups)")
        components = value.split("^")
        if len(components) > 2:
            raise BadEdit(f"{keyword}: the index keeps family and given name only (EL-01): FAMILY^GIVEN")
        if any(len(c) > coercion.NAME_PART_MAX for c in components):
            raise BadEdit(f"{keyword}: a name component longer than {coercion.NAME_PART_MAX} characters")
    elif vr == "DA":
        if value and not is_date(value):
            raise BadEdit(f"{keyword}: {value!r} is not a date (YYYYMMDD)")
    elif vr == "CS":  # Patient's Sex, as EL-09 keeps it: M, F, O, or U for unknown (empty)
        if value.upper() not in ("M", "F", "O", "U", ""):
            raise BadEdit(f"{keyword}: M, F, O or empty (unknown), not {value!r}")
        value = value.upper() or "U"
    elif len(value) > _MAX_LENGTH[vr]:
        raise BadEdit(f"{keyword}: {len(value)} characters, more than the {_MAX_LENGTH[vr]} of {vr}")
    if keyword == "PatientID" and not value:
        raise BadEdit("PatientID: a study needs a Patient ID")
    return value


def edit(index: Index, study_instance_uid: str, changes: dict[str, str], operator: str = "",
         forget_cached_rows=lambda: None, patient_id: str = "") -> dict:
    """Apply `changes` (keyword -> value, validated here) to the study (of `patient_id`, when
    its UID is filed under several patients); what changed, as {"changes": [{keyword,
    old_value, new_value}], "patient_id", "other_studies"}."""
    values = {keyword: validate(keyword, value) for keyword, value in changes.items()}
    now = datetime.datetime.now(datetime.timezone.utc)
    with index.write():
        study = Study.get_by_id(study_id(study_instance_uid, patient_id))
        done = []
        if "PatientID" in values and values["PatientID"] != study.patient.patient_id:
            done.append(("PatientID", study.patient.patient_id, values["PatientID"]))
            _move(study, values["PatientID"])
        patient = Patient.get_by_id(study.patient_id)
        for keyword in EDITABLE:
            old = _current(keyword, patient, study)
            if keyword != "PatientID" and keyword in values and values[keyword] != old:
                done.append((keyword, old, values[keyword]))
                _set(keyword, values[keyword], patient, study)
        patient.save()
        study.save()
        for keyword, old, new in done:
            StudyEdit.create(study=study, edited_at=now, keyword=keyword, old_value=old, new_value=new,
                             operator=operator)
        index.rows_changed()  # other boxes sharing the index forget theirs (IX-02)
        forget_cached_rows()
        other_studies = Study.select().where(Study.patient == patient.id, Study.id != study.id).count()
    return {"study_instance_uid": study_instance_uid, "patient_id": patient.patient_id,
            "patient_name": _current("PatientName", patient, study), "other_studies": other_studies,
            "changes": [{"keyword": k, "old_value": old, "new_value": new} for k, old, new in done]}


def _move(study: Study, patient_id: str) -> None:
    """The study goes to the patient with `patient_id`, made from its current patient's
    demographics if there is none; the patient it leaves goes if it has no study left."""
    old = study.patient
    target = Patient.get_or_none(Patient.patient_id == patient_id)
    if target is not None and Study.select().where(
            Study.patient == target, Study.study_instance_uid == study.study_instance_uid).exists():
        raise BadEdit(f"PatientID: patient {patient_id!r} has a study with this UID already (filed apart under "
                      f"storage_scp.hierarchy_conflict keep); delete one of the two first")
    if target is None:
        target = Patient.create(
            patient_id=patient_id, original_patient_id=patient_id, last_name=old.last_name,
            first_name=old.first_name, name_folded=old.name_folded, birth_date=old.birth_date, sex=old.sex,
            other_patient_ids=old.other_patient_ids, other_patient_names=old.other_patient_names)
    study.patient = target
    study.save()
    if not Study.select().where(Study.patient == old.id).exists():
        old.delete_instance()


def _current(keyword: str, patient: Patient, study: Study) -> str:
    return {
        "PatientID": lambda: patient.patient_id,
        "PatientName": lambda: f"{patient.last_name}^{patient.first_name}" if patient.first_name
        else patient.last_name,
        "PatientBirthDate": lambda: patient.birth_date,
        "PatientSex": lambda: patient.sex,
        "AccessionNumber": lambda: study.accession_number,
        "StudyDescription": lambda: study.study_description,
        "ReferringPhysicianName": lambda: study.referring_physician,
    }[keyword]()


def _set(keyword: str, value: str, patient: Patient, study: Study) -> None:
    if keyword == "PatientName":
        patient.last_name, patient.first_name = coercion.split_name(value)
        patient.name_folded = coercion.fold_name(patient.last_name, patient.first_name)
    elif keyword == "PatientBirthDate":
        patient.birth_date = value
    elif keyword == "PatientSex":
        patient.sex = value
    elif keyword == "AccessionNumber":
        study.accession_number = value
    elif keyword == "StudyDescription":
        study.study_description = value
    elif keyword == "ReferringPhysicianName":
        study.referring_physician = value
        study.referring_physician_folded = coercion.pn_search_key(value)
