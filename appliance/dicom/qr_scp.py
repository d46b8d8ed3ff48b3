"""QUERY-RETRIEVE-SCP protocol adapter: C-FIND-RQ -> appliance.query, responses -> the wire.

Rows come straight off the SQLite cursor; each match becomes one Pending whose identifier
`query.responses` encodes and whose command set is encoded once per request. Before each
response the handler takes in what the peer sent meanwhile and stops at a C-CANCEL-RQ (QF-19,
UL-04) or when the association is gone. The final status follows the Pendings (QF-04).
"""

from __future__ import annotations

import logging
import time
from io import BytesIO

from peewee import DatabaseError
from pynetdicom.dsutils import decode

from appliance import audit
from appliance.codes import status, uids
from appliance.dicom import dimse
from appliance.dicom.dimse import Message
from appliance.errors import DicomStatusError
from appliance.log import alert
from appliance.query import identifier, matching
from appliance.query.keys import PATIENT_ROOT, STUDY_ROOT
from appliance.query.responses import Responses

log = logging.getLogger("appliance.qr_scp")

MODELS = {uids.PATIENT_ROOT_FIND: PATIENT_ROOT, uids.STUDY_ROOT_FIND: STUDY_ROOT}


def on_find(association, message: Message) -> None:
    """The handler: `find`, with a last resort, so that a bug neither ends the association
    thread nor leaves the requester without a final response. UL-05: a failure's Error Comment
    is the reason its log line gives."""
    comment = ""
    try:
        code = find(association, message)
    except DicomStatusError as exc:  # refused, and logged by `find`
        code, comment = exc.status, exc.why
    except Exception:
        association.session.failures += 1
        log.exception("%s: C-FIND #%d: unexpected failure, status 0x%04X", association.session.prefix(),
                      message.command.message_id, status.UNEXPECTED_FIND_FAILURE)
        code, comment = status.UNEXPECTED_FIND_FAILURE, "unexpected failure"
    if code is not None:
        association.respond(message, code, comment=comment)
    # AU-01: a Query message per C-FIND, after its answer; a refused identifier is a minor failure.
    if audit.active():
        abstract_syntax, syntax = association.accepted[message.context_id]
        failed = code is not None and code not in (status.SUCCESS, status.CANCEL)
        audit.query(association.called, association.calling, association.session.ip, abstract_syntax,
                    message.data, syntax, f"C-FIND status 0x{code:04X}" if failed else "")


def find(association, message: Message) -> int | None:
    """Send the Pendings; the final status (None: the association has gone meanwhile), or
    DicomStatusError for a failure, logged."""
    session = association.session
    session.queries += 1
    started = time.monotonic()
    request = message.command
    prefix = f"{session.prefix()}: C-FIND #{request.message_id}"
    abstract_syntax, syntax = association.accepted[message.context_id]
    try:
        query = identifier.parse(request_identifier(message, syntax), MODELS[abstract_syntax])
    except DicomStatusError as exc:  # A900 (QF-17), C001 (QF-15/16), LG-06: the requester's mistake
        session.failures += 1
        log.warning("%s status 0x%04X: %s", prefix, exc.status, exc.why)
        raise
    code = status.PENDING_UNSUPPORTED_KEYS if query.unsupported else status.PENDING
    pending = dimse.response(request, code, data_set=True)
    responses = Responses(query)
    matches = 0
    try:
        for row in matching.rows(query):
            if association.cancelled(request.message_id):
                log.info("%s %s: cancelled by the peer after %d matches, status 0x%04X", prefix, query.describe(),
                         matches, status.CANCEL)
                return status.CANCEL
            if not association.send(message.context_id, pending, responses.identifier(row)):
                return None  # released or aborted meanwhile; its end is logged
            matches += 1
    except (DatabaseError, MemoryError) as exc:  # QF-18: the index cannot answer now
        session.failures += 1
        why = f"the index cannot answer: {type(exc).__name__}: {exc}"
        alert(log, "%s %s: status 0x%04X after %d matches: %s", prefix, query.describe(), status.OUT_OF_RESOURCES,
              matches, why)
        raise DicomStatusError(status.OUT_OF_RESOURCES, why) from exc
    unsupported = f"; not used for matching (0x{code:04X}): {'; '.join(query.unsupported)}" \
        if query.unsupported else ""
    log.info("%s %s: %d matches in %.1f ms, status 0x%04X%s", prefix, query.describe(), matches,
             (time.monotonic() - started) * 1000, status.SUCCESS, unsupported)
    return status.SUCCESS


def request_identifier(message: Message, syntax: str):
    """The decoded identifier of a C-FIND-RQ or C-MOVE-RQ; DicomStatusError A900 when there is
    none or its bytes cannot be decoded (QF-17, QM-06)."""
    if message.data is None:
        raise DicomStatusError(status.IDENTIFIER_MISMATCH, "the request carries no identifier")
    try:
        return decode(BytesIO(message.data), syntax == uids.IMPLICIT_LE, True)
    except Exception as exc:  # pydicom on bytes the peer sent
        raise DicomStatusError(status.IDENTIFIER_MISMATCH, f"identifier cannot be decoded: {exc}") from exc
