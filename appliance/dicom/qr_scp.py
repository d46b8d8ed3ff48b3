"""QUERY-RETRIEVE-SCP protocol adapter: C-FIND events -> appliance.query, statuses -> the wire.

pynetdicom's C-FIND loop wants a pydicom Dataset per match and spends about 2 ms on each
(identifier and command set through pydicom, a hand-over to its reader thread). This handler
sends each Pending itself, on the same association: the identifier encoded by
`query.responses`, the command set encoded once (`pdata`), written through the association's
sender (`framing`, which serialises writes). It yields only the final status, which
pynetdicom sends after them (QF-04). Rows come straight off the SQLite cursor; before each response the handler
looks for a C-CANCEL-RQ (pynetdicom's reader thread files it while we match, QF-19) and stops
if the association is gone.
"""

from __future__ import annotations

import logging
import time

from peewee import DatabaseError
from pynetdicom import evt

from appliance.codes import status, uids
from appliance.dicom import pdata
from appliance.dicom.associations import Tracker
from appliance.errors import DicomStatusError
from appliance.log import alert
from appliance.query import identifier, matching
from appliance.query.keys import PATIENT_ROOT, STUDY_ROOT
from appliance.query.responses import Responses

log = logging.getLogger("appliance.qr_scp")

MODELS = {uids.PATIENT_ROOT_FIND: PATIENT_ROOT, uids.STUDY_ROOT_FIND: STUDY_ROOT}


class QueryRetrieveSCP:
    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def handlers(self) -> list:
        return [(evt.EVT_C_FIND, self.on_c_find)]

    def on_c_find(self, event):
        session = self.tracker.session(event.assoc)
        session.queries += 1
        started = time.monotonic()
        prefix = f"{session.prefix()}: C-FIND #{event.request.MessageID}"
        try:
            query = identifier.parse(_request_identifier(event), MODELS[event.context.abstract_syntax])
        except DicomStatusError as exc:  # A900 (QF-17), C001 (QF-15/16): LG-06
            session.failures += 1
            log.error("%s status 0x%04X: %s", prefix, exc.status, exc.why)
            yield exc.status, None
            return
        pending = _Pending(event, status.PENDING_UNSUPPORTED_KEYS if query.unsupported else status.PENDING)
        responses = Responses(query)
        matches = 0
        try:
            for row in matching.rows(query):
                if event.is_cancelled:
                    log.info("%s %s: cancelled by the peer after %d matches, status 0x%04X", prefix,
                             query.describe(), matches, status.CANCEL)
                    yield status.CANCEL, None
                    return
                if not event.assoc.is_established:
                    return  # released or aborted meanwhile; the tracker logs how it ended
                pending.send(responses.identifier(row))
                matches += 1
        except (DatabaseError, MemoryError) as exc:  # QF-18: the index cannot answer now
            session.failures += 1
            alert(log, "%s %s: status 0x%04X after %d matches: the index cannot answer: %s: %s", prefix,
                  query.describe(), status.OUT_OF_RESOURCES, matches, type(exc).__name__, exc)
            yield status.OUT_OF_RESOURCES, None
            return
        except Exception:
            session.failures += 1
            log.exception("%s %s: unexpected failure after %d matches, status 0x%04X", prefix, query.describe(),
                          matches, status.UNEXPECTED_FIND_FAILURE)
            yield status.UNEXPECTED_FIND_FAILURE, None
            return
        unsupported = f"; not used for matching (0x{pending.code:04X}): {'; '.join(query.unsupported)}" \
            if query.unsupported else ""
        log.info("%s %s: %d matches in %.1f ms, status 0x%04X%s", prefix, query.describe(), matches,
                 (time.monotonic() - started) * 1000, status.SUCCESS, unsupported)
        yield status.SUCCESS, None


class _Pending:
    """Sends the C-FIND-RSP Pending messages of one request, each with an encoded identifier."""

    def __init__(self, event, code: int):
        self.code = code
        self.command = pdata.find_pending_command(event.request, code)
        self.context_id = event.context.context_id
        self.max_pdu = event.assoc.dimse.maximum_pdu_size
        self.send_bytes = event.assoc.dul.socket.send  # framing.Framing.send

    def send(self, identifier: bytes) -> None:
        self.send_bytes(pdata.message_pdus(self.context_id, self.command, identifier, self.max_pdu))


def _request_identifier(event):
    try:
        return event.identifier
    except Exception as exc:  # pynetdicom's decode of bytes the peer sent
        raise DicomStatusError(status.IDENTIFIER_MISMATCH, f"identifier cannot be decoded: {exc}") from exc
