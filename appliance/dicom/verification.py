"""Verification SCP (VE-01, VE-02), shared by both listening AEs."""

from __future__ import annotations

import logging

from pynetdicom import evt

from appliance.codes import status
from appliance.dicom.associations import Tracker

log = logging.getLogger("appliance.verification")


def handlers(tracker: Tracker) -> list:
    def on_c_echo(event) -> int:
        # Any PDU restarts pynetdicom's idle timer, so an echo also keeps the association open (VE-03).
        log.info("%s: C-ECHO status 0x%04X", tracker.session(event.assoc).prefix(), status.SUCCESS)
        return status.SUCCESS

    return [(evt.EVT_C_ECHO, on_c_echo)]
