"""STORAGE-SCP protocol adapter: C-STORE events -> the archive, status -> the wire.

No storage logic here: `Archive.store` decides; this module only translates and logs one
line per instance (LG-05, LG-07). PY-01/PY-02: the handler always returns an int status;
only a bug reaches the last-resort 0xC211, and that is logged with its traceback.
"""

from __future__ import annotations

import logging

from pynetdicom import evt

from appliance.codes import status, uids
from appliance.dicom import receive
from appliance.dicom.associations import Tracker
from appliance.store.ingest import StoreRequest

log = logging.getLogger("appliance.storage_scp")


class StorageSCP:
    def __init__(self, services, tracker: Tracker):
        self.services = services  # server.Services: its archive is set before the gate opens
        self.tracker = tracker

    def handlers(self) -> list:
        return [
            (evt.EVT_C_STORE, self.on_c_store),
            (evt.EVT_CONN_CLOSE, lambda event: receive.discard_in_flight(event.assoc)),  # FL-02
        ]

    def on_c_store(self, event) -> int:
        session = self.tracker.session(event.assoc)
        rq = event.request
        try:
            transfer_syntax = event.context.transfer_syntax
            request = StoreRequest(
                sop_class_uid=str(rq.AffectedSOPClassUID),
                sop_instance_uid=str(rq.AffectedSOPInstanceUID),
                transfer_syntax=transfer_syntax,
                implicit_vr=transfer_syntax == uids.IMPLICIT_LE,
                calling_ae=event.assoc.requestor.ae_title.strip(),
            )
            outcome = self.services.archive.store(event.dataset_path, request, receive.receive_error(rq))
        except Exception:
            log.exception("%s: C-STORE %s: unexpected failure, status 0x%04X", session.prefix(),
                          rq.AffectedSOPInstanceUID, status.UNEXPECTED_FAILURE)
            session.failures += 1
            return status.UNEXPECTED_FAILURE
        level = logging.INFO if outcome.status in (status.SUCCESS, status.COERCION_OF_DATA_ELEMENTS) \
            else logging.ERROR
        if level == logging.INFO:
            session.instances += 1
            session.bytes += outcome.size
        else:
            session.failures += 1
        uid = request.sop_instance_uid
        if outcome.sop_instance_uid != uid:
            uid = f"{uid} (indexed as {outcome.sop_instance_uid})"
        log.log(level, "%s: C-STORE %s class %s status 0x%04X: %s", session.prefix(), uid,
                request.sop_class_uid, outcome.status, outcome.detail)
        return outcome.status
