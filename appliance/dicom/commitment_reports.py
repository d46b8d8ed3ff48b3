"""How Storage Commitment N-EVENT-REPORTs go over the network: the sender `commitment.Reporter`
is given by the daemon.

On the N-ACTION's association (SC-11, `on_association`): right after the N-ACTION-RSP, in the
association's thread, the report goes out and the thread waits for its N-EVENT-REPORT-RSP
(requests that arrive meanwhile, such as a further N-ACTION, SC-22, are served after it).
When the peer has released or aborted, answers with an A-RELEASE-RQ, or does not answer within
the AE's idle timeout (then A-ABORT, SC-23), the report goes over a new association (SC-12;
not a retry, D-6).

Over a new association (`open`): from STORAGE-SCP's title to the requester's entry in the
remote AE table (SC-13), proposing SCPM with SCP/SCU role selection (PC-13, SC-26), through
`requestor`.
"""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import encode

from appliance import __version__
from appliance.codes import uids
from appliance.commitment import Report, SendFailed, describe
from appliance.config.model import Config
from appliance.dicom import dimse
from appliance.dicom.dimse import Command
from appliance.dicom.pdu import Proposal
from appliance.dicom.requestor import Association, Failed, Local, tls_towards

log = logging.getLogger("appliance.commitment")

_PROPOSALS = [Proposal(1, uids.STORAGE_COMMITMENT_PUSH, (uids.EXPLICIT_LE,), as_scp=True),
              Proposal(3, uids.STORAGE_COMMITMENT_PUSH, (uids.IMPLICIT_LE,), as_scp=True)]  # SC-26


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


def _request(message_id: int, report: Report, syntax: str) -> tuple[bytes, bytes]:
    """The N-EVENT-REPORT-RQ's command set and Event Information in `syntax`."""
    command = dimse.event_report_request(message_id, uids.STORAGE_COMMITMENT_PUSH,
                                         uids.STORAGE_COMMITMENT_PUSH_INSTANCE, report.event_type)
    return command, encode(event_information(report), syntax == uids.IMPLICIT_LE, True)


def _status(answer: Command, message_id: int) -> int | None:
    """The status of an N-EVENT-REPORT-RSP to `message_id`, None when `answer` is not one."""
    if (answer.field, answer.message_id) != (dimse.N_EVENT_REPORT_RQ | dimse.RESPONSE, message_id):
        return None
    return answer.us(dimse.STATUS)


class ReportSender:
    """One per daemon, kept across reloads; `configure` before use."""

    def configure(self, config: Config) -> None:
        scp = config.storage_scp
        self.config = config  # the TLS files, for remote AEs with tls = true (SE-10)
        self.answer_timeout = scp.idle_timeout
        self.timeouts = config.timeouts
        self.remote_aes = {ae.ae_title.strip(): ae for ae in config.remote_aes if ae.commitment}
        self.local = Local(scp.ae_title.strip(), scp.max_pdu_size, config.network.max_pdu_send,
                           config.network.socket_buffer_size, uids.IMPLEMENTATION_UID_SCP,
                           uids.implementation_version_name(__version__))

    def on_association(self, association, context_id: int, report: Report) -> int | None:
        """The report on the N-ACTION's association: the N-EVENT-REPORT-RSP's status, or None
        when it must go over a new association."""
        message_id = association.next_message_id()
        command, data = _request(message_id, report, association.accepted[context_id][1])
        answer = association.exchange(context_id, command, data, message_id, self.answer_timeout)
        if isinstance(answer, Command):
            code = _status(answer, message_id)
            if code is not None:
                return code
            association.abort("the answer to the N-EVENT-REPORT-RQ was not its N-EVENT-REPORT-RSP")
        elif answer == "release":
            log.info("STORAGE-SCP to %s: the peer answered N-EVENT-REPORT %s with a release request; it goes over "
                     "a new association", report.requester, describe(report))
        elif answer == "timeout":
            log.error("STORAGE-SCP to %s: no N-EVENT-REPORT-RSP within %g s (storage_scp.idle_timeout); association "
                      "aborted, the report goes over a new association", report.requester, self.answer_timeout)
        return None

    def open(self, requester: str) -> "_Channel":
        remote = self.remote_aes.get(requester)
        if remote is None:  # SC-13
            raise SendFailed(f"{requester} is not a remote AE with commitment = true")
        try:
            association = Association.request(remote.host, remote.port, requester, self.local, _PROPOSALS,
                                              self.timeouts, tls_towards(remote, self.config), remote.tls_subject)
        except Failed as exc:
            raise SendFailed(str(exc)) from None
        if not association.accepted:
            association.release_quietly()
            raise SendFailed(f"{requester} accepted no Storage Commitment context with STORAGE-SCP as SCP")
        return _Channel(association, f"{remote.host}:{remote.port}", self.answer_timeout)


class _Channel:
    def __init__(self, association: Association, where: str, answer_timeout: float):
        self.association = association
        self.where = where
        self.answer_timeout = answer_timeout
        self.number = 0

    def send(self, report: Report) -> int:
        self.number = self.number % 0xFFFF + 1
        context_id, (_, syntax) = next(iter(self.association.accepted.items()))
        command, data = _request(self.number, report, syntax)
        try:
            self.association.send_bytes_message(context_id, command, data)
            answer = self.association.receive_command(self.answer_timeout, "N-EVENT-REPORT-RSP",
                                                      "storage_scp.idle_timeout")
        except Failed as exc:
            raise SendFailed(str(exc)) from None
        code = _status(answer, self.number)
        if code is None:
            self.association.abort()
            raise SendFailed("the answer was not the N-EVENT-REPORT-RSP")
        return code

    def close(self) -> None:
        self.association.release_quietly()  # after a failure status too; a no-op after an abort
