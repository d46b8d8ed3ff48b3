"""N-EVENT-REPORTs of Storage Commitment: on the N-ACTION's association, else over new ones.

Default (SC-11): once the N-ACTION-RSP is queued, the report follows on the same association,
through pynetdicom's DIMSE provider so that it cannot overtake the response, and the
association thread waits for the N-EVENT-REPORT-RSP (requests that arrive meanwhile, such as
a further N-ACTION (SC-22), are served afterwards). When the peer has released or aborted,
answers with an A-RELEASE-RQ, or does not answer within the AE's idle timeout (then A-ABORT,
SC-23), the report becomes due for a new association at once (SC-12; not a retry, D-6).

The reporter thread delivers due reports over associations STORAGE-SCP opens to the
requester's entry in the remote AE table (SC-13), one association at a time (SC-17), all of
one peer's reports on one association (SC-16), proposing SCPM with SCP/SCU role selection
(PC-13, SC-26) through `requestor`. The first error halts that association (SC-19); a failed
report is tried again `report_retry_interval` later, at most `report_attempts` more times,
then abandoned with an error (SC-20). Every outcome is logged (LG-04).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.dimse_primitives import N_EVENT_REPORT
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT, A_RELEASE

from appliance import __version__
from appliance.commitment import Commitments, Report
from appliance.config.model import Config
from appliance.codes import status, uids
from appliance.dicom import pdata
from appliance.dicom.associations import in_data_transfer
from appliance.dicom.requestor import Association, Failed, Local, Proposal

log = logging.getLogger("appliance.commitment")

DELIVERED = {status.SUCCESS: logging.INFO, status.ATTRIBUTE_LIST_ERROR: logging.WARNING}  # SC-18
_N_EVENT_REPORT_RSP = 0x8100
_PROPOSALS = [Proposal(1, uids.STORAGE_COMMITMENT_PUSH, (uids.EXPLICIT_LE,), as_scp=True),
              Proposal(3, uids.STORAGE_COMMITMENT_PUSH, (uids.IMPLICIT_LE,), as_scp=True)]  # SC-26
_POLL = 0.05  # seconds between looks at the association while waiting for an N-EVENT-REPORT-RSP


def event_information(report: Report) -> Dataset:
    """SC-08: Transaction UID, Referenced SOP Sequence (committed), Failed SOP Sequence."""
    ds = Dataset()
    ds.TransactionUID = report.transaction_uid
    if report.committed:
        ds.ReferencedSOPSequence = Sequence([_item(c, i) for c, i in report.committed])
    if report.failed:
        ds.FailedSOPSequence = Sequence([_item(c, i, reason) for c, i, reason in report.failed])
    return ds


def _item(sop_class: str, sop_instance: str, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    if reason is not None:
        item.FailureReason = reason
    return item


def describe(report: Report) -> str:
    return (f"transaction {report.transaction_uid} (event type {report.event_type}, {len(report.committed)} "
            f"committed, {len(report.failed)} failed)")


class Reports:
    """One per daemon, kept across reloads. `configure` before use, `start` once the index is open."""

    def __init__(self):
        self.commitments: Commitments | None = None
        self._held: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # assoc -> [Report]
        self._sent: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # assoc -> last Message ID
        self._wake = threading.Condition()
        self._due_at: float | None = None  # when the next report falls due; None: none waits
        self._stopping = False
        self._thread: threading.Thread | None = None

    def configure(self, config: Config) -> None:
        scp = config.storage_scp
        self.on_same_association = not scp.always_new_association_for_reports  # SC-11, SC-15
        self.attempts = scp.report_attempts
        self.interval = scp.report_retry_interval
        self.answer_timeout = scp.idle_timeout
        self.timeouts = config.timeouts
        self.remote_aes = {ae.ae_title.strip(): ae for ae in config.remote_aes if ae.commitment}
        self.local = Local(scp.ae_title.strip(), scp.max_pdu_size, config.network.max_pdu_send,
                           config.network.socket_buffer_size, uids.IMPLEMENTATION_UID_SCP,
                           uids.implementation_version_name(__version__))
        self.wake()  # a new interval or remote AE table may make a report due

    # --- on the N-ACTION's association ----------------------------------------------------

    def accepted(self, assoc, report: Report) -> None:
        """A request was kept and will be acknowledged: report it on `assoc` or over a new one."""
        if self.on_same_association:
            self._held.setdefault(assoc, []).append(report)
        else:
            self.wake()

    def attach(self, assoc) -> None:
        """EVT_CONN_OPEN on STORAGE-SCP: after an N-ACTION is answered, its report follows."""
        serve_request = assoc._serve_request

        def route(msg, context_id: int) -> None:
            serve_request(msg, context_id)  # the N-ACTION-RSP is queued when this returns
            for report in self._held.pop(assoc, []):
                try:
                    self._on_association(assoc, context_id, report, route)
                except Exception:  # the index failed too: the report stays kept, due at the next start
                    log.exception("STORAGE-SCP to %s: N-EVENT-REPORT %s cannot be handed over; it goes at the "
                                  "next start", report.requester, describe(report))

        assoc._serve_request = route

    def _on_association(self, assoc, context_id: int, report: Report, serve) -> None:
        waiting: list = []  # requests that came while the report was out, served after it
        try:
            code = self._send_on(assoc, context_id, report, waiting)
            if code is None:
                self._to_new_association(report)
            elif code in DELIVERED:
                log.log(DELIVERED[code], "STORAGE-SCP to %s: N-EVENT-REPORT %s on the N-ACTION's association: "
                        "status 0x%04X, delivered", report.requester, describe(report), code)
                self.commitments.done(report)
            else:
                self._failed(report, f"on the N-ACTION's association the answer was status 0x{code:04X}")
        except Exception:  # never leave a kept report held by an association that is gone
            log.exception("STORAGE-SCP to %s: N-EVENT-REPORT %s on the N-ACTION's association failed",
                          report.requester, describe(report))
            self._to_new_association(report)
        for message_context, message in waiting:
            serve(message, message_context)

    def _send_on(self, assoc, context_id: int, report: Report, waiting: list) -> int | None:
        """The N-EVENT-REPORT-RSP's status, or None when the report must go over a new association."""
        if not in_data_transfer(assoc):
            return None
        syntax = assoc._accepted_cx[context_id].transfer_syntax[0]
        request = N_EVENT_REPORT()
        request.MessageID = message_id = self._sent.get(assoc, 0) % 0xFFFF + 1
        self._sent[assoc] = message_id
        request.AffectedSOPClassUID = uids.STORAGE_COMMITMENT_PUSH
        request.AffectedSOPInstanceUID = uids.STORAGE_COMMITMENT_PUSH_INSTANCE
        request.EventTypeID = report.event_type
        request.EventInformation = BytesIO(encode(event_information(report), syntax.is_implicit_VR, True))
        assoc.dimse.send_msg(request, context_id)
        messages = assoc.dimse.msg_queue
        deadline = time.monotonic() + self.answer_timeout
        while True:
            message_context, message = assoc.dimse.get_msg(block=False)
            if isinstance(message, N_EVENT_REPORT) and not message.is_valid_request \
                    and message.MessageIDBeingRespondedTo == message_id:
                return message.Status
            if message is not None:
                waiting.append((message_context, message))
                continue
            if _release_requested(assoc):  # SC-12: the reactor answers the release
                log.info("STORAGE-SCP to %s: the peer answered N-EVENT-REPORT %s with a release request; "
                         "it goes over a new association", report.requester, describe(report))
                return None
            if not in_data_transfer(assoc) or isinstance(assoc.dul.peek_next_pdu(), (A_ABORT, A_P_ABORT)):
                return None
            if time.monotonic() > deadline:  # SC-23
                log.error("STORAGE-SCP to %s: no N-EVENT-REPORT-RSP within %g s (storage_scp.idle_timeout); "
                          "association aborted, the report goes over a new association", report.requester,
                          self.answer_timeout)
                assoc.abort()
                return None
            with messages.not_empty:
                if not messages._qsize():
                    messages.not_empty.wait(_POLL)

    def _to_new_association(self, report: Report) -> None:
        self.commitments.postpone(report, report.attempts, time.time())
        self.wake()

    # --- over new associations ------------------------------------------------------------

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
        for requester, reports in by_peer.items():  # SC-17: one association after the other
            if self._stopping:
                return
            self._deliver_to(requester, reports)

    def _deliver_to(self, requester: str, reports: list[Report]) -> None:
        """SC-16: every report due for `requester`, also those that fall due meanwhile, over one
        association; SC-19: the first error ends it, and the peer's other reports wait with it."""
        remote = self.remote_aes.get(requester)
        if remote is None:  # SC-13
            for report in reports:
                self._failed(report, f"{requester} is not a remote AE with commitment = true")
            return
        try:
            association = Association.request(remote.host, remote.port, requester, self.local, _PROPOSALS,
                                              self.timeouts)
            if not association.accepted:
                association.release_quietly()
                raise Failed(f"{requester} accepted no Storage Commitment context with STORAGE-SCP as SCP")
        except Failed as exc:
            for report in reports:
                self._failed(report, f"no association: {exc}")
            self._put_off(requester)
            return
        where = f"{remote.host}:{remote.port}"
        number = 0
        while reports:
            for report in reports:
                number = number % 0xFFFF + 1
                why = self._send_over(association, number, report, where)
                if why:
                    self._failed(report, why)
                    association.release_quietly()  # after a failure status; a no-op after an abort
                    self._put_off(requester)
                    return
            reports = [r for r in self.commitments.due(time.time()) if r.requester == requester]
        association.release_quietly()

    def _send_over(self, association: Association, number: int, report: Report, where: str) -> str:
        """One report over a new association: "" when delivered, else why not."""
        context_id, (_, syntax) = next(iter(association.accepted.items()))
        try:
            association.send_bytes_message(
                context_id, pdata.event_report_command(number, uids.STORAGE_COMMITMENT_PUSH,
                                                       uids.STORAGE_COMMITMENT_PUSH_INSTANCE, report.event_type),
                encode(event_information(report), syntax == uids.IMPLICIT_LE, True))
            answer = association.receive_command(self.answer_timeout, "N-EVENT-REPORT-RSP",
                                                 "storage_scp.idle_timeout")
        except Failed as exc:
            return f"over a new association to {where}: {exc}"
        code = pdata.command_uint16(answer, 0x0900)
        if (pdata.command_uint16(answer, 0x0100), pdata.command_uint16(answer, 0x0120)) \
                != (_N_EVENT_REPORT_RSP, number) or code is None:
            association.abort()
            return f"over a new association to {where}: the answer was not the N-EVENT-REPORT-RSP"
        if code not in DELIVERED:
            return f"over a new association to {where} the answer was status 0x{code:04X}"
        log.log(DELIVERED[code], "STORAGE-SCP to %s@%s: N-EVENT-REPORT %s over a new association: status 0x%04X, "
                "delivered", report.requester, where, describe(report), code)
        self.commitments.done(report)
        return ""

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


def _release_requested(assoc) -> bool:
    """pynetdicom's acse.is_release_requested() takes the request off the queue; the reactor,
    which answers it, must still find it there."""
    primitive = assoc.dul.peek_next_pdu()
    return isinstance(primitive, A_RELEASE) and primitive.result is None
