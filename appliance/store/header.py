"""Strict, non-decoding walk over a received Part 10 file: structure check plus index values.

pydicom's reader is lenient by design (it seeks past garbage and guesses VRs), so it cannot
tell "cannot parse the Data Set into Elements" (ST-12, C000) from a valid dataset. This walker
visits every element header of the dataset, skipping values with seeks, and raises
`Unparseable` on anything that is not a well-formed Little Endian dataset ending exactly at
end of file. Along the way it keeps the raw bytes of the few top-level elements the index
needs, so a C-STORE costs one pass over the headers and never touches pixel data.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field

from pydicom.charset import convert_encodings, decode_bytes

# Elements the index or the A900 checks need (top level only), with their VR for
# Implicit VR data. Values are decoded lazily by `Header`.
WANTED = {
    0x00080005: "CS",  # Specific Character Set
    0x00080008: "CS",  # Image Type
    0x00080016: "UI",  # SOP Class UID
    0x00080018: "UI",  # SOP Instance UID
    0x00080020: "DA",  # Study Date
    0x00080030: "TM",  # Study Time
    0x00080050: "SH",  # Accession Number
    0x00080060: "CS",  # Modality
    0x00080090: "PN",  # Referring Physician's Name
    0x00081030: "LO",  # Study Description
    0x0008103E: "LO",  # Series Description
    0x00081070: "PN",  # Operators' Name
    0x00100010: "PN",  # Patient's Name
    0x00100020: "LO",  # Patient ID
    0x00100030: "DA",  # Patient's Birth Date
    0x00100040: "CS",  # Patient's Sex
    0x00101000: "LO",  # Other Patient IDs
    0x00101001: "PN",  # Other Patient Names
    0x00180015: "CS",  # Body Part Examined
    0x0020000D: "UI",  # Study Instance UID
    0x0020000E: "UI",  # Series Instance UID
    0x00200010: "SH",  # Study ID
    0x00200011: "IS",  # Series Number
    0x00200013: "IS",  # Instance Number
    0x00280004: "CS",  # Photometric Interpretation
    0x00280010: "US",  # Rows
    0x00280011: "US",  # Columns
    0x00280100: "US",  # Bits Allocated
    0x00280101: "US",  # Bits Stored
}
PIXEL_DATA = 0x7FE00010
_MAX_WANTED_LENGTH = 64 * 1024  # longer "header" values are not index material

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_ALL_VRS = _LONG_VRS | {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO",
                        b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_MAX_DEPTH = 32


class Unparseable(Exception):
    """The dataset cannot be parsed into elements (C000)."""


@dataclass
class Header:
    """Raw top-level values of the wanted elements, plus what the A900 checks need."""

    raw: dict[int, bytes] = field(default_factory=dict)
    pixel_data_present: bool = False
    dataset_offset: int = 0  # where the data set starts in the file (after the file meta)

    @functools.cached_property
    def _encodings(self) -> list[str]:
        terms = self.text(0x00080005, ascii_only=True)
        try:
            return convert_encodings([t.strip() for t in terms.split("\\")] if terms else ["ISO_IR 6"])
        except (LookupError, ValueError):  # unknown term; pydicom's ValueError: an embedded NUL
            # An unknown charset term must not lose the instance; decode as Latin-1 (CS-04).
            return ["iso8859"]

    def text(self, tag: int, ascii_only: bool = False) -> str:
        """The value as text with DICOM padding removed ("" when absent or empty)."""
        value = self.raw.get(tag)
        if not value:
            return ""
        if ascii_only or WANTED[tag] in ("UI", "CS", "DA", "TM", "IS"):
            text = value.decode("latin-1")
        else:
            delimiters = {0x5C, 0x3D, 0x5E} if WANTED[tag] == "PN" else {0x5C}
            text = decode_bytes(value, self._encodings, delimiters)
        return text.rstrip("\x00 ").lstrip(" ") if WANTED[tag] != "UI" else text.rstrip("\x00 ")

    def has_value(self, tag: int) -> bool:
        value = self.raw.get(tag, b"")
        if WANTED[tag] == "US":
            # Binary: 0x0020 (32) or 0x2000 (8192) are values, not space/NUL padding.
            return len(value) >= 2
        return bool(value.strip(b"\x00 "))

    def uint16(self, tag: int) -> int | None:
        value = self.raw.get(tag)
        if not value or len(value) < 2:
            return None
        return struct.unpack("<H", value[:2])[0]


def read_header(path, implicit_vr: bool) -> Header:
    """Walk the Part 10 file at `path`; raise `Unparseable` if it is not well formed."""
    header = Header()
    with open(path, "rb", buffering=65536) as f:
        size = f.seek(0, 2)
        walker = _Walker(f, size, implicit_vr, header)
        header.dataset_offset = walker.file_meta()
        walker.dataset(end=size, depth=0)
    return header


def seek_data_set(f) -> int:
    """Position the open Part 10 file `f` where its data set starts, after the File Meta
    Information; the data set's length. Raises `Unparseable` when the prefix or meta is not."""
    size = f.seek(0, 2)
    return size - _Walker(f, size, False, Header()).file_meta()


