"""A stored instance as the data set STORAGE-SCU sends (SU-14, SU-15, SU-09, PC-12, EL-00).

Stored files are never changed (D-9). At export the file's values are derived again with the
rules the index was filled with (`coercion.index_values`, no defaults); where the index now
holds something else (a coerced Patient ID, a default, an edit, a normalised sex, a
reassigned SOP Instance UID) that element is written into the outgoing copy. An instance
with nothing to change, sent in its stored transfer syntax, goes out as the stored bytes,
read from the file in PDU-sized pieces (SU-15). Anything else is rebuilt through pydicom in
memory: only the changed elements are re-encoded, the rest are copied raw, unless the
transfer syntax changes (ILE <-> ELE, PC-12), which re-encodes every element header.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.charset import convert_encodings
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from appliance.config.model import DefaultValues
from appliance.codes import uids
from appliance.store import coercion
from appliance.store.header import Header, Unparseable, read_header

# coercion.IndexValues field -> keyword of the element it comes from (names and sex: below).
ELEMENTS = {
    "patient_id": "PatientID", "birth_date": "PatientBirthDate", "other_patient_ids": "OtherPatientIDs",
    "other_patient_names": "OtherPatientNames", "study_date": "StudyDate", "study_time": "StudyTime",
    "accession_number": "AccessionNumber", "study_id": "StudyID", "referring_physician": "ReferringPhysicianName",
    "study_description": "StudyDescription", "modality": "Modality", "series_number": "SeriesNumber",
    "series_description": "SeriesDescription", "operators_name": "OperatorsName", "body_part": "BodyPartExamined",
    "sop_instance_uid": "SOPInstanceUID",
}
_PATIENT_SEX = 0x00100040
_NO_DEFAULTS = DefaultValues()


class Unreadable(Exception):
    """The stored file cannot be read or parsed (QM-12: the instance is not available)."""


@dataclass
class Outgoing:
    """The data set to send: the `length` stored bytes at `offset` of `path` when `as_stored`,
    else `rebuilt()`, a copy with `changes` in `send_syntax` (built when it is sent, so that
    only one such copy is in memory at a time)."""

    path: Path
    offset: int
    length: int
    changes: dict[str, str]
    send_syntax: str
    as_stored: bool

    def rebuilt(self) -> bytes:
        return _rebuilt(self.path, self.changes, self.send_syntax)

    @property
    def changed(self) -> tuple[str, ...]:
        """Keywords written from the index, for the log."""
        return tuple(sorted(self.changes))


def changes(index_values: dict[str, str], header: Header) -> dict[str, str]:
    """Keyword -> value for every element whose index value differs from the file's (SU-14)."""
    derived = coercion.index_values(header, _NO_DEFAULTS, ())
    changed = {}
    for name, keyword in ELEMENTS.items():
        if index_values[name] != getattr(derived, name):
            changed[keyword] = index_values[name]
    name = (index_values["last_name"], index_values["first_name"])
    if name != (derived.last_name, derived.first_name):
        changed["PatientName"] = "^".join(name) if name[1] else name[0]
    # EL-09/EL-10: the index's M/F/O, and U as a present, empty Patient's Sex.
    sex = index_values["sex"] if index_values["sex"] in ("M", "F", "O") else ""
    if _PATIENT_SEX not in header.raw or header.text(_PATIENT_SEX) != sex:
        changed["PatientSex"] = sex
    return changed


def prepare(path: Path, stored_syntax: str, index_values: dict[str, str], send_class: str,
            send_syntax: str) -> Outgoing:
    """What to send of the stored file at `path`, as `send_class` in `send_syntax`."""
    try:
        header = read_header(path, stored_syntax == uids.IMPLICIT_LE)
        size = path.stat().st_size
    except (OSError, Unparseable) as exc:
        raise Unreadable(f"stored file {path.name} cannot be read: {exc}") from exc
    changed = changes(index_values, header)
    if send_class != header.text(0x00080016):
        changed["SOPClassUID"] = send_class  # SU-09: retired <-> current US
    return Outgoing(path, header.dataset_offset, size - header.dataset_offset, changed, send_syntax,
                    as_stored=not changed and send_syntax == stored_syntax)


def _rebuilt(path: Path, changed: dict[str, str], send_syntax: str) -> bytes:
    try:
        dataset = dcmread(path)
        if not all(_encodable(value, dataset) for value in changed.values()):
            # A value the data set's character set cannot hold (an edited name in Greek, say):
            # decode every text element, then write the whole data set in UTF-8 (CS-03).
            dataset.decode()
            dataset.SpecificCharacterSet = "ISO_IR 192"
        for keyword, value in changed.items():
            setattr(dataset, keyword, value)
        out = DicomBytesIO()
        out.is_little_endian = True
        out.is_implicit_VR = send_syntax == uids.IMPLICIT_LE
        write_dataset(out, dataset)
        return out.getvalue()
    except Exception as exc:  # pydicom raises anything on a file it cannot convert
        raise Unreadable(f"stored file {path.name} cannot be re-encoded for export: {exc}") from exc


def _encodable(value: str, dataset) -> bool:
    if value.isascii():
        return True
    terms = dataset.get("SpecificCharacterSet", "")
    terms = [terms] if isinstance(terms, str) else list(terms)
    if len(terms) != 1 or not terms[0]:
        return False  # the default repertoire, or code extensions: only ASCII is safe as is
    try:
        value.encode(convert_encodings(terms)[0])
        return True
    except (LookupError, ValueError, UnicodeError):
        return False
