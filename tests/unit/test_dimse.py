"""appliance.dicom.dimse writes and reads DIMSE messages itself: every command set it writes must
be the bytes pynetdicom would send, for any Message ID, status and peer maximum PDU length, and
what it reads back from pynetdicom's PDUs must be the message that was sent."""

from __future__ import annotations

from io import BytesIO

import pytest
from pynetdicom.dimse_messages import (C_ECHO_RQ, C_ECHO_RSP, C_FIND_RQ, C_FIND_RSP, C_MOVE_RSP, C_STORE_RQ,
                                       C_STORE_RSP, N_ACTION_RSP, N_EVENT_REPORT_RQ)
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_MOVE, C_STORE, N_ACTION, N_EVENT_REPORT
from pynetdicom.dsutils import encode

import datasets
import pdus
from appliance.dicom import dimse
from appliance.dicom.dimse import Assembler, Command
from appliance.dicom.pdu import ProtocolError

SCPM, SCPM_INSTANCE = "1.2.840.10008.1.20.1", "1.2.840.10008.1.20.1.1"


def pynetdicom_bytes(message_class, primitive, context_id: int = 3, max_pdu: int = 16384) -> tuple[bytes, bytes]:
    """(command set, the whole message as P-DATA-TF PDUs) as pynetdicom encodes `primitive`."""
    message = message_class()
    message.primitive_to_message(primitive)
    return (encode(message.command_set, True, True),
            b"".join(pdus.p_data(primitive, context_id, max_pdu, message_class)))


def request(field: int, message_id: int, sop_class: str, instance: str = "", data_set: bool = False) -> Command:
    elements = {dimse.COMMAND_FIELD: dimse.us(field), dimse.MESSAGE_ID: dimse.us(message_id),
                dimse.AFFECTED_SOP_CLASS: dimse.ui(sop_class),
                dimse.DATA_SET_TYPE: dimse.us(1 if data_set else dimse.NO_DATA_SET)}
    if instance:
        elements[dimse.AFFECTED_SOP_INSTANCE] = dimse.ui(instance)
    return Command.decode(dimse.encode_command(elements))


@pytest.mark.parametrize("message_id", [1, 7, 256, 65535])
@pytest.mark.parametrize("status", [0xFF00, 0xFF01])
@pytest.mark.parametrize("max_pdu", [0, 64, 16384])
def test_find_pending_as_pynetdicom_sends_it(message_id, status, max_pdu):
    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo, rsp.AffectedSOPClassUID, rsp.Status = message_id, datasets.STUDY_ROOT_FIND, status
    identifier = bytes(range(256)) * 3  # longer than a 64-byte PDU holds
    rsp.Identifier = BytesIO(identifier)
    command, expected = pynetdicom_bytes(C_FIND_RSP, rsp, max_pdu=max_pdu)
    ours = dimse.response(request(dimse.C_FIND_RQ, message_id, datasets.STUDY_ROOT_FIND, data_set=True), status,
                          data_set=True)
    assert ours == command
    assert dimse.message_pdus(3, ours, identifier, max_pdu) == expected


@pytest.mark.parametrize("message_class, primitive_class, field, instance", [
    (C_ECHO_RSP, C_ECHO, dimse.C_ECHO_RQ, ""),
    (C_STORE_RSP, C_STORE, dimse.C_STORE_RQ, "1.2.3.45"),
])
@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xB000])
def test_responses_as_pynetdicom_encodes_them(message_class, primitive_class, field, instance, status):
    rsp = primitive_class()
    rsp.MessageIDBeingRespondedTo, rsp.AffectedSOPClassUID, rsp.Status = 99, datasets.CT, status
    if instance:
        rsp.AffectedSOPInstanceUID = instance
    command, _ = pynetdicom_bytes(message_class, rsp)
    assert dimse.response(request(field, 99, datasets.CT, instance), status) == command