class _Walker:
    def __init__(self, f, size: int, implicit_vr: bool, header: Header):
        self.f, self.size, self.implicit_vr, self.header = f, size, implicit_vr, header

    def file_meta(self) -> int:
        """Past the preamble, prefix and File Meta Information: where the data set starts."""
        self.f.seek(0)
        if self.f.read(132)[128:] != b"DICM":
            raise Unparseable("no DICM prefix")
        self._skip_file_meta()
        return self.f.tell()

    def _skip_file_meta(self) -> None:
        f = self.f
        while True:
            pos = f.tell()
            head = f.read(8)
            if len(head) < 8:
                raise Unparseable("file meta information truncated")
            if struct.unpack_from("<H", head)[0] != 0x0002:
                f.seek(pos)
                return
            if head[4:6] in _LONG_VRS:
                length = struct.unpack("<I", self._read(4))[0]
            else:
                length = struct.unpack_from("<H", head, 6)[0]
            self._skip(length)

    def _read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) < n:
            raise Unparseable("data truncated")
        return data

    def _skip(self, length: int) -> None:
        if self.f.tell() + length > self.size:
            raise Unparseable("a length runs past the end of the data")
        self.f.seek(length, 1)

    def _element_header(self) -> tuple[int, bytes | None, int] | None:
        head = self.f.read(8)
        if not head:
            return None
        if len(head) < 8:
            raise Unparseable("element header truncated")
        group, elem = struct.unpack_from("<HH", head)
        tag = (group << 16) | elem
        if self.implicit_vr or group == 0xFFFE:
            return tag, None, struct.unpack_from("<I", head, 4)[0]
        vr = head[4:6]
        if vr in _LONG_VRS:
            return tag, vr, struct.unpack("<I", self._read(4))[0]
        if vr not in _ALL_VRS:
            raise Unparseable(f"invalid VR {vr!r} in element {_fmt(tag)}")
        return tag, vr, struct.unpack_from("<H", head, 6)[0]

    def dataset(self, end: int | None, depth: int) -> None:
        """Elements up to `end`, or (end None) up to an Item Delimitation Item."""
        if depth > _MAX_DEPTH:
            raise Unparseable("sequences nested too deeply")
        f, top = self.f, depth == 0
        last_tag = -1
        while end is None or f.tell() < end:
            parsed = self._element_header()
            if parsed is None:
                raise Unparseable("item delimitation missing at end of data")
            tag, vr, length = parsed
            if end is None and tag == _ITEM_END:
                return
            if tag >> 16 in (0x0000, 0x0002, 0xFFFE) or tag <= last_tag:
                raise Unparseable(f"element {_fmt(tag)} out of order or not allowed in a dataset")
            last_tag = tag
            if top and tag in WANTED and length <= _MAX_WANTED_LENGTH:
                self.header.raw[tag] = self._read(length)
                continue
            if tag == PIXEL_DATA and top:
                self.header.pixel_data_present = length != 0
            if length == _UNDEFINED:
                if tag == PIXEL_DATA or vr in (b"OB", b"OW"):
                    self.fragments()
                elif vr == b"UN":
                    # PS3.5 6.2.2: an undefined-length UN holds a sequence in Implicit VR LE.
                    outer, self.implicit_vr = self.implicit_vr, True
                    self.items(end=None, depth=depth + 1)
                    self.implicit_vr = outer
                elif vr in (None, b"SQ"):
                    self.items(end=None, depth=depth + 1)
                else:
                    raise Unparseable(f"undefined length not allowed for VR {vr!r} in {_fmt(tag)}")
            elif vr == b"SQ" or (vr is None and self._next_is_item(length)):
                self.items(end=f.tell() + length, depth=depth + 1)
            else:
                self._skip(length)
        if end is not None and f.tell() != end:
            raise Unparseable("dataset does not end on an element boundary")

    def _next_is_item(self, length: int) -> bool:
        """Implicit VR cannot name SQ: a sequence is recognised by its first item tag."""
        if length < 8:
            return False
        pos = self.f.tell()
        peek = self.f.read(4)
        self.f.seek(pos)
        return peek == b"\xfe\xff\x00\xe0"

    def items(self, end: int | None, depth: int) -> None:
        """Sequence items (each a dataset) up to `end` or the Sequence Delimitation Item."""
        while end is None or self.f.tell() < end:
            tag, _, length = self._item_header()
            if tag == _SEQ_END and end is None:
                return
            if tag != _ITEM:
                raise Unparseable(f"expected an item, found {_fmt(tag)}")
            self.dataset(end=None if length == _UNDEFINED else self._checked_end(length), depth=depth)
        if self.f.tell() != end:
            raise Unparseable("sequence length does not match its items")

    def fragments(self) -> None:
        """Encapsulated pixel data: byte fragments, ended by the Sequence Delimitation Item."""
        while True:
            tag, _, length = self._item_header()
            if tag == _SEQ_END:
                return
            if tag != _ITEM or length == _UNDEFINED:
                raise Unparseable("malformed encapsulated pixel data")
            self._skip(length)

    def _item_header(self) -> tuple[int, None, int]:
        group, elem, length = struct.unpack("<HHI", self._read(8))
        return (group << 16) | elem, None, length

    def _checked_end(self, length: int) -> int:
        end = self.f.tell() + length
        if end > self.size:
            raise Unparseable("an item runs past the end of the data")
        return end


def _fmt(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
