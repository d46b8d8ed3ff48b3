"""QUERY-RETRIEVE-SCP's C-MOVE: validate, list the instances, let STORAGE-SCU send them, report.

The loop is the service's own (D-5): pynetdicom's goes on after a failed sub-operation, ends
with B000, answers A801 when the destination cannot be reached, and opens the sub-operation
association under the listening AE's title. Here, in the association's own thread:

  A801 unknown destination (QM-04), before the identifier is looked at (QM-18);
  A900 identifier (QM-05, QM-06); A701 the index cannot list the matches (QM-13);
  Pending with the count (QM-07), a Pending after every instance sent (QM-08);
  0000 (QM-09; never B000, QM-10), A702 at the first failure (QM-11, QM-12), FE00 (QM-14).

Between two sub-operations the export takes in what the requester sent and stops at its
C-CANCEL-RQ (UL-04). When the requester's association is gone, the export goes on and only
the responses are dropped (QM-15).
"""

from __future__ import annotations

import logging
import time

from peewee import DatabaseError
from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode

from appliance import audit
from appliance.codes import status, uids
from appliance.dicom import dimse
from appliance.dicom.dimse import Message
from appliance.dicom.qr_scp import request_identifier
from appliance.dicom.storage_scu import Job, Progress
from appliance.errors import DicomStatusError
from appliance.log import alert
from appliance.query import retrieve
from appliance.query.keys import PATIENT_ROOT, STUDY_ROOT

log = logging.getLogger("appliance.qr_scp")

MODELS = {uids.PATIENT_ROOT_MOVE: PATIENT_ROOT, uids.STUDY_ROOT_MOVE: STUDY_ROOT}


class MoveSCP:
    def __init__(self, services):
        self.services = services  # server.Services: the remote AE table and STORAGE-SCU, as reloaded

    def on_move(self, association, message: Message) -> None:
        """`move`, with a last resort: an unexpected exception (a bug) must neither end the
        association thread silently nor leave the requester without a final response."""
        answer = _Answer(association, message)
        try:
            self.move(association, message, answer)
        except Exception:
            session = association.session
            session.failures += 1
            log.exception("%s: C-MOVE #%d: unexpected failure, status 0x%04X", session.prefix(),
                          message.command.message_id, status.SUBOPERATIONS_FAILED)
            answer.final(status.SUBOPERATIONS_FAILED, Progress(), "unexpected failure")

    def move(self, association, message: Message, answer: "_Answer") -> None:
        session = association.session
        session.moves += 1
        started = time.monotonic()
        request = message.command
        destination_title = request.text(dimse.MOVE_DESTINATION)
        prefix = f"{session.prefix()}: C-MOVE #{request.message_id} to {destination_title or '(none)'}"
        destination = self.services.remote_aes.get(destination_title)
        abstract_syntax, syntax = association.accepted[message.context_id]
        try:
            if destination is None:  # QM-04, QM-18: before anything else
                why = f"no remote AE {destination_title or '(none)'} with move_destination = true"
                raise DicomStatusError(status.MOVE_DESTINATION_UNKNOWN, why)
            wanted = retrieve.parse(request_identifier(message, syntax), MODELS[abstract_syntax])  # QM-05, QM-06
        except DicomStatusError as exc:  # the requester's mistake (LG-06)
            session.failures += 1
            log.warning("%s status 0x%04X: %s", prefix, exc.status, exc.why)
            answer.final(exc.status, Progress(), exc.why)
            return
        try:
            items = retrieve.instances(wanted)
        except (DatabaseError, MemoryError) as exc:  # QM-13
            session.failures += 1
            why = f"the index cannot list the matches: {type(exc).__name__}: {exc}"
            alert(log, "%s %s: status 0x%04X: %s", prefix, wanted.describe(), status.UNABLE_TO_CALCULATE_MATCHES, why)
            answer.final(status.UNABLE_TO_CALCULATE_MATCHES, Progress(), why)
            return
        ignored = f"; keys not used: {', '.join(wanted.ignored)}" if wanted.ignored else ""
        log.info("%s %s: %d instances to send%s", prefix, wanted.describe(), len(items), ignored)
        answer.pending(Progress(remaining=len(items)))  # QM-07
        # AU-01: Begin Transferring, then DICOM Instances Transferred for what was sent and what failed.
        audited = audit.active() and bool(items)
        if audited:
            parties = (self.services.exports.settings.ae_title.strip(), destination.ae_title, destination.host,
                       session.title, session.ip)
            audit.export_begins(*parties, items)
        progress = self.services.exports.export(Job(destination, items, session.title, request.message_id,
                                                    answer.cancelled, answer.pending))
        if audited:
            failed = items[progress.completed:] if progress.failed_uids else []
            audit.export_ended(*parties, items[:progress.completed], failed, progress.failure)
        if progress.cancelled:
            code = status.CANCEL
        elif progress.failure:
            session.failures += 1
            code = status.SUBOPERATIONS_FAILED
        else:
            code = status.SUCCESS
        answer.final(code, progress, progress.failure)
        log.log(logging.ERROR if code == status.SUBOPERATIONS_FAILED else logging.INFO,
                "%s: %d sent (%d with warnings), %d failed or not sent, in %.2f s, status 0x%04X%s%s", prefix,
                progress.completed, progress.warnings, len(progress.failed_uids), time.monotonic() - started, code,
                "" if answer.delivered else " (the requester's association is gone: not delivered)",
                f": {progress.failure}" if progress.failure else "")


class _Answer:
    """The C-MOVE-RSPs of one request."""

    def __init__(self, association, message: Message):
        self.association = association
        self.message = message
        self.delivered = True

    def cancelled(self) -> bool:
        return self.association.cancelled(self.message.command.message_id)

    def pending(self, progress: Progress) -> None:
        self._send(status.PENDING, progress, remaining=True)

    def final(self, code: int, progress: Progress, why: str = "") -> None:
        """The final response; `why` a failure's reason, as logged, for its Error Comment (UL-05)."""
        # PS3.4 C.4.2.1.5/6: Remaining only in Pending and Cancel responses; the Failed SOP
        # Instance UID List with a failure or a cancel (empty then: a cancel fails nothing).
        failed_list = code in (status.SUBOPERATIONS_FAILED, status.CANCEL)
        self._send(code, progress, remaining=code == status.CANCEL, failed_list=failed_list, why=why)

    def _send(self, code: int, progress: Progress, remaining: bool, failed_list: bool = False, why: str = "") -> None:
        counted = code in (status.PENDING, status.CANCEL, status.SUCCESS, status.SUBOPERATIONS_FAILED)
        counts = dimse.move_counts(progress.remaining if remaining else None, progress.completed,
                                   len(progress.failed_uids), progress.warnings) if counted else {}
        identifier = None
        if failed_list:
            dataset = Dataset()
            dataset.FailedSOPInstanceUIDList = progress.failed_uids
            identifier = encode(dataset, True, True)
        # QM-15: when the requester's association is gone, nothing is sent; the export goes on.
        if not self.association.respond(self.message, code, identifier, comment=why, extra=counts):
            self.delivered = False
