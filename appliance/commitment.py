"""Storage Commitment: what the archive commits to, decided once, kept until reported (SC-*).

A request is decided the moment it arrives (SC-06, SC-07): an instance is committed when the
index holds it under the referenced SOP class, its class is one commitment covers (SC-10),
and its stored file still names it (read again here, so a file lost since it was stored is
not promised; a row exists only once its file was flushed, store/files.py). The decision is
committed to the index, durably and with every row before it, before the N-ACTION-RSP is
sent, so an acknowledged request is reported even after a crash or restart (SC-24); the row
goes when the report has been delivered or abandoned.

When each report goes is `Reporter`'s: on the N-ACTION's association first (SC-11), else
over new associations, retried and at last abandoned (SC-12..SC-20). Boxes sharing one index
(IX-02) share the kept requests: a box delivering reports over a new association claims their
rows first, so exactly one box delivers each. How a report goes over
the network is the sender's (dicom/commitment_reports.py), which the daemon hands in.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from peewee import fn

from appliance.codes import status, uids
from appliance.store.db import Index
from appliance.store.header import Unparseable, read_header
from appliance.store.models import CommitmentRequest, Instance

log = logging.getLogger("appliance.commitment")

COMMITTABLE_CLASSES = frozenset(uids.DEFAULT_STORAGE_CLASSES)  # SC-10: the 8 storage classes
DELIVERED = {status.SUCCESS: logging.INFO, status.ATTRIBUTE_LIST_ERROR: logging.WARNING}  # SC-18
# IX-02: how long a claimed report is another box's to deliver; longer than any delivery takes
# (an association's timeouts), so only a box that died while delivering leaves it to the others.
CLAIM = 600.0


@dataclass
class Report:
    """The content of one N-EVENT-REPORT (SC-08), and where it goes."""

    id: int  # of its CommitmentRequest row
    transaction_uid: str
    requester: str
    committed: list[tuple[str, str]]  # (SOP class, SOP instance)
    failed: list[tuple[str, str, int]]  # (SOP class, SOP instance, failure reason)
    attempts: int = 0

    @property
    def event_type(self) -> int:
        return 1 if not self.failed else 2  # PS3.4 J.3.3: 1 all committed, 2 failures exist


class Commitments:
    """Decides and keeps commitment requests. One per daemon; safe from association threads."""

    def __init__(self, index: Index, store_root: Path, node: str = ""):
        self.index = index
        self.store_root = store_root
        self.node = node  # this box's name (store/node.py): its requests' rows carry it

    def accept(self, transaction_uid: str, references: list[tuple[str, str]], requester: str,
               held: bool) -> Report:
        """Decide every reference now and keep the result; raises peewee's DatabaseError (and
        OSError) when it cannot be kept, which the caller answers with 0110 (SC-03). `held`:
        the N-ACTION's association will try to deliver it first (SC-11); else it is due now."""
        committed, failed = [], []
        for sop_class, sop_instance in references:
            reason = self._failure(sop_class, sop_instance)
            if reason is None:
                committed.append((sop_class, sop_instance))
            else:
                failed.append((sop_class, sop_instance, reason))
        with self.index.write():
            row = CommitmentRequest.create(
                transaction_uid=transaction_uid, requester=requester,
                received_at=datetime.datetime.now(datetime.timezone.utc), committed=json.dumps(committed),
                failed=json.dumps(failed), next_attempt=None if held else time.time(), node=self.node)
        return Report(row.id, transaction_uid, requester, committed, failed)

    def _failure(self, sop_class: str, sop_instance: str) -> int | None:
        """None if committed, else the Failure Reason (SC-08)."""
        if sop_class not in COMMITTABLE_CLASSES:
            return status.SOP_CLASS_NOT_SUPPORTED
        found = Instance.select(Instance.sop_class_uid, Instance.file_sop_instance_uid, Instance.path,
                                Instance.transfer_syntax_uid).where(
            Instance.sop_instance_uid == sop_instance).tuples().first()
        if found is None:
            return status.NO_SUCH_OBJECT_INSTANCE
        indexed_class, file_instance, path, syntax = found
        if indexed_class != sop_class:
            return status.CLASS_INSTANCE_CONFLICT
        try:
            header = read_header(self.store_root / path, syntax == uids.IMPLICIT_LE)
        except (OSError, Unparseable):
            return status.PROCESSING_FAILURE
        if (header.text(0x00080016), header.text(0x00080018)) != (indexed_class, file_instance):
            return status.PROCESSING_FAILURE
        return None

    # --- what the reporter reads and records ----------------------------------------------

    def recover(self) -> int:
        """At start: reports this box's associations were holding when it stopped are due now
        (those of a release before IX-02 carry no box)."""
        with self.index.write():
            return CommitmentRequest.update(next_attempt=time.time()).where(
                CommitmentRequest.next_attempt.is_null() & CommitmentRequest.node.in_((self.node, ""))).execute()

    def due(self, now: float, requester: str | None = None) -> list[Report]:
        """Reports waiting for a new association whose time has come (for `requester`, or all),
        oldest first, claimed for this box: no other box sharing the index takes them for CLAIM
        seconds, unless this one postpones them meanwhile (IX-02)."""
        with self.index.write():
            query = CommitmentRequest.select().where(CommitmentRequest.next_attempt <= now)
            if requester is not None:
                query = query.where(CommitmentRequest.requester == requester)
            rows = list(query.order_by(CommitmentRequest.id))
            if rows:
                CommitmentRequest.update(next_attempt=now + CLAIM, node=self.node).where(
                    CommitmentRequest.id.in_([row.id for row in rows])).execute()
        return [_report(row) for row in rows]

    def next_due(self) -> float | None:
        return CommitmentRequest.select(fn.MIN(CommitmentRequest.next_attempt)).scalar()

    def done(self, report: Report) -> None:
        """Delivered, or abandoned: nothing more to do for it."""
        with self.index.write():
            CommitmentRequest.delete().where(CommitmentRequest.id == report.id).execute()

    def postpone(self, report: Report, attempts: int, until: float) -> None:
        """A failed delivery (`attempts` counts it, SC-20) or a move to a new association."""
        with self.index.write():
            CommitmentRequest.update(attempts=attempts, next_attempt=until).where(
                CommitmentRequest.id == report.id).execute()

    def release(self, reports: list[Report]) -> None:
        """Claimed reports this box will not deliver (it is stopping): due now, for any box."""
        if reports:
            with self.index.write():
                CommitmentRequest.update(next_attempt=time.time()).where(
                    CommitmentRequest.id.in_([report.id for report in reports])).execute()

    def postpone_peer(self, requester: str, until: float) -> None:
        """Every report for `requester` waiting for a new association: not before `until`."""
        with self.index.write():
            CommitmentRequest.update(next_attempt=until).where(
                (CommitmentRequest.requester == requester) & CommitmentRequest.next_attempt.is_null(False)
                & (CommitmentRequest.next_attempt < until)).execute()

