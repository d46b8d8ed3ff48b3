"""Verification SCP (VE-01, VE-02), shared by both listening AEs. Each request read restarts the
wait for the next one, so an echo also keeps the association open (VE-03)."""

from __future__ import annotations

import logging

from appliance.codes import status
from appliance.dicom.dimse import Message

log = logging.getLogger("appliance.verification")


def on_echo(association, message: Message) -> None:
    association.respond(message, status.SUCCESS)
    log.info("%s: C-ECHO status 0x%04X", association.session.prefix(), status.SUCCESS)
