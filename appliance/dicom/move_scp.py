"""QUERY-RETRIEVE-SCP's C-MOVE: validate, list the instances, let STORAGE-SCU send them, report.

pynetdicom's C-MOVE loop cannot be used (D-5): it goes on after a failed sub-operation, ends
with B000, answers A801 when the destination cannot be reached, and opens the sub-operation
association under the listening AE's title. Its handler API has no way around that (the
loop, not the handler, opens the association and counts), and the Q/R SOP classes are bound
to its own service class. So `attach` takes each C-MOVE-RQ off the association before
pynetdicom's service class sees it (as `framing` and `wakeups` do, by replacing an instance
attribute) and runs it here, in the association's own thread:

  A801 unknown destination (QM-04), before the identifier is looked at (QM-18);
  A900 identifier (QM-05, QM-06); A701 the index cannot list the matches (QM-13);
  Pending with the count (QM-07), a Pending after every instance sent (QM-08);
  0000 (QM-09; never B000, QM-10), A702 at the first failure (QM-11, QM-12), FE00 (QM-14).

Responses are encoded here (`pdata`) and written through framing's sender, one per instance
sent. When the requester's association is gone, the export goes on and only the responses are
dropped (QM-15).
"""

from __future__ import annotations

import logging
import time

from peewee import DatabaseError
from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_MOVE
from pynetdicom.dsutils import decode, encode

from appliance.codes import status, uids
from appliance.dicom import pdata
from appliance.dicom.associations import Tracker, in_data_transfer
from appliance.dicom.storage_scu import Job, Progress
from appliance.errors import DicomStatusError
from appliance.log import alert
from appliance.query import retrieve
from appliance.query.keys import PATIENT_ROOT, STUDY_ROOT

log = logging.getLogger("appliance.qr_scp")

MODELS = {uids.PATIENT_ROOT_MOVE: PATIENT_ROOT, uids.STUDY_ROOT_MOVE: STUDY_ROOT}


class MoveSCP:
    def __init__(self, tracker: Tracker, services):
        self.tracker = tracker
        self.services = services  # server.Services: the remote AE table and STORAGE-SCU, as reloaded

    def attach(self, assoc) -> None:
        """EVT_CONN_OPEN: C-MOVE-RQs on a MOVE context come here instead of pynetdicom's loop."""
        serve_request = assoc._serve_request

        def route(msg, context_id: int) -> None:
            context = assoc._accepted_cx.get(context_id)
            if (isinstance(msg, C_MOVE) and msg.is_valid_request and context is not None
                    and context.abstract_syntax in MODELS and not assoc._sent_release):
                assoc.dimse.cancel_req = {}  # as pynetdicom does: only a cancel sent from now on counts
                self.serve(assoc, msg, context_id, MODELS[context.abstract_syntax])
            else:
                serve_request(msg, context_id)

        assoc._serve_request = route

    def serve(self, assoc, request: C_MOVE, context_id: int, model) -> None:
        """on_c_move, with a last resort: an unexpected exception (a bug) must neither end the
        association thread silently nor leave the requester without a final response."""
        answer = _Answer(assoc, request, context_id)
        try:
            self.on_c_move(assoc, request, answer, model)
        except Exception:
            session = self.tracker.session(assoc)
            session.failures += 1
            log.exception("%s: C-MOVE #%d: unexpected failure, status 0x%04X", session.prefix(), request.MessageID,
                          status.SUBOPERATIONS_FAILED)
            answer.final(status.SUBOPERATIONS_FAILED, Progress())

    def on_c_move(self, assoc, request: C_MOVE, answer: "_Answer", model) -> None:
        session = self.tracker.session(assoc)
        session.moves += 1
        started = time.monotonic()
        destination_title = str(request.MoveDestination or "").strip()
        prefix = f"{session.prefix()}: C-MOVE #{request.MessageID} to {destination_title or '(none)'}"
        destination = self.services.remote_aes.get(destination_title)
        if destination is None:  # QM-04, QM-18: before anything else
            session.failures += 1
            log.error("%s status 0x%04X: move destination unknown (no remote AE of that title with move_destination = true)", prefix,
                      status.MOVE_DESTINATION_UNKNOWN)
            answer.final(status.MOVE_DESTINATION_UNKNOWN, Progress())
            return
        try:
            wanted = retrieve.parse(request_identifier(request), model)
        except DicomStatusError as exc:  # QM-05, QM-06
            session.failures += 1
            log.error("%s status 0x%04X: %s", prefix, exc.status, exc.why)
            answer.final(exc.status, Progress())
            return
        try:
            items = retrieve.instances(wanted)
        except (DatabaseError, MemoryError) as exc:  # QM-13
            session.failures += 1
            alert(log, "%s %s: status 0x%04X: the index cannot list the matches: %s: %s", prefix, wanted.describe(),
                  status.UNABLE_TO_CALCULATE_MATCHES, type(exc).__name__, exc)
            answer.final(status.UNABLE_TO_CALCULATE_MATCHES, Progress())
            return
        ignored = f"; keys not used: {', '.join(wanted.ignored)}" if wanted.ignored else ""
        log.info("%s %s: %d instances to send%s", prefix, wanted.describe(), len(items), ignored)
        answer.pending(Progress(remaining=len(items)))  # QM-07
        progress = self.services.exports.export(Job(destination, items, session.title, request.MessageID,
                                                    answer.cancelled, answer.pending))
        if progress.cancelled:
            code = status.CANCEL
        elif progress.failure:
            session.failures += 1
            code = status.SUBOPERATIONS_FAILED
        else:
            code = status.SUCCESS
        answer.final(code, progress)
        log.log(logging.ERROR if code == status.SUBOPERATIONS_FAILED else logging.INFO,
                "%s: %d sent (%d with warnings), %d failed or not sent, in %.2f s, status 0x%04X%s", prefix,
                progress.completed, progress.warnings, len(progress.failed_uids), time.monotonic() - started, code,
                "" if answer.delivered else " (the requester's association is gone: not delivered)")