def test_n_action_response_as_pynetdicom_encodes_it():
    """SC-02: the N-ACTION-RSP names the Storage Commitment SOP instance and the action type."""
    rsp = N_ACTION()
    rsp.MessageIDBeingRespondedTo, rsp.Status, rsp.ActionTypeID = 5, 0x0000, 1
    rsp.AffectedSOPClassUID, rsp.AffectedSOPInstanceUID = SCPM, SCPM_INSTANCE
    command, _ = pynetdicom_bytes(N_ACTION_RSP, rsp)
    action = Command.decode(dimse.encode_command({
        dimse.COMMAND_FIELD: dimse.us(dimse.N_ACTION_RQ), dimse.MESSAGE_ID: dimse.us(5),
        dimse.REQUESTED_SOP_CLASS: dimse.ui(SCPM), dimse.REQUESTED_SOP_INSTANCE: dimse.ui(SCPM_INSTANCE),
        dimse.DATA_SET_TYPE: dimse.us(1), dimse.ACTION_TYPE: dimse.us(1)}))
    assert dimse.response(action, 0x0000, extra={dimse.ACTION_TYPE: dimse.us(1)}) == command


@pytest.mark.parametrize("message_id, sop_class, sop_instance, originator", [
    (1, datasets.CT, "1.2.3.4", "MOVER"),  # odd-length title, even-length UID
    (65535, "1.2.840.10008.5.1.4.1.1.6.1", "1.2.34", "ABCDEFGHIJKLMNOP"),  # odd UIDs, 16-character title
])
def test_store_request_as_pynetdicom_encodes_it(message_id, sop_class, sop_instance, originator):
    """QM-03: STORAGE-SCU's C-STORE-RQ, with the Move Originator fields."""
    rq = C_STORE()
    rq.MessageID, rq.AffectedSOPClassUID, rq.AffectedSOPInstanceUID = message_id, sop_class, sop_instance
    rq.Priority = 0  # Medium
    rq.MoveOriginatorApplicationEntityTitle, rq.MoveOriginatorMessageID = originator, 7
    rq.DataSet = BytesIO(b"\0")
    command, _ = pynetdicom_bytes(C_STORE_RQ, rq)
    assert dimse.store_request(message_id, sop_class, sop_instance, originator, 7) == command


@pytest.mark.parametrize("status, remaining, identifier", [
    (0xFF00, 199, False), (0x0000, None, False), (0xA702, None, True), (0xFE00, 3, True)])
def test_move_response_as_pynetdicom_encodes_it(status, remaining, identifier):
    """QM-07..QM-14: C-MOVE-RSP command sets, with and without Remaining and an identifier."""
    rsp = C_MOVE()
    rsp.MessageIDBeingRespondedTo, rsp.AffectedSOPClassUID, rsp.Status = 513, datasets.STUDY_ROOT_MOVE, status
    rsp.NumberOfRemainingSuboperations = remaining
    rsp.NumberOfCompletedSuboperations, rsp.NumberOfFailedSuboperations = 1, 2
    rsp.NumberOfWarningSuboperations = 65535
    if identifier:
        rsp.Identifier = BytesIO(b"\0")
    command, _ = pynetdicom_bytes(C_MOVE_RSP, rsp)
    move = request(dimse.C_MOVE_RQ, 513, datasets.STUDY_ROOT_MOVE, data_set=True)
    assert dimse.response(move, status, data_set=identifier, extra=dimse.move_counts(remaining, 1, 2, 65535)) \
        == command


@pytest.mark.parametrize("message_id, event_type", [(1, 1), (65535, 2)])
def test_event_report_request_as_pynetdicom_encodes_it(message_id, event_type):
    """SC-08: the N-EVENT-REPORT-RQ of a Storage Commitment result."""
    rq = N_EVENT_REPORT()
    rq.MessageID, rq.EventTypeID = message_id, event_type
    rq.AffectedSOPClassUID, rq.AffectedSOPInstanceUID = SCPM, SCPM_INSTANCE
    rq.EventInformation = BytesIO(b"\0")
    command, _ = pynetdicom_bytes(N_EVENT_REPORT_RQ, rq)
    assert dimse.event_report_request(message_id, SCPM, SCPM_INSTANCE, event_type) == command


