"""What the archive holds, in numbers: for `service-tool status`, with the service up or down (TL-07).

Plain read-only SQL on the index file, so the daemon and the tool (which must not migrate or
write the index) count the same way.
"""

from __future__ import annotations

import datetime
import sqlite3
from pathlib import Path

from appliance.config.model import Storage
from appliance.store import INDEX_NAME, watermarks

_COUNTS = {
    "patients": "SELECT COUNT(*) FROM patient",
    "studies": "SELECT COUNT(*) FROM study",
    "series": "SELECT COUNT(*) FROM series",
    "instances": "SELECT COUNT(*) FROM instance",
    "instance_bytes": "SELECT COALESCE(SUM(size), 0) FROM instance",
    "pending_commitment_reports": "SELECT COUNT(*) FROM commitment_request",
}

# MG-04: the ingest rate. instance.received_at is the text sqlite3 makes of peewee's UTC
# datetime ('YYYY-MM-DD HH:MM:SS.ffffff+00:00', no fraction when it is 0), which sorts as the
# times do; so a range and MIN on the bare column, which its index (schema 5) serves.
INGEST_DAYS = 7
RECEIVED_SINCE = "SELECT COALESCE(SUM(size), 0) FROM instance WHERE received_at >= ?"
FIRST_RECEIVED = "SELECT MIN(received_at) FROM instance"


def _ingest(connection: sqlite3.Connection) -> dict:
    """Bytes received a day over the last INGEST_DAYS days; over an archive younger than that,
    over its age (since its oldest instance was received), but at least a day: a first hour's
    images would make an absurd daily rate."""
    first = connection.execute(FIRST_RECEIVED).fetchone()[0]
    if first is None:
        return {"ingest_bytes_per_day": 0.0, "ingest_days": float(INGEST_DAYS), "archive_age_days": None}
    now = datetime.datetime.now(datetime.timezone.utc)
    age = (now - datetime.datetime.fromisoformat(first)) / datetime.timedelta(days=1)
    days = min(float(INGEST_DAYS), max(1.0, age))
    since = str(now - datetime.timedelta(days=INGEST_DAYS))  # str(): the stored text's form
    received = connection.execute(RECEIVED_SINCE, (since,)).fetchone()[0]
    return {"ingest_bytes_per_day": received / days, "ingest_days": days, "archive_age_days": age}


def archive_counts(index_path: Path) -> dict:
    """Counts and the ingest rate from the index; raises sqlite3.Error when it cannot be read."""
    if not index_path.exists():
        raise sqlite3.OperationalError(f"{index_path} does not exist")
    connection = sqlite3.connect(f"{index_path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        return {**{name: connection.execute(sql).fetchone()[0] for name, sql in _COUNTS.items()},
                **_ingest(connection)}
    finally:
        connection.close()


def _disk(directory: Path, storage: Storage, bytes_per_day: float | None) -> dict:
    """Free space against the reserve and the watermarks (MG-04), and when it runs out at the
    ingest rate (None: not growing, or the rate is unknown)."""
    now = watermarks.usage(directory)
    level = watermarks.crossed(now.free_percent, storage)
    left = max(0, now.free - storage.reserve_bytes)
    return {"total_bytes": now.total, "free_bytes": now.free, "reserve_bytes": storage.reserve_bytes,
            "free_percent": round(now.free_percent, 2), "warn_free_percent": storage.warn_free_percent,
            "alert_free_percent": storage.alert_free_percent, "crossed": level,
            "problems": [{"level": level.upper(), "message": watermarks.problem(level, now, storage)}] if level else [],
            "days_until_full": round(left / bytes_per_day, 2) if bytes_per_day else None}


def archive_and_disk(directory: Path, storage: Storage) -> dict:
    """`archive` (counts, or the error that kept the index from answering) and `disk` of a data directory."""
    try:
        archive = archive_counts(directory / INDEX_NAME)
    except sqlite3.Error as exc:
        archive = {"error": str(exc)}
    try:
        disk = _disk(directory, storage, archive.get("ingest_bytes_per_day"))
    except OSError as exc:
        disk = {"error": exc.strerror}
    return {"archive": archive, "disk": disk}
