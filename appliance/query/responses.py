"""A matched row as a C-FIND response identifier.

QF-05: exactly the elements of the request, values from the index (QF-06), zero-length where
the index has none or the key is not supported; the Query/Retrieve Level as the level.
CS-03/CS-04: values outside ASCII are sent as ISO_IR 100 when Latin-1 holds them all, else
ISO_IR 192 (UTF-8), and Specific Character Set says so.
"""

from __future__ import annotations

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from appliance.query.identifier import Query
from appliance.query.keys import QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET


class Responses:
    """Builds the identifier of each match of one query."""

    def __init__(self, query: Query):
        self.level = query.level.name
        self.requested = query.requested
        # Where each returned key's value sits in a row of matching.select().
        self.positions = {key.tag: i for i, key in enumerate(query.returned)}
        self.charset_requested = any(tag == SPECIFIC_CHARACTER_SET for tag, _ in query.requested)

    def identifier(self, row: tuple) -> Dataset:
        values = {tag: _text(row[i]) for tag, i in self.positions.items()}
        charset = character_set(values.values())
        ds = Dataset()
        if charset or self.charset_requested:
            ds.SpecificCharacterSet = charset or None  # first: pydicom encodes the values with it
        for tag, vr in self.requested:
            if tag == SPECIFIC_CHARACTER_SET:
                continue
            value = self.level if tag == QUERY_RETRIEVE_LEVEL else values.get(tag)
            ds.add(DataElement(tag, vr, value or None))  # None: zero-length, whatever the VR
        return ds


def _text(value) -> str:
    return "" if value is None else str(value)  # counts come back as integers


def character_set(values) -> str:
    """The Specific Character Set the values need: "" (default repertoire) when all are ASCII."""
    text = "".join(values)
    if text.isascii():
        return ""
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return "ISO_IR 192"
    return "ISO_IR 100"
