"""A C-FIND request identifier, validated into a `Query`.

The decisions of the conformance statement, in this order: Query/Retrieve Level (QF-02) and
element values (QF-17) -> A900; hierarchical unique keys (QF-03) -> A900; the
Patient-ID-or-Name rules (QF-15, QF-16, D-8) -> C001. Keys that are not supported as used
(not in QF-07, return-only keys with a value, unsupported matching types, keys below the
query level) are returned but not matched, and make every pending status FF01 (QF-13,
QF-14, D-15(b)).
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from appliance.codes import status
from appliance.codes.uids import is_valid_uid
from appliance.errors import DicomStatusError
from appliance.query.keys import (BY_TAG, QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET, UNIQUE, Key, Level,
                                  Model)

# D-8: the study-level keys whose (partial) value makes a Study Root STUDY query specific enough.
_STUDY_KEYS = ("StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyInstanceUID",
               "ReferringPhysicianName", "StudyDescription")
_TIME = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
_INTEGER = re.compile(r"[+-]?\d{1,12}")


@dataclass(frozen=True)
class Condition:
    """How one key restricts the matches: `kind` is "equal", "list", "wildcard" or "range"."""

    key: Key
    kind: str
    values: tuple[str, ...]  # in the key's search form; a range is (low, high), "" = open


@dataclass
class Query:
    model: Model
    level: Level
    conditions: list[Condition] = field(default_factory=list)
    returned: list[Key] = field(default_factory=list)  # supported keys usable at this level
    requested: list[tuple[int, str]] = field(default_factory=list)  # (tag, VR) in request order
    unsupported: list[str] = field(default_factory=list)  # why FF01, for the log

    def describe(self) -> str:
        """The matching keys and their matching types, for the service log (no values)."""
        used = ", ".join(f"{c.key.keyword} {c.kind}" for c in self.conditions) or "universal"
        return f"{self.model.name} {self.level.name} ({used})"


def parse(identifier: Dataset, model: Model) -> Query:
    """Validate `identifier` for `model`; raises DicomStatusError (A900, C001)."""
    elements = elements_of(identifier)
    level = next((e for e in elements if e.tag == QUERY_RETRIEVE_LEVEL), None)
    query = Query(model, level_of(text_of(level) if level is not None else "", model))
    values: dict[str, str] = {}
    for element in elements:
        tag = int(element.tag)
        query.requested.append((tag, element.VR))
        if tag in (QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET):
            continue  # the level, and the character set the request is written in: not keys
        key = BY_TAG.get(tag)
        if key is None:
            query.unsupported.append(f"{element.keyword or element.tag} is not a supported key")
            continue
        if model.level_of(key.level) > query.level:  # no single value to return or match
            query.unsupported.append(f"{key.keyword} is below the {query.level.name} level")
            continue
        text = text_of(element)
        query.returned.append(key)
        values[key.keyword] = text
        condition = _condition(key, text, query)
        if condition is not None:
            query.conditions.append(condition)
    _check_hierarchy(query, values)
    _check_specific_enough(query, values)
    return query


def filters(values: dict[str, str], model: Model, level: Level) -> Query:
    """A query from keyword -> value text, matched exactly as C-FIND matches (wildcards, ranges,
    case rules), without an identifier's hierarchy and specificity rules: the service tool's
    `study list` filters (MG-01). Raises DicomStatusError for a value C-FIND would refuse;
    `unsupported` says what it would not match."""
    query = Query(model, level)
    by_keyword = {key.keyword: key for key in BY_TAG.values()}
    for keyword, text in values.items():
        condition = _condition(by_keyword[keyword], text, query)
        if condition is not None:
            query.conditions.append(condition)
    return query


def elements_of(identifier: Dataset) -> list[DataElement]:
    """The identifier's elements, converted; A900 when the bytes cannot be, or when an element
    of the command or file meta groups is among them (C-FIND and C-MOVE)."""
    try:
        elements = list(identifier)  # pydicom converts each raw element here
    except Exception as exc:  # whatever the raw bytes make pydicom raise
        raise DicomStatusError(status.IDENTIFIER_MISMATCH, f"identifier cannot be decoded: {exc}") from exc
    for element in elements:
        if element.tag.group in (0x0000, 0x0002):
            raise DicomStatusError(status.IDENTIFIER_MISMATCH,
                                   f"element {element.tag} does not belong in an identifier")
    return elements


def level_of(text: str, model: Model) -> Level:
    try:
        level = Level[text]
    except KeyError:
        raise DicomStatusError(status.IDENTIFIER_MISMATCH, f"Query/Retrieve Level {text!r} is not one of "
                               f"{', '.join(lv.name for lv in model.levels)} ({model.name})") from None
    if level not in model.levels:
        raise DicomStatusError(status.IDENTIFIER_MISMATCH, f"Query/Retrieve Level {text} is not part of {model.name}")
    return level


def text_of(element: DataElement) -> str:
    """The value of a key element as the text of its wire form, DICOM padding removed."""
    if element.VR == "SQ":
        raise DicomStatusError(status.IDENTIFIER_MISMATCH, f"{element.keyword or element.tag} holds a sequence")
    try:
        return _value_text(element.value)
    except Exception as exc:  # a value pydicom converted but cannot show
        raise DicomStatusError(status.IDENTIFIER_MISMATCH,
                               f"{element.keyword or element.tag} cannot be read: {exc}") from exc


def _value_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(_value_text(v) for v in value)
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return str(value).strip(" \x00")


def _is_universal(text: str) -> bool:
    return text == "" or set(text) == {"*"}  # QF-09: a value of only "*" is universal


def _condition(key: Key, text: str, query: Query) -> Condition | None:
    if _is_universal(text):
        return None
    if not key.matching:
        query.unsupported.append(f"{key.keyword} has a value but is return-only")  # QF-13
        return None
    if key.vr == "UI":
        uids = tuple(text.split("\\"))
        bad = [uid for uid in uids if not is_valid_uid(uid)]
        if bad:
            raise DicomStatusError(status.IDENTIFIER_MISMATCH, f"{key.keyword} {bad[0]!r} is not a valid UID")
        return Condition(key, "list" if len(uids) > 1 else "equal", uids)
    if key.vr in ("DA", "TM"):
        return _date_or_time(key, text, query)
    if "\\" in text:
        query.unsupported.append(f"{key.keyword}: value lists are not supported")
        return None
    if "*" in text or "?" in text:
        if "*" not in key.matching:
            query.unsupported.append(f"{key.keyword}: wildcards are not supported")
            return None
        return Condition(key, "wildcard", (key.search_form(text),))
    if key.vr == "IS" and not _INTEGER.fullmatch(text):
        raise DicomStatusError(status.IDENTIFIER_MISMATCH, f"{key.keyword} {text!r} is not an integer string")
    return Condition(key, "equal", (key.search_form(text),))


def _date_or_time(key: Key, text: str, query: Query) -> Condition | None:
    valid = is_date if key.vr == "DA" else _TIME.fullmatch
    parts = text.split("-")
    if len(parts) > 2 or not all(valid(p) for p in parts if p) or not any(parts):
        raise DicomStatusError(status.IDENTIFIER_MISMATCH, f"{key.keyword} {text!r} is not a valid "
                               f"{'date' if key.vr == 'DA' else 'time'} or range")
    if len(parts) == 1 and "S" in key.matching:
        return Condition(key, "equal", (text,))
    if "R" not in key.matching:
        query.unsupported.append(f"{key.keyword}: range matching is not supported")  # D-15(b)
        return None
    low, high = parts if len(parts) == 2 else (text, text)  # D-15(b): a single time is t-t
    return Condition(key, "range", (low, high))


def is_date(text: str) -> bool:
    """A valid DA value (YYYYMMDD)."""
    try:
        datetime.datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return False
    return len(text) == 8


def _is_single(text: str) -> bool:
    return bool(text) and not any(c in text for c in "*?\\")


def _check_hierarchy(query: Query, values: dict[str, str]) -> None:
    """QF-03: below the model's top level, each higher level's unique key, one value."""
    for level in query.model.levels:
        if level >= query.level:
            return
        key = UNIQUE[level]
        if not _is_single(values.get(key.keyword, "")):
            raise DicomStatusError(status.IDENTIFIER_MISMATCH, f"a {query.level.name} query needs a single "
                                   f"{key.keyword} value ({query.model.name}, hierarchical)")


def _check_specific_enough(query: Query, values: dict[str, str]) -> None:
    """QF-15, QF-16, D-8: C001 when nothing narrows a top-level query."""
    def partial(keyword: str) -> bool:
        return not _is_universal(values.get(keyword, ""))

    if query.level is Level.PATIENT:
        needed = ("PatientID", "PatientName")
    elif query.level is Level.STUDY and query.model.levels[0] is Level.STUDY:
        needed = _STUDY_KEYS + ("PatientID", "PatientName")
    else:
        return
    if not any(partial(keyword) for keyword in needed):  # what is missing first: UL-05 sends 64 characters
        keys = "PatientID, PatientName or a study key" if len(needed) > 2 else "PatientID or PatientName"
        raise DicomStatusError(status.UNABLE_TO_PROCESS, f"no value for {keys}: a {query.model.name} "
                               f"{query.level.name} query needs one")