def _report(row: CommitmentRequest) -> Report:
    return Report(row.id, row.transaction_uid, row.requester, [tuple(r) for r in json.loads(row.committed)],
                  [tuple(r) for r in json.loads(row.failed)], row.attempts)


def describe(report: Report) -> str:
    return (f"transaction {report.transaction_uid} (event type {report.event_type}, {len(report.committed)} "
            f"committed, {len(report.failed)} failed)")


class SendFailed(Exception):
    """A report did not go: no association, or the report on it failed; the message says why."""


class Channel(Protocol):
    """An association to one requester, as the sender opened it."""

    where: str  # host:port, for the log

    def send(self, report: Report) -> int:
        """The N-EVENT-REPORT-RSP's status; SendFailed when there is none."""

    def close(self) -> None: ...


class Sender(Protocol):
    def open(self, requester: str) -> Channel:
        """An association from STORAGE-SCP to `requester` (SC-13, SC-26); SendFailed if none."""


class Reporter:
    """When each kept report goes. One thread delivers the reports that fall due over new
    associations (SC-12), one association at a time (SC-17), all of one requester's reports on
    it (SC-16); the first error halts it (SC-19); a failed report is tried again
    `report_retry_interval` later, at most `report_attempts` more times, then abandoned with an
    error (SC-20). Every outcome is logged (LG-04). `configure` before use, `start` once the
    index is open."""

    def __init__(self, sender: Sender):
        self.sender = sender
        self.commitments: Commitments | None = None
        self._wake = threading.Condition()
        self._due_at: float | None = None  # when the next report falls due; None: none waits
        self._stopping = False
        self._thread: threading.Thread | None = None

    def configure(self, attempts: int, interval: float, on_same_association: bool) -> None:
        self.attempts = attempts
        self.interval = interval
        self.on_same_association = on_same_association  # SC-11, SC-15
        self.wake()  # a new interval or remote AE table may make a report due

    def start(self, commitments: Commitments) -> None:
        """At start, before READY: what was held is due now; the thread reads the index only
        when a report falls due or is handed over."""
        self.commitments = commitments
        recovered = commitments.recover()
        if recovered:
            log.warning("%d commitment reports held by associations before the stop are due now", recovered)
        self._due_at = commitments.next_due()
        self._thread = threading.Thread(target=self._run, name="commitment-reports", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wake(self) -> None:
        """A report may be due now (handed over, or a reload changed the settings)."""
        with self._wake:
            self._due_at = time.time()
            self._wake.notify_all()

    # --- on the N-ACTION's association ----------------------------------------------------

    def on_association(self, report: Report, deliver: Callable[[], int | None]) -> None:
        """SC-11: `deliver()` sends `report` on the N-ACTION's association and gives the
        N-EVENT-REPORT-RSP's status, or None when it must go over a new association (SC-12)."""
        try:
            code = deliver()
        except Exception:  # never leave a kept report held by an association that is gone
            log.exception("STORAGE-SCP to %s: N-EVENT-REPORT %s on the N-ACTION's association failed",
                          report.requester, describe(report))
            code = None
        try:
            if code is None:
                self.commitments.postpone(report, report.attempts, time.time())
                self.wake()
            elif code in DELIVERED:
                log.log(DELIVERED[code], "STORAGE-SCP to %s: N-EVENT-REPORT %s on the N-ACTION's association: "
                        "status 0x%04X, delivered", report.requester, describe(report), code)
                self.commitments.done(report)
            else:
                self._failed(report, f"on the N-ACTION's association the answer was status 0x{code:04X}")
        except Exception:  # the index failed too: the report stays kept, due at the next start
            log.exception("STORAGE-SCP to %s: N-EVENT-REPORT %s cannot be handed over; it goes at the next start",
                          report.requester, describe(report))

    # --- over new associations ------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and (self._due_at is None or self._due_at > time.time()):
                    self._wake.wait(None if self._due_at is None else self._due_at - time.time())
                if self._stopping:
                    return
                self._due_at = None
            try:
                self._deliver_due()
                due = self.commitments.next_due()
            except Exception:  # the thread must outlive any failure (an index that cannot answer)
                log.exception("commitment reports: delivery round failed; next round in %g s", self.interval)
                due = time.time() + self.interval
            with self._wake:
                if due is not None and (self._due_at is None or due < self._due_at):
                    self._due_at = due

    def _deliver_due(self) -> None:
        by_peer: dict[str, list[Report]] = {}
        for report in self.commitments.due(time.time()):
            by_peer.setdefault(report.requester, []).append(report)
        unsent = {report.id for reports in by_peer.values() for report in reports}
        for requester, reports in by_peer.items():  # SC-17: one association after the other
            if self._stopping:  # what this box claimed and will not deliver is due again for any box
                self.commitments.release([r for waiting in by_peer.values() for r in waiting if r.id in unsent])
                return
            self._deliver_to(requester, reports)
            unsent.difference_update(report.id for report in reports)

    def _deliver_to(self, requester: str, reports: list[Report]) -> None:
        """SC-16: every report due for `requester`, also those that fall due meanwhile, over one
        association; SC-19: the first error ends it, and the peer's other reports wait with it."""
        try:
            channel = self.sender.open(requester)
        except SendFailed as exc:
            for report in reports:
                self._failed(report, f"no association: {exc}")
            self._put_off(requester)
            return
        try:
            while reports:
                for report in reports:
                    try:
                        code = channel.send(report)
                    except SendFailed as exc:
                        self._failed(report, f"over a new association to {channel.where}: {exc}")
                        self._put_off(requester)
                        return
                    if code not in DELIVERED:
                        self._failed(report, f"over a new association to {channel.where} the answer was status "
                                             f"0x{code:04X}")
                        self._put_off(requester)
                        return
                    log.log(DELIVERED[code], "STORAGE-SCP to %s@%s: N-EVENT-REPORT %s over a new association: "
                            "status 0x%04X, delivered", report.requester, channel.where, describe(report), code)
                    self.commitments.done(report)
                reports = self.commitments.due(time.time(), requester)
        finally:
            channel.close()

    def _failed(self, report: Report, why: str) -> None:
        """SC-20: try again `interval` later, at most `attempts` more times, then abandon."""
        failures = report.attempts + 1
        if failures > self.attempts:
            self.commitments.done(report)
            log.error("STORAGE-SCP to %s: N-EVENT-REPORT %s abandoned after %d failed attempts: %s",
                      report.requester, describe(report), failures, why)
            return
        log.error("STORAGE-SCP to %s: N-EVENT-REPORT %s failed (attempt %d of %d): %s; next in %g s",
                  report.requester, describe(report), failures, self.attempts + 1, why, self.interval)
        self.commitments.postpone(report, failures, time.time() + self.interval)

    def _put_off(self, requester: str) -> None:
        """The peer's other reports wait as long as the failed one (no failure counted for them),
        so that they travel together next time (SC-16)."""
        self.commitments.postpone_peer(requester, time.time() + self.interval)
