"""STORAGE-SCP protocol adapter: C-STORE-RQ -> the archive, status -> the wire.

No storage logic here: `Archive.receive` gives the file a data set goes into as it arrives,
`Archive.store` decides; this module only translates and logs one line per instance (LG-05,
LG-07). PY-01/PY-02: every C-STORE-RQ gets a status; only a bug reaches the last-resort
0xC211, and that is logged with its traceback.
"""

from __future__ import annotations

import logging

from appliance import audit
from appliance.codes import status, uids
from appliance.dicom import dimse
from appliance.dicom.dimse import Command, Message
from appliance.store.files import Incoming
from appliance.store.ingest import StoreRequest

log = logging.getLogger("appliance.storage_scp")

# Refused for what the sender sent, not for the box's state: WARNING, not among the errors
# `status` counts (issue 22). A700 (disk, index) is the service's own problem: ERROR.
_REFUSED_FOR_THE_DATA_SET = (status.DATASET_MISMATCH, status.CANNOT_UNDERSTAND)


def _request(association, context_id: int, command: Command) -> StoreRequest:
    transfer_syntax = association.accepted[context_id][1]
    return StoreRequest(sop_class_uid=command.uid(dimse.AFFECTED_SOP_CLASS),
                        sop_instance_uid=command.uid(dimse.AFFECTED_SOP_INSTANCE),
                        transfer_syntax=transfer_syntax, implicit_vr=transfer_syntax == uids.IMPLICIT_LE,
                        calling_ae=association.calling)


class StorageSCP:
    def __init__(self, services):
        self.services = services  # server.Services: its archive is set before the gate opens

    def receiver(self, association, context_id: int, command: Command) -> Incoming:
        """Where the C-STORE-RQ's data set goes as it arrives (dimse.Assembler's sink)."""
        return self.services.archive.receive(_request(association, context_id, command))

    def on_store(self, association, message: Message) -> None:
        session = association.session
        request = _request(association, message.context_id, message.command)
        try:
            outcome = self.services.archive.store(message.sink, request)
        except Exception:
            log.exception("%s: C-STORE %s: unexpected failure, status 0x%04X", session.prefix(),
                          request.sop_instance_uid, status.UNEXPECTED_FAILURE)
            session.failures += 1
            association.respond(message, status.UNEXPECTED_FAILURE, comment="unexpected failure")
            return
        level = logging.INFO if outcome.status in (status.SUCCESS, status.COERCION_OF_DATA_ELEMENTS) \
            else logging.WARNING if outcome.status in _REFUSED_FOR_THE_DATA_SET else logging.ERROR
        if level == logging.INFO:
            session.instances += 1
            session.bytes += outcome.size
            if outcome.values is not None and audit.active():  # AU-01: one message per study, at the end
                audit.count_stored(session.received, outcome.values)
        else:
            session.failures += 1
        uid = request.sop_instance_uid
        if outcome.sop_instance_uid != uid:
            uid = f"{uid} (indexed as {outcome.sop_instance_uid})"
        # FL-04: a response that cannot be sent leaves the instance stored; the end is logged.
        # UL-05: a warning or failure says why in its Error Comment, as the log line does (ST-26:
        # the conflict, in its first words; B000: the elements coerced).
        association.respond(message, outcome.status, comment=outcome.detail if outcome.status != status.SUCCESS else "")
        log.log(level, "%s: C-STORE %s class %s status 0x%04X: %s", session.prefix(), uid,
                request.sop_class_uid, outcome.status, outcome.detail)