def test_echo_request_as_pynetdicom_encodes_it():
    """TL-05: the service tool's diagnostic C-ECHO-RQ."""
    rq = C_ECHO()
    rq.MessageID, rq.AffectedSOPClassUID = 1, datasets.VERIFICATION
    command, _ = pynetdicom_bytes(C_ECHO_RQ, rq)
    assert dimse.echo_request(1, datasets.VERIFICATION) == command


@pytest.mark.parametrize("data", [b"\x08\x00\x18\x00\x04\x00\x00\x001.2.", b"\x00\x00\x00\x09\x02",
                                  dimse.encode_command({dimse.MESSAGE_ID: dimse.us(1)})],
                         ids=["other group", "truncated", "no command field"])
def test_what_is_no_command_set_is_refused(data):
    with pytest.raises(ProtocolError):
        Command.decode(data)


# --- reading messages ---------------------------------------------------------------------------

class Sink:
    def __init__(self):
        self.pending, self.written, self.flushes, self.discarded = [], bytearray(), 0, False

    def add(self, fragment):
        self.pending.append(bytes(fragment))

    def flush(self):
        self.flushes += 1
        self.written += b"".join(self.pending)
        self.pending = []

    def discard(self):
        self.discarded = True


def bodies(pdus: bytes) -> list[memoryview]:
    """The bodies of the P-DATA-TFs in `pdus` (what the transport hands the assembler)."""
    out, position = [], 0
    while position < len(pdus):
        length = int.from_bytes(pdus[position + 2:position + 6], "big")
        out.append(memoryview(pdus[position + 6:position + 6 + length]))
        position += 6 + length
    return out


def store_pdus(data: bytes, max_pdu: int, context_id: int = 1) -> bytes:
    rq = C_STORE()
    rq.MessageID, rq.AffectedSOPClassUID, rq.AffectedSOPInstanceUID = 3, datasets.CT, "1.2.3"
    rq.DataSet = BytesIO(data)
    return pynetdicom_bytes(C_STORE_RQ, rq, context_id, max_pdu)[1]


@pytest.mark.parametrize("max_pdu", [64, 16384])
def test_a_c_store_data_set_goes_to_its_sink_and_the_rest_stays_in_memory(max_pdu):
    """A C-STORE-RQ's data set is handed to the sink fragment by fragment, flushed when the
    message is complete; a C-FIND identifier on the same association is kept in memory."""
    sinks = []

    def sink_for(context_id, command):
        if command.field != dimse.C_STORE_RQ:
            return None
        sinks.append(Sink())
        return sinks[-1]

    assembler, completed = Assembler({1: (datasets.CT, datasets.ELE), 3: ("find", "ile")}, sink_for), []
    data = bytes(range(256)) * 40
    find = C_FIND()
    find.MessageID, find.AffectedSOPClassUID, find.Identifier = 4, datasets.STUDY_ROOT_FIND, BytesIO(b"\x10" * 300)
    for body in bodies(store_pdus(data, max_pdu) + pynetdicom_bytes(C_FIND_RQ, find, 3, max_pdu)[1]):
        assembler.feed(body, completed)
    store, query = completed
    assert (store.command.field, store.command.message_id, store.command.uid(dimse.AFFECTED_SOP_INSTANCE)) == (
        dimse.C_STORE_RQ, 3, "1.2.3")
    assert store.sink is sinks[0] and bytes(sinks[0].written) == data and not sinks[0].pending
    assert (query.context_id, query.command.field, query.data) == (3, dimse.C_FIND_RQ, b"\x10" * 300)
    assert not assembler.in_progress


