"""The one thread that sends audit messages, and the spool it keeps them in meanwhile (AU-01, AU-02).

Service threads hand it entries (`submit`): the time of the event and a function that makes
the message's body. Making the XML and the syslog frame happens here, so that the service
thread pays for a queue append only. `submit` never blocks on the network and never raises.

Order: a message goes to the collector only when every older one has, so while anything
waits in the spool, new messages join it at the end, and the spool is sent first when the
collector can be reached again (also after a restart: the spool is on disk). After a failed
attempt the next waits 0.25 s, then twice as long each time, at most `BACKOFF_MAX`.

When the spool would grow beyond `audit.spool_max_bytes`, the oldest messages go, with one
ALERT when it first happens while the collector is unreachable, and one more with the total
when it can be reached again if more went after the first (AU-02). Those ALERTs reach the
collector too (AU-03), as the newest messages; being at most two per outage, they cannot feed
on each other, and the last one counts every message dropped.

`stop` sends what waits while it may (`timeout`), and spools the rest.
"""

from __future__ import annotations

import collections
import datetime
import errno
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from appliance.audit import syslog
from appliance.audit.spool import Spool
from appliance.audit.transport import Collector, Transport, transport_for
from appliance.log import alert

log = logging.getLogger("appliance.audit")

APP_NAME = "appliance"
QUEUE_LIMIT = 10000  # entries waiting in memory for the thread; beyond it they are lost (an ALERT)
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 10.0


@dataclass(frozen=True)
class Settings:
    collector: Collector | None  # None: the audit trail is off
    source_id: str
    spool_max_bytes: int
    hostname: str


@dataclass(frozen=True)
class Entry:
    when: datetime.datetime
    build: Callable[[str], bytes]  # AuditSourceID -> the message body (XML, or text)
    facility: int = syslog.AUTHPRIV
    severity: int = syslog.NOTICE
    msgid: str = syslog.AUDIT_MSGID


