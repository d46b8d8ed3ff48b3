"""ST-25, D-19: whether a received data set is one already stored, byte for byte.

A modality that did not get its C-STORE-RSP (a timeout, a dropped connection) sends the same
object again; that is no duplicate in the sense of ST-17/ST-18 but the object already stored.
Only the data sets are compared: of two receptions of one object, the File Meta Information
differs by the calling AE title (Source Application Entity Title) and the preamble by the seal
(files.py). The ingest asks only once the SOP Instance UID is known to be indexed
(ingest.Archive.index_instance), so an instance with a new UID costs nothing here.
"""

from __future__ import annotations

from pathlib import Path

from appliance.store.header import Unparseable, seek_data_set

_CHUNK = 1024 * 1024


def same_data_set(received: Path, stored: Path) -> bool:
    """Whether the two Part 10 files hold the same data set bytes; False when either cannot be
    read as one (then the received instance is not taken for the stored one)."""
    try:
        with open(received, "rb") as a, open(stored, "rb") as b:
            if seek_data_set(a) != seek_data_set(b):
                return False
            while True:
                chunk = a.read(_CHUNK)
                if chunk != b.read(_CHUNK):
                    return False
                if not chunk:
                    return True
    except (OSError, Unparseable):
        return False
