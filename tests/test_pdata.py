"""appliance.dicom.pdata writes C-FIND Pendings without pynetdicom: its bytes must be the ones
pynetdicom would send, for any Message ID, status and peer maximum PDU length."""

from __future__ import annotations

from io import BytesIO

import pytest
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF

import datasets
from appliance.dicom import pdata


def pynetdicom_pdus(message_id: int, status: int, identifier: bytes, max_pdu: int) -> tuple[bytes, bytes]:
    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo, rsp.AffectedSOPClassUID, rsp.Status = message_id, datasets.STUDY_ROOT_FIND, status
    rsp.Identifier = BytesIO(identifier)
    message = C_FIND_RSP()
    message.primitive_to_message(rsp)
    encoded = []
    for primitive in message.encode_msg(3, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        encoded.append(pdu.encode())
    return encode(message.command_set, True, True), b"".join(encoded)


@pytest.mark.parametrize("message_id", [1, 7, 256, 65535])
@pytest.mark.parametrize("status", [0xFF00, 0xFF01])
@pytest.mark.parametrize("max_pdu", [0, 64, 16384])
def test_same_bytes_as_pynetdicom(message_id, status, max_pdu):
    request = C_FIND()
    request.MessageID, request.AffectedSOPClassUID = message_id, datasets.STUDY_ROOT_FIND
    identifier = bytes(range(256)) * 3  # longer than a 64-byte PDU holds
    command, expected = pynetdicom_pdus(message_id, status, identifier, max_pdu)
    assert pdata.find_pending_command(request, status) == command
    assert pdata.message_pdus(3, command, identifier, max_pdu) == expected
