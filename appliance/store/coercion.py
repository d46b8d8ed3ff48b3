"""Annex F.8.1.1 rules: from a received header to the values the index keeps (EL-01..EL-12).

Coercion changes index values only; the stored file keeps the received bytes (EL-00, D-9).
Patient ID coercion (EL-06) needs the index and lives in `ingest`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from appliance.config.model import DefaultValues
from appliance.store.header import Header

NAME_PART_MAX = 64  # EL-01


@dataclass
class IndexValues:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    last_name: str
    first_name: str
    birth_date: str
    sex: str
    other_patient_ids: str
    other_patient_names: str
    study_date: str
    study_time: str
    accession_number: str
    study_id: str
    referring_physician: str
    study_description: str
    modality: str
    series_number: str
    series_description: str
    operators_name: str
    body_part: str
    instance_number: str
    specific_character_set: str
    exam_type: str = ""
    coerced: list[str] = field(default_factory=list)  # names of elements given a new value


def split_name(name: str) -> tuple[str, str]:
    """EL-03..EL-05: 'last^first', 'last, first', or the whole string as last name."""
    alphabetic = name.split("=", 1)[0]
    if "^" in alphabetic:
        parts = alphabetic.split("^")
        last, first = parts[0], parts[1] if len(parts) > 1 else ""
    elif "," in alphabetic:
        last, first = alphabetic.split(",", 1)
    else:
        last, first = alphabetic, ""
    return last.strip()[:NAME_PART_MAX], first.strip()[:NAME_PART_MAX]


def pn_search_key(value: str) -> str:
    """The form in which PN values are compared, case-insensitively (QF-08): the alphabetic
    component group, trailing empty components dropped, casefolded. Part of the schema
    (db.NORMALISER_VERSION): the index's *_folded columns hold it."""
    return value.split("=", 1)[0].rstrip("^ ").casefold()


def fold_name(last: str, first: str) -> str:
    """The indexed Patient's Name ("last^first", or "last") in its search form."""
    return pn_search_key(f"{last}^{first}")


def normalise_sex(value: str) -> str:
    """EL-09: M/F/O from the first character, anything else U."""
    first = value[:1].upper()
    return first if first in ("M", "F", "O") else "U"


def index_values(header: Header, defaults: DefaultValues, exam_types: tuple[str, ...]) -> IndexValues:
    text = header.text
    coerced: list[str] = []

    def with_default(tag: int, keyword: str, default: str) -> str:
        value = text(tag)
        if not value and default:
            coerced.append(keyword)
            return default
        return value

    name = with_default(0x00100010, "PatientName", defaults.patient_name)
    last, first = split_name(name)
    modality = with_default(0x00080060, "Modality", defaults.modality)
    values = IndexValues(
        sop_class_uid=text(0x00080016),
        sop_instance_uid=text(0x00080018),
        study_instance_uid=text(0x0020000D),
        series_instance_uid=text(0x0020000E),
        patient_id=with_default(0x00100020, "PatientID", defaults.patient_id)[:64],
        last_name=last,
        first_name=first,
        birth_date=with_default(0x00100030, "PatientBirthDate", defaults.patient_birth_date),
        sex=normalise_sex(text(0x00100040)),
        other_patient_ids=text(0x00101000),
        other_patient_names=text(0x00101001),
        study_date=with_default(0x00080020, "StudyDate", defaults.study_date),
        study_time=text(0x00080030),
        accession_number=with_default(0x00080050, "AccessionNumber", defaults.accession_number),
        study_id=text(0x00200010),
        referring_physician=text(0x00080090),
        study_description=text(0x00081030),
        modality=modality,
        series_number=text(0x00200011),
        series_description=text(0x0008103E),
        operators_name=text(0x00081070),
        body_part=text(0x00180015),
        instance_number=text(0x00200013),
        specific_character_set=text(0x00080005, ascii_only=True),
        coerced=coerced,
    )
    values.exam_type = _exam_type(values, text(0x00080008), exam_types)
    return values


def _exam_type(values: IndexValues, image_type: str, exam_types: tuple[str, ...]) -> str:
    """EL-12: the first of these values found in the configured exam-type list."""
    if not exam_types:
        return ""
    image_type_parts = image_type.split("\\")
    candidates = [values.study_description, values.series_description, values.body_part,
                  image_type_parts[2] if len(image_type_parts) > 2 else ""]
    wanted = set(exam_types)
    return next((c for c in candidates if c and c in wanted), "")