@pytest.mark.parametrize("pdvs, why", [
    ([(5, 0x03, b"")], "presentation context 5, which was not accepted"),
    ([(1, 0x00, b"data")], "a data set fragment before its command set"),
    ([(1, 0x01, b"\0" * 4), (3, 0x01, b"\0" * 4)], "continued on presentation context 3"),
], ids=["unaccepted context", "data first", "two contexts"])
def test_pdvs_that_break_ps3_8_are_refused(pdvs, why):
    body = b"".join(len(value + b"xx").to_bytes(4, "big") + bytes([cx, control]) + value for cx, control, value in pdvs)
    with pytest.raises(ProtocolError, match=why):
        Assembler({1: ("a", "b"), 3: ("c", "d")}, lambda *_: None).feed(memoryview(body), [])


def test_a_truncated_pdv_item_is_refused():
    with pytest.raises(ProtocolError, match="does not fit"):
        Assembler({1: ("a", "b")}, lambda *_: None).feed(memoryview(b"\x00\x00\x00\x10\x01\x03abc"), [])


def test_an_identifier_beyond_the_message_limit_is_refused():
    assembler = Assembler({1: ("a", "b")}, lambda *_: None)
    command = dimse.encode_command({dimse.COMMAND_FIELD: dimse.us(dimse.C_FIND_RQ), dimse.MESSAGE_ID: dimse.us(1),
                                    dimse.DATA_SET_TYPE: dimse.us(1)})
    assembler.feed(memoryview(bodies(dimse.fragments(1, command, 0x01, 0))[0]), [])
    chunk = memoryview(bodies(dimse.fragments(1, bytes(1 << 20), 0, 0))[0]).tobytes()
    chunk = chunk[:5] + b"\x00" + chunk[6:]  # not the last fragment
    with pytest.raises(ProtocolError, match="beyond 16777216 bytes"):
        for _ in range(17):
            assembler.feed(memoryview(chunk), [])


def test_a_response_echoes_the_request_s_uid_bytes_whatever_they_are():
    """Found by fuzzing: a byte that is not ASCII in the Affected SOP Class UID is sent back as
    it came (the request is answered), not decoded and encoded again (which raised)."""
    elements = {dimse.COMMAND_FIELD: dimse.us(dimse.C_ECHO_RQ), dimse.MESSAGE_ID: dimse.us(1),
                dimse.AFFECTED_SOP_CLASS: b"1.2.840.10008.1.\xff", dimse.DATA_SET_TYPE: dimse.us(dimse.NO_DATA_SET)}
    answer = Command.decode(dimse.response(Command.decode(dimse.encode_command(elements)), 0x0000))
    assert answer.elements[dimse.AFFECTED_SOP_CLASS] == b"1.2.840.10008.1.\xff\0"


@pytest.mark.parametrize("reason, comment", [
    ("disk full", "disk full"),  # odd: padded with a space
    ("x" * 64, "x" * 64),
    ("the index cannot answer: OperationalError: " + "database is locked " * 3,
     "the index cannot answer: OperationalError: database is locked..."),
    ("x" * 60 + " and more", "x" * 60 + "..."),  # the space before the cut goes
    ("StudyInstanceUID '1.2\\3' is not a valid UID", "StudyInstanceUID '1.2/3' is not a valid UID"),
    ("PatientName 'Müller' cannot be read:\nline two\x00", "PatientName 'M?ller' cannot be read: line two"),
], ids=["short", "64", "long", "cut-at-a-space", "backslash", "not-ascii"])
def test_the_error_comment_says_the_reason_as_lo_holds_it(reason, comment):
    """UL-05: a failure's Error Comment (0000,0902, LO) is its logged reason in the default
    repertoire, at most 64 characters, no backslash (LO's separator), no control characters; a
    longer reason keeps its start. The command set is the one pynetdicom writes for that comment."""
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo, rsp.AffectedSOPClassUID, rsp.Status = 7, datasets.CT, 0xA900
    rsp.AffectedSOPInstanceUID, rsp.ErrorComment = "1.2.3.45", comment
    command, _ = pynetdicom_bytes(C_STORE_RSP, rsp)
    assert dimse.response(request(dimse.C_STORE_RQ, 7, datasets.CT, "1.2.3.45"), 0xA900, comment=reason) == command
