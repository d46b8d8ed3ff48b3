"""Service log set-up: journald-friendly stderr plus a bounded rotating file (LG-01, LG-10).

A line's time is ISO 8601 with the local offset, to the millisecond
(`2026-03-29T02:59:59.120+01:00 INFO appliance.association: ...`): local time alone would be
ambiguous in the autumn's repeated hour and wrong after `network --time-zone` changes the zone,
and `service-tool logs --json`, `--since` and `status --json` give the same instants. Lines
written before (`2026-03-29 02:59:59,120`, local time without an offset) are still read by
`service-tool logs` (see there).
"""

from __future__ import annotations

import collections
import datetime
import logging
import os
import sys
import threading
from pathlib import Path

from appliance.config.model import Logging
from appliance.log_file import SyncedFileHandler

_FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def iso_time(created: float) -> str:
    """A time stamp (time.time()) as ISO 8601 in the local zone with its offset, to the millisecond."""
    return datetime.datetime.fromtimestamp(created, datetime.timezone.utc).astimezone().isoformat(
        timespec="milliseconds")


class _ZonedFormatter(logging.Formatter):
    """The file's (and a console's outside systemd) lines, with iso_time's time stamps."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return iso_time(record.created)


# LG-09: the conformance statement's "alert to the User Interface" (C-FIND A700, C-MOVE
# A701/A702) is a record above CRITICAL, logged as ALERT and sent to the journal at syslog
# priority 1 (alert).
ALERT = logging.CRITICAL + 10
logging.addLevelName(ALERT, "ALERT")
_SYSLOG_PRIORITY = ((ALERT, 1), (logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
                    (logging.INFO, 6))


def alert(logger: logging.Logger, message: str, *args) -> None:
    logger.log(ALERT, message, *args)


class _RecentProblems(logging.Handler):
    """The last ERROR, CRITICAL and ALERT records, for `service-tool status` (TL-07, LG-09): the
    service's own problems. A request refused for what the requester sent is a WARNING, a
    connection that ends before its association is used an INFO (issue 22)."""

    def __init__(self, size: int = 20):
        super().__init__(logging.ERROR)
        self._records: collections.deque = collections.deque(maxlen=size)
        self._count_lock = threading.Lock()
        self.counts: collections.Counter = collections.Counter()  # since start, by level name

    def emit(self, record: logging.LogRecord) -> None:
        with self._count_lock:
            self.counts[record.levelname] += 1
        self._records.append({"time": iso_time(record.created), "level": record.levelname, "logger": record.name,
                              "message": record.getMessage()})

    def recent(self) -> list[dict]:
        return list(self._records)


recent_problems = _RecentProblems()


class _JournalFormatter(logging.Formatter):
    """journald reads a "<N>" line prefix on stderr as the record's priority (SyslogLevelPrefix)."""

    def format(self, record: logging.LogRecord) -> str:
        priority = next((p for level, p in _SYSLOG_PRIORITY if record.levelno >= level), 7)
        return f"<{priority}>{super().format(record)}"


def setup(settings: Logging, data_dir: Path) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "kept_across_setup", False):  # the audit trail's ALERT forwarder (AU-03)
            continue
        root.removeHandler(handler)
        if handler is not recent_problems:  # kept across reloads
            handler.close()
    root.setLevel(settings.level.upper())
    # Under systemd the journal adds its own timestamps; JOURNAL_STREAM says we are there.
    console = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        console.setFormatter(_JournalFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        console.setFormatter(_ZonedFormatter(_FILE_FORMAT))
    root.addHandler(console)
    root.addHandler(recent_problems)
    if settings.file:
        path = data_dir / settings.file
        path.parent.mkdir(parents=True, exist_ok=True)
        synced = SyncedFileHandler(path, settings.max_bytes, settings.backups)  # power cuts: log_file.py
        synced.setFormatter(_ZonedFormatter(_FILE_FORMAT))
        root.addHandler(synced)
        synced.report_cut()
    # pynetdicom narrates every PDU at INFO; our own lines cover association events (LG-08).
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