class Sender:
    def __init__(self, spool_directory: Path, settings: Settings):
        self._cond = threading.Condition()
        self._queue: collections.deque[Entry] = collections.deque()
        self._settings = settings
        self._new_settings: Settings | None = None
        self._stopping = False
        self._deadline = 0.0
        self._lost = 0  # entries refused because the queue was full, not reported yet
        self._spool = Spool(spool_directory, settings.spool_max_bytes)
        self._transport: Transport | None = transport_for(settings.collector) if settings.collector else None
        self._retry_at = 0.0
        self._backoff = 0.0
        self._outage = False  # the collector's being unreachable has been logged
        self._from_spool = 0  # spooled messages sent since the last time all went through
        self._dropped = 0  # dropped from the full spool since it last emptied
        self._dropped_reported = 0
        self._thread = threading.Thread(target=self._run, name="audit sender", daemon=True)

    @property
    def settings(self) -> Settings:
        return self._new_settings or self._settings

    def spooled(self) -> tuple[int, int]:
        """(messages, bytes) waiting in the spool now (read from any thread)."""
        return len(self._spool), self._spool.bytes

    def start(self) -> "Sender":
        if len(self._spool):
            log.info("audit: %d messages (%d bytes) wait in the spool from before; they go first",
                     len(self._spool), self._spool.bytes)
        self._thread.start()
        return self

    def submit(self, entry: Entry) -> None:
        with self._cond:
            if self._stopping:
                return
            if len(self._queue) >= QUEUE_LIMIT:
                self._lost += 1
                return
            self._queue.append(entry)
            self._cond.notify()

    def configure(self, settings: Settings) -> None:
        with self._cond:
            self._new_settings = settings
            self._cond.notify()

    def stop(self, timeout: float) -> None:
        """Send what waits for at most `timeout` s (plus one connection attempt), spool the rest."""
        with self._cond:
            self._stopping = True
            self._deadline = time.monotonic() + timeout
            self._cond.notify()
        self._thread.join(timeout + 10)

    # --- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not (self._queue or self._stopping or self._new_settings or self._due()):
                        self._cond.wait(self._wait())
                    entries = list(self._queue)
                    self._queue.clear()
                    stopping = self._stopping
                    settings, self._new_settings = self._new_settings, None
                    lost, self._lost = self._lost, 0
                if settings is not None:
                    self._apply(settings)
                if lost:
                    alert(log, "audit: %d messages lost: more than %d were waiting to be sent", lost, QUEUE_LIMIT)
                self._deliver(self._frames(entries), stopping)
                if stopping:
                    return
        except Exception:  # a bug: say so rather than let the audit trail stop silently
            log.exception("audit: the sender stopped")
        finally:
            if self._transport is not None:
                self._transport.close()

    def _due(self) -> bool:
        return bool(len(self._spool)) and self._transport is not None and time.monotonic() >= self._retry_at

    def _wait(self) -> float | None:
        if len(self._spool) and self._transport is not None:
            return max(self._retry_at - time.monotonic(), 0.01)
        return None

    def _apply(self, settings: Settings) -> None:
        if settings.collector != self._settings.collector:
            if self._transport is not None:
                self._transport.close()
            self._transport = transport_for(settings.collector) if settings.collector else None
            self._retry_at, self._backoff, self._outage = 0.0, 0.0, False
        self._settings = settings
        dropped = self._spool.set_limit(settings.spool_max_bytes)
        if dropped:
            self._overflow(dropped)

    def _frames(self, entries: list[Entry]) -> list[bytes]:
        settings = self._settings
        frames = []
        for entry in entries:
            try:
                frames.append(syslog.message(entry.build(settings.source_id), entry.when, entry.facility,
                                             entry.severity, settings.hostname, APP_NAME, str(os.getpid()),
                                             entry.msgid))
            except Exception:
                log.exception("audit: a message could not be made")
        return frames

    def _deliver(self, frames: list[bytes], stopping: bool) -> None:
        """Spool first, then `frames`; whatever cannot go now joins the spool."""
        transport = self._transport
        if transport is None or time.monotonic() < self._retry_at:
            self._keep(frames)
            return
        while len(self._spool):
            if stopping and time.monotonic() > self._deadline:
                self._keep(frames)
                return
            try:
                oldest = self._spool.oldest()
            except OSError as exc:
                log.error("audit: a spooled message cannot be read and is dropped: %s", exc)
                continue
            if oldest is None:
                break
            sequence, data = oldest
            try:
                transport.send(data)
            except OSError as exc:
                if not _too_large(exc):
                    self._unreachable(exc)
                    self._keep(frames)
                    return
                log.error("audit: a spooled message of %d bytes is too large for one datagram and is dropped",
                          len(data))
            self._spool.remove(sequence)
            self._from_spool += 1
        for index, data in enumerate(frames):
            try:
                transport.send(data)
            except OSError as exc:
                if _too_large(exc):
                    log.error("audit: a message of %d bytes is too large for one datagram and is dropped", len(data))
                    continue
                self._unreachable(exc)
                self._keep(frames[index:])
                return
        self._reachable()

    def _keep(self, frames: list[bytes]) -> None:
        if not frames:
            return
        try:
            dropped = self._spool.add(frames)
        except OSError as exc:
            alert(log, "audit: %d messages lost: the spool %s cannot be written: %s", len(frames),
                  self._spool.directory, exc)
            return
        if dropped:
            self._overflow(dropped)

    def _overflow(self, dropped: int) -> None:
        self._dropped += dropped
        if not self._dropped_reported:
            self._dropped_reported = self._dropped
            alert(log, "audit: the spool is full (audit.spool_max_bytes %d): the %d oldest messages were dropped "
                  "while %s cannot be reached", self._spool.max_bytes, dropped, self._collector_url())

    def _unreachable(self, exc: OSError) -> None:
        self._transport.close()
        self._backoff = min(max(self._backoff * 2, BACKOFF_FIRST), BACKOFF_MAX)
        self._retry_at = time.monotonic() + self._backoff
        if not self._outage:
            self._outage = True
            log.warning("audit: the collector %s cannot be reached (%s); messages wait in %s, tried again "
                        "every %g s at most", self._collector_url(), exc or type(exc).__name__,
                        self._spool.directory, BACKOFF_MAX)

    def _reachable(self) -> None:
        if self._outage or self._from_spool:
            log.info("audit: the collector %s takes messages%s; %d spooled messages sent", self._collector_url(),
                     " again" if self._outage else "", self._from_spool)
        if self._dropped > self._dropped_reported:
            alert(log, "audit: %d messages in all were dropped from the full spool while the collector could not "
                  "be reached", self._dropped)
        self._outage = False
        self._from_spool = self._dropped = self._dropped_reported = 0
        self._backoff, self._retry_at = 0.0, 0.0

    def _collector_url(self) -> str:
        collector = self._settings.collector
        return collector.url if collector else "(none)"


def _too_large(exc: OSError) -> bool:
    return exc.errno == errno.EMSGSIZE
