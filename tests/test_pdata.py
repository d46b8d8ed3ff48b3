"""appliance.dicom.pdata writes C-FIND Pendings without pynetdicom: its bytes must be the ones
pynetdicom would send, for any Message ID, status and peer maximum PDU length."""

from __future__ import annotations

from io import BytesIO

import pytest
from pynetdicom.dimse_messages import C_ECHO_RQ, C_FIND_RSP, C_MOVE_RSP, C_STORE_RQ, N_EVENT_REPORT_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_MOVE, C_STORE, N_EVENT_REPORT
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


@pytest.mark.parametrize("message_id, sop_class, sop_instance, originator", [
    (1, datasets.CT, "1.2.3.4", "MOVER"),  # odd-length title, even-length UID
    (65535, "1.2.840.10008.5.1.4.1.1.6.1", "1.2.34", "ABCDEFGHIJKLMNOP"),  # odd UIDs, 16-character title
])
def test_store_request_command_as_pynetdicom_encodes_it(message_id, sop_class, sop_instance, originator):
    """QM-03: STORAGE-SCU's C-STORE-RQ, with the Move Originator fields, in pynetdicom's bytes."""
    request = C_STORE()
    request.MessageID, request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = message_id, sop_class, sop_instance
    request.Priority = 0  # Medium
    request.MoveOriginatorApplicationEntityTitle, request.MoveOriginatorMessageID = originator, 7
    request.DataSet = BytesIO(b"\0")
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    command = pdata.store_request_command(message_id, sop_class, sop_instance, originator, 7)
    assert command == encode(message.command_set, True, True)
    elements = pdata.command_elements(command)
    assert pdata.command_uint16(elements, 0x0110) == message_id
    assert elements[0x1000].rstrip(b"\0").decode() == sop_instance


def test_command_elements_refuses_what_is_no_command_set():
    with pytest.raises(ValueError):
        pdata.command_elements(b"\x08\x00\x18\x00\x04\x00\x00\x001.2.")
    with pytest.raises(ValueError):
        pdata.command_elements(b"\x00\x00\x00\x09\x02")


@pytest.mark.parametrize("status, remaining, identifier", [
    (0xFF00, 199, False), (0x0000, None, False), (0xA702, None, True), (0xFE00, 3, True)])
def test_move_response_command_as_pynetdicom_encodes_it(status, remaining, identifier):
    """QM-07..QM-14: C-MOVE-RSP command sets, with and without Remaining and an identifier."""
    response = C_MOVE()
    response.MessageIDBeingRespondedTo, response.AffectedSOPClassUID, response.Status = 513, datasets.STUDY_ROOT_MOVE, status
    response.NumberOfRemainingSuboperations = remaining
    response.NumberOfCompletedSuboperations, response.NumberOfFailedSuboperations = 1, 2
    response.NumberOfWarningSuboperations = 65535
    if identifier:
        response.Identifier = BytesIO(b"\0")
    message = C_MOVE_RSP()
    message.primitive_to_message(response)
    assert pdata.move_response_command(datasets.STUDY_ROOT_MOVE, 513, status, remaining, 1, 2, 65535, identifier) \
        == encode(message.command_set, True, True)


@pytest.mark.parametrize("message_id, event_type", [(1, 1), (65535, 2)])
def test_event_report_command_as_pynetdicom_encodes_it(message_id, event_type):
    """SC-08: the N-EVENT-REPORT-RQ of a Storage Commitment result."""
    request = N_EVENT_REPORT()
    request.MessageID, request.EventTypeID = message_id, event_type
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = "1.2.840.10008.1.20.1", "1.2.840.10008.1.20.1.1"
    request.EventInformation = BytesIO(b"\0")
    message = N_EVENT_REPORT_RQ()
    message.primitive_to_message(request)
    assert pdata.event_report_command(message_id, "1.2.840.10008.1.20.1", "1.2.840.10008.1.20.1.1", event_type) \
        == encode(message.command_set, True, True)


def test_echo_request_command_as_pynetdicom_encodes_it():
    """TL-05: the service tool's diagnostic C-ECHO-RQ."""
    request = C_ECHO()
    request.MessageID, request.AffectedSOPClassUID = 1, datasets.VERIFICATION
    message = C_ECHO_RQ()
    message.primitive_to_message(request)
    assert pdata.echo_request_command(1) == encode(message.command_set, True, True)