class _Answer:
    """The C-MOVE-RSPs of one request."""

    def __init__(self, assoc, request: C_MOVE, context_id: int):
        self.assoc = assoc
        self.request = request
        self.context_id = context_id
        self.max_pdu = assoc.dimse.maximum_pdu_size  # the requester's maximum (as for C-FIND)
        self.delivered = True

    def cancelled(self) -> bool:
        return self.request.MessageID in self.assoc.dimse.cancel_req

    def pending(self, progress: Progress) -> None:
        self._send(status.PENDING, progress, remaining=True)

    def final(self, code: int, progress: Progress) -> None:
        # PS3.4 C.4.2.1.5/6: Remaining only in Pending and Cancel responses; the Failed SOP
        # Instance UID List with a failure or a cancel (empty then: a cancel fails nothing).
        failed_list = code in (status.SUBOPERATIONS_FAILED, status.CANCEL)
        self._send(code, progress, remaining=code == status.CANCEL, failed_list=failed_list)

    def _send(self, code: int, progress: Progress, remaining: bool, failed_list: bool = False) -> None:
        if not self._requester_present():
            self.delivered = False
            return
        counted = code in (status.PENDING, status.CANCEL, status.SUCCESS, status.SUBOPERATIONS_FAILED)
        counts = (progress.remaining if remaining else None, progress.completed, len(progress.failed_uids),
                  progress.warnings) if counted else (None, None, None, None)
        command = pdata.move_response_command(self.request.AffectedSOPClassUID, self.request.MessageID, code, *counts,
                                              identifier=failed_list)
        identifier = b""
        if failed_list:
            dataset = Dataset()
            dataset.FailedSOPInstanceUIDList = progress.failed_uids
            identifier = encode(dataset, True, True)
        # Through framing's sender, which serialises writes and restarts the idle timer
        # (CF-24), like the C-FIND Pendings: pynetdicom's send_msg took a third of the
        # association thread's time per instance.
        self.assoc.dul.socket.send(pdata.message_pdus(self.context_id, command, identifier, self.max_pdu)
                                   if failed_list else pdata.command_pdus(self.context_id, command, self.max_pdu))

    def _requester_present(self) -> bool:
        """QM-15: still in data transfer (Sta6); otherwise the export goes on unanswered."""
        return in_data_transfer(self.assoc)


def request_identifier(request: C_MOVE) -> Dataset:
    """The decoded identifier of a C-MOVE-RQ; A900 when its bytes cannot be decoded (QM-06)."""
    try:
        return decode(request.Identifier, True, True)
    except Exception as exc:  # pynetdicom/pydicom on bytes the peer sent
        raise DicomStatusError(status.IDENTIFIER_MISMATCH, f"identifier cannot be decoded: {exc}") from exc
