"""What the archive holds, in numbers: for `service-tool status`, with the service up or down (TL-07).

Plain read-only SQL on the index file, so the daemon and the tool (which must not migrate or
write the index) count the same way.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from appliance.store import INDEX_NAME

_COUNTS = {
    "patients": "SELECT COUNT(*) FROM patient",
    "studies": "SELECT COUNT(*) FROM study",
    "series": "SELECT COUNT(*) FROM series",
    "instances": "SELECT COUNT(*) FROM instance",
    "instance_bytes": "SELECT COALESCE(SUM(size), 0) FROM instance",
    "pending_commitment_reports": "SELECT COUNT(*) FROM commitment_request",
}


def archive_counts(index_path: Path) -> dict:
    """Counts from the index; raises sqlite3.Error when it cannot be read."""
    if not index_path.exists():
        raise sqlite3.OperationalError(f"{index_path} does not exist")
    connection = sqlite3.connect(f"{index_path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        return {name: connection.execute(sql).fetchone()[0] for name, sql in _COUNTS.items()}
    finally:
        connection.close()


def archive_and_disk(directory: Path, reserve_bytes: int) -> dict:
    """`archive` (counts, or the error that kept the index from answering) and `disk` of a data directory."""
    try:
        archive = archive_counts(directory / INDEX_NAME)
    except sqlite3.Error as exc:
        archive = {"error": str(exc)}
    try:
        usage = shutil.disk_usage(directory)
        disk = {"total_bytes": usage.total, "free_bytes": usage.free, "reserve_bytes": reserve_bytes}
    except OSError as exc:
        disk = {"error": exc.strerror}
    return {"archive": archive, "disk": disk}
