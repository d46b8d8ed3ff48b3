"""What the archive holds, study by study: `service-tool study list` and `study show` (MG-01).

The filters match as C-FIND does (query/identifier.filters, query/matching): `--name` and
`--patient-id` take wildcards, `--date` a DICOM date or range. `--received` is a range of
dates on which any of the study's instances was received, in UTC as the index keeps them.
Studies come out as plain dicts (JSON for the control socket and `--json`); times are ISO 8601
with their offset.
"""

from __future__ import annotations

import datetime

from peewee import JOIN, fn

from appliance.errors import DicomStatusError
from appliance.query import matching
from appliance.query.identifier import filters
from appliance.query.keys import STUDY_ROOT, Level
from appliance.store import dialect
from appliance.store.models import Instance, Patient, Series, Study, StudyEdit, total_size


class BadFilter(ValueError):
    """A filter value the archive cannot match (its text says which and why)."""


class NotFound(LookupError):
    """No such study (or series, or instance, in it)."""


class Ambiguous(LookupError):
    """A Study Instance UID filed under more than one patient, and nothing says which."""


_FILTERS = (("--patient-id", "PatientID"), ("--name", "PatientName"), ("--date", "StudyDate"))


def list_studies(patient_id: str = "", name: str = "", date: str = "", received: str = "") -> list[dict]:
    """Every study matching all the filters given ("" = any), in study date order."""
    conditions = []
    for value, (option, keyword) in zip((patient_id, name, date), _FILTERS):
        if not value:
            continue
        try:
            query = filters({keyword: value}, STUDY_ROOT, Level.STUDY)
        except DicomStatusError as exc:
            raise BadFilter(f"{option}: {exc.why}") from exc
        if query.unsupported:
            raise BadFilter(f"{option}: {'; '.join(query.unsupported)}")
        conditions += query.conditions
    statement = _studies()
    for condition in conditions:
        statement = statement.where(matching.where(condition))
    if received:
        low, high = _received_range(received)
        statement = statement.where(Study.id.in_(
            Series.select(Series.study).join(Instance).where(
                (Instance.received_at >= low) & (Instance.received_at < high))))
    rows = list(statement.order_by(Study.study_date, Study.study_time, Study.id).dicts())
    modalities = _modalities([row["id"] for row in rows])
    return [_study(row, modalities.get(row["id"], [])) for row in rows]


def study_id(study_instance_uid: str, patient_id: str = "") -> int:
    """The row of the study with this UID (of that patient, when given). NotFound when there is
    none, Ambiguous when the UID is filed under several patients (ST-26 `keep`) and no patient
    says which."""
    rows = Study.select(Study.id, Patient.patient_id).join(Patient).where(
        Study.study_instance_uid == study_instance_uid)
    if patient_id:
        rows = rows.where(Patient.patient_id == patient_id)
    found = list(rows.tuples())
    if not found:
        of = f" of patient {patient_id!r}" if patient_id else ""
        raise NotFound(f"no study {study_instance_uid}{of} in the archive")
    if len(found) > 1:
        raise Ambiguous(f"study {study_instance_uid} is filed under {len(found)} patients "
                        f"({', '.join(repr(p) for _, p in found)}; storage_scp.hierarchy_conflict keep): "
                        f"say which with --patient-id")
    return found[0][0]


