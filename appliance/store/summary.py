"""What the archive holds, in numbers, and which index holds it: for `service-tool status`, with
the service up or down (TL-07).

The same peewee queries on either backend (IX-01), run on the database they are handed: the
running service's own index, or, in the tool with the service stopped, a read-only connection
(db.read_only), which must not migrate or write the index.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from peewee import Database, PeeweeException, fn

from appliance.config.model import Storage
from appliance.store import dialect, watermarks
from appliance.store.db import Index, describe, first_line, read_only
from appliance.store.models import CommitmentRequest, Instance, Patient, Series, Study, total_size
from appliance.store.node import known_node_id

# MG-04: the ingest rate, from a range and a MIN on the bare received_at column, which its
# index (schema 5) serves on both backends; the bound is a UTC time in the column's own form.
INGEST_DAYS = 7


def received_since(db: Database, since: datetime.datetime):
    """The bytes received since `since`, as a query."""
    return Instance.select(total_size()).where(Instance.received_at >= dialect.of(db).timestamp(since))


def first_received():
    return Instance.select(fn.MIN(Instance.received_at))


def _ingest(db: Database) -> dict:
    """Bytes received a day over the last INGEST_DAYS days; over an archive younger than that,
    over its age (since its oldest instance was received), but at least a day: a first hour's
    images would make an absurd daily rate."""
    first = first_received().scalar(db)
    if first is None:
        return {"ingest_bytes_per_day": 0.0, "ingest_days": float(INGEST_DAYS), "archive_age_days": None}
    now = datetime.datetime.now(datetime.timezone.utc)
    age = (now - dialect.as_utc(first)) / datetime.timedelta(days=1)
    days = min(float(INGEST_DAYS), max(1.0, age))
    received = received_since(db, now - datetime.timedelta(days=INGEST_DAYS)).scalar(db)
    return {"ingest_bytes_per_day": received / days, "ingest_days": days, "archive_age_days": age}


def archive_counts(db: Database) -> dict:
    """Counts and the ingest rate from the index `db`; raises PeeweeException when it cannot be read."""
    return {"patients": Patient.select().count(db), "studies": Study.select().count(db),
            "series": Series.select().count(db), "instances": Instance.select().count(db),
            "instance_bytes": Instance.select(total_size()).scalar(db),
            "pending_commitment_reports": CommitmentRequest.select().count(db),
            **_ingest(db)}


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


def archive_and_disk(directory: Path, storage: Storage, url: str, index: Index | None = None) -> dict:
    """`index` (backend, version, where, connected, this box's node id), `archive` (counts, or
    the error that kept the index from answering) and `disk` of a data directory. `index`: the
    running service's; without it the index `url` names is opened read-only."""
    if index is not None:
        described = index.describe()
        try:
            archive = archive_counts(index.db)
        except PeeweeException as exc:
            archive = {"error": first_line(exc)}
    else:
        described, archive = _offline(url, directory)
    described["node"] = known_node_id(directory)
    try:
        disk = _disk(directory, storage, archive.get("ingest_bytes_per_day"))
    except OSError as exc:
        disk = {"error": exc.strerror}
    return {"index": described, "archive": archive, "disk": disk}


def _offline(url: str, directory: Path) -> tuple[dict, dict]:
    try:
        with read_only(url, directory) as db:
            described = describe(url, directory, db)
            try:
                return described, archive_counts(db)
            except PeeweeException as exc:
                return described, {"error": first_line(exc)}
    except (PeeweeException, OSError) as exc:  # no index file, no server
        described = describe(url, directory) if not url else {
            "backend": "postgresql", "where": _where(url), "version": None, "connected": False, "error": first_line(exc)}
        return described, {"error": first_line(exc)}


def _where(url: str) -> str:
    from appliance.store.postgres import safe_url

    return safe_url(url)
