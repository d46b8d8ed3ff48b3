"""A C-MOVE identifier, validated into a `Retrieve`, and the instances it names (QM-05, QM-06).

A retrieve identifier holds the Query/Retrieve Level and unique keys only (PS3.4 C.4.2.2.1):
a single value for each level above the requested one, one value or a UID list at the
requested level (a list only at STUDY, SERIES or IMAGE, QM-05). Anything else wrong is A900
(QM-06). Other keys (a viewer's leftover Patient's Name) are not used and named in the log;
a unique key below the requested level with a value is A900, since it would narrow what the
requester asked for in a way the level says it did not mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from appliance.codes import status
from appliance.codes.uids import is_valid_uid
from appliance.errors import DicomStatusError
from appliance.query.identifier import elements_of, level_of, text_of
from appliance.query.keys import QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET, UNIQUE, Level, Model
from appliance.store import dialect
from appliance.store.models import Instance, Patient, Series, Study

_UNIQUE_BY_TAG = {key.tag: level for level, key in UNIQUE.items()}


@dataclass
class Retrieve:
    model: Model
    level: Level
    values: dict[Level, tuple[str, ...]] = field(default_factory=dict)  # unique key values per level
    ignored: list[str] = field(default_factory=list)  # keys not used, for the log

    def describe(self) -> str:
        """The level and how many values its unique key carries, for the service log."""
        count = len(self.values[self.level])
        return f"{self.model.name} {self.level.name} ({count} {UNIQUE[self.level].keyword}{'s' if count > 1 else ''})"


@dataclass(frozen=True)
class Item:
    """One instance to export, with the index values an export overlays (SU-14)."""

    sop_instance_uid: str  # as indexed
    file_sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str  # relative to the store
    size: int
    index_values: dict[str, str]  # coercion.IndexValues field -> value in the index
    study_instance_uid: str = ""  # the study it belongs to, for the audit trail (AU-01)


def parse(identifier: Dataset, model: Model) -> Retrieve:
    """Validate `identifier` for `model`; raises DicomStatusError(A900)."""
    elements = elements_of(identifier)
    level = next((e for e in elements if e.tag == QUERY_RETRIEVE_LEVEL), None)
    retrieve = Retrieve(model, level_of(text_of(level) if level is not None else "", model))
    for element in elements:
        tag = int(element.tag)
        if tag in (QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET):
            continue
        key_level = _UNIQUE_BY_TAG.get(tag)
        if key_level is None or key_level not in model.levels:
            retrieve.ignored.append(element.keyword or str(element.tag))
            continue
        text = text_of(element)
        if key_level > retrieve.level:
            if text:
                raise _mismatch(f"{element.keyword} has a value below the {retrieve.level.name} level")
            continue
        retrieve.values[key_level] = _values(key_level, text, retrieve.level)
    for needed in model.levels[:model.levels.index(retrieve.level) + 1]:
        if needed not in retrieve.values:
            raise _mismatch(f"a {retrieve.level.name} retrieve needs {UNIQUE[needed].keyword} ({model.name})")
    return retrieve


def _values(level: Level, text: str, requested: Level) -> tuple[str, ...]:
    keyword = UNIQUE[level].keyword
    values = tuple(text.split("\\")) if text else ()
    if not values or not all(values):
        raise _mismatch(f"{keyword} has no value")
    if len(values) > 1 and (level != requested or level is Level.PATIENT):
        raise _mismatch(f"{keyword} holds a list of {len(values)} values; lists are accepted only for the "
                        f"unique key of the retrieve level, below PATIENT (QM-05)")
    if level is Level.PATIENT:
        if any(c in values[0] for c in "*?"):
            raise _mismatch(f"{keyword} {values[0]!r} holds a wildcard")
        return values
    bad = next((uid for uid in values if not is_valid_uid(uid)), None)
    if bad is not None:
        raise _mismatch(f"{keyword} {bad!r} is not a valid UID")
    return values


def _mismatch(why: str) -> DicomStatusError:
    return DicomStatusError(status.IDENTIFIER_MISMATCH, why)


# The index values an export compares with the file, by coercion.IndexValues field (SU-14).
EXPORTED_COLUMNS = {
    "patient_id": Patient.patient_id, "last_name": Patient.last_name, "first_name": Patient.first_name,
    "birth_date": Patient.birth_date, "sex": Patient.sex, "other_patient_ids": Patient.other_patient_ids,
    "other_patient_names": Patient.other_patient_names,
    "study_date": Study.study_date, "study_time": Study.study_time, "accession_number": Study.accession_number,
    "study_id": Study.study_id, "referring_physician": Study.referring_physician,
    "study_description": Study.study_description,
    "modality": Series.modality, "series_number": Series.series_number,
    "series_description": Series.series_description, "operators_name": Series.operators_name,
    "body_part": Series.body_part,
    "sop_instance_uid": Instance.sop_instance_uid,
}
_ITEM_COLUMNS = (Instance.sop_instance_uid, Instance.file_sop_instance_uid, Instance.sop_class_uid,
                 Instance.transfer_syntax_uid, Instance.path, Instance.size)
_KEY_COLUMNS = {Level.PATIENT: Patient.patient_id, Level.STUDY: Study.study_instance_uid,
                Level.SERIES: Series.series_instance_uid, Level.IMAGE: Instance.sop_instance_uid}


def instances(retrieve: Retrieve) -> list[Item]:
    """Every matching instance, in study, series and instance-number order (one statement)."""
    statement = (Instance.select(*_ITEM_COLUMNS, *EXPORTED_COLUMNS.values(), Study.study_instance_uid)
                 .join_from(Instance, Series).join_from(Series, Study).join_from(Study, Patient))
    for level, values in retrieve.values.items():
        column = _KEY_COLUMNS[level]
        statement = statement.where(column == values[0] if len(values) == 1 else column.in_(list(values)))
    # Instance Number is IS text; a viewer wants images in numeric order, unnumbered ones last.
    statement = statement.order_by(Study.id, Series.id, dialect.current().numeric_order(Instance.instance_number),
                                   Instance.id)
    names = list(EXPORTED_COLUMNS)
    items = []
    for row in statement.tuples().iterator():
        items.append(Item(*row[:len(_ITEM_COLUMNS)], dict(zip(names, row[len(_ITEM_COLUMNS):-1])), row[-1]))
    return items