def show_study(study_instance_uid: str, patient_id: str = "") -> dict:
    """One study with its series and its edit history; NotFound when the index has no such study."""
    row = _studies().where(Study.id == study_id(study_instance_uid, patient_id)).dicts().first()
    series = (Series.select(Series.series_instance_uid, Series.series_number, Series.modality,
                            Series.series_description, fn.COUNT(Instance.id).alias("instances"),
                            total_size().alias("bytes"),
                            fn.MIN(Instance.received_at).alias("first_received"),
                            fn.MAX(Instance.received_at).alias("last_received"))
              .join(Instance, JOIN.LEFT_OUTER).where(Series.study == row["id"])
              .group_by(Series.id).order_by(Series.id).dicts())
    edits = (StudyEdit.select(StudyEdit.edited_at, StudyEdit.keyword, StudyEdit.old_value, StudyEdit.new_value,
                              StudyEdit.operator)
             .where(StudyEdit.study == row["id"]).order_by(StudyEdit.id).dicts())
    study = _study(row, sorted({s["modality"] for s in series if s["modality"]}))
    study["series"] = [{**s, "first_received": _iso(s["first_received"]), "last_received": _iso(s["last_received"])}
                       for s in series]
    study["edits"] = [{**e, "edited_at": _iso(e["edited_at"])} for e in edits]
    return study


def _studies():
    """Study and patient columns with the counts of what the study holds."""
    return (Study.select(Study.id, Study.study_instance_uid, Study.study_date, Study.study_time,
                         Study.accession_number, Study.study_description, Study.referring_physician,
                         Patient.patient_id, Patient.last_name, Patient.first_name, Patient.birth_date, Patient.sex,
                         fn.COUNT(Series.id.distinct()).alias("series_count"),
                         fn.COUNT(Instance.id).alias("instances"),
                         total_size().alias("bytes"),
                         fn.MIN(Instance.received_at).alias("first_received"),
                         fn.MAX(Instance.received_at).alias("last_received"))
            .join(Patient).switch(Study).join(Series, JOIN.LEFT_OUTER).join(Instance, JOIN.LEFT_OUTER)
            .group_by(Study.id, Patient.id))


def _modalities(study_ids: list[int]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    if study_ids:
        for study_id, modality in (Series.select(Series.study, Series.modality).distinct()
                                   .where(Series.study.in_(study_ids), Series.modality != "")
                                   .order_by(Series.modality).tuples()):
            found.setdefault(study_id, []).append(modality)
    return found


def _study(row: dict, modalities: list[str]) -> dict:
    first = row["first_name"]
    return {
        "study_instance_uid": row["study_instance_uid"],
        "patient_id": row["patient_id"],
        "patient_name": f"{row['last_name']}^{first}" if first else row["last_name"],
        "patient_birth_date": row["birth_date"],
        "patient_sex": row["sex"],
        "study_date": row["study_date"],
        "study_time": row["study_time"],
        "accession_number": row["accession_number"],
        "study_description": row["study_description"],
        "referring_physician": row["referring_physician"],
        "modalities": modalities,
        "series_count": row["series_count"],
        "instances": row["instances"],
        "bytes": row["bytes"],
        "first_received": _iso(row["first_received"]),
        "last_received": _iso(row["last_received"]),
    }


def _received_range(text: str) -> tuple[str, str]:
    """`YYYYMMDD`, `YYYYMMDD-YYYYMMDD`, `YYYYMMDD-` or `-YYYYMMDD` as bounds [low, high) on the
    received_at column: peewee keeps it as 'YYYY-MM-DD HH:MM:SS[.ffffff]+00:00' text, in UTC."""
    parts = text.split("-")
    if len(parts) > 2 or not any(parts):
        raise BadFilter(f"--received {text!r} is not a date or a range of dates (YYYYMMDD-YYYYMMDD)")
    try:
        days = [datetime.datetime.strptime(p, "%Y%m%d").date() if p else None for p in parts]
    except ValueError:
        raise BadFilter(f"--received {text!r} is not a date or a range of dates (YYYYMMDD-YYYYMMDD)") from None
    low, high = (days[0], days[0]) if len(days) == 1 else days
    return (low.isoformat() if low else "",
            (high + datetime.timedelta(days=1)).isoformat() if high else "9999-12-31")


def _iso(value) -> str | None:
    """An index time as ISO 8601 with its UTC offset (`dialect.as_utc`: whichever form the
    backend hands back)."""
    return None if value is None else dialect.as_utc(value).isoformat()
