"""DIMSE messages as bytes, for the two hot paths that bypass pynetdicom's message classes.

pynetdicom's `send_msg` encodes every command set through a pydicom Dataset and hands it to
its reader thread, about 1 ms a message. A C-FIND answers with one Pending per match, all
with the same command set: it is encoded once (by pynetdicom, so its bytes are the ones
pynetdicom would send). A C-MOVE sends one C-STORE-RQ and one C-MOVE-RSP per instance: their
command sets are a handful of fixed elements, written here directly (`store_request_command`,
`move_response_command`), and a C-STORE-RSP's is read the same way (`command_elements`). Messages go out in the layout pynetdicom uses:
one PDV per PDU, the command set first, then the data set, fragments no longer than the
peer's maximum PDU length allows (PS3.8 9.3.5, Annex E).
"""

from __future__ import annotations

import functools
import struct
from io import BytesIO

from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode

_P_DATA_TF = 0x04
_COMMAND, _LAST = 0x01, 0x02  # message control header bits (PS3.8 E.2)
PDV_OVERHEAD = 12  # P-DATA-TF header (6) + PDV item length (4) + context ID + control header
_C_STORE_RQ = 0x0001
_C_MOVE_RSP = 0x8021
_N_EVENT_REPORT_RQ = 0x0100
_C_ECHO_RQ = 0x0030
_VERIFICATION = "1.2.840.10008.1.1"
_NO_DATA_SET = 0x0101
_MEDIUM_PRIORITY = 0x0000
_DATA_SET_PRESENT = 0x0001  # anything but 0x0101 (PS3.7 E.1-1); pynetdicom writes 1


def find_pending_command(request: C_FIND, status: int) -> bytes:
    """The encoded command set of a C-FIND-RSP with `status` and an identifier, answering `request`."""
    template, offset = _find_pending_template(str(request.AffectedSOPClassUID), status)
    return template[:offset] + struct.pack("<H", request.MessageID) + template[offset + 2:]


@functools.lru_cache(maxsize=8)
def _find_pending_template(sop_class: str, status: int) -> tuple[bytes, int]:
    """The command set with Message ID Being Responded To 0, and where that value sits: only
    the ID differs between requests (encoding through pydicom costs 0.6 ms)."""
    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo = 0
    rsp.AffectedSOPClassUID = sop_class
    rsp.Status = status
    rsp.Identifier = BytesIO(b"\0")  # present: Command Data Set Type says a data set follows
    message = C_FIND_RSP()
    message.primitive_to_message(rsp)
    encoded = encode(message.command_set, True, True)
    position = 0
    while position < len(encoded):  # Implicit VR LE elements: tag, 4-byte length, value
        group, element, length = struct.unpack_from("<HHL", encoded, position)
        if (group, element) == (0x0000, 0x0120):
            return encoded, position + 8
        position += 8 + length
    raise AssertionError("pynetdicom encoded no Message ID Being Responded To")


def message_pdus(context_id: int, command: bytes, dataset: bytes, max_pdu: int) -> bytes:
    """The PDUs of one message; `max_pdu` is the peer's maximum PDU length (0: no limit)."""
    return command_pdus(context_id, command, max_pdu) + _fragments(context_id, dataset, 0, max_pdu)


def command_pdus(context_id: int, command: bytes, max_pdu: int) -> bytes:
    """The PDUs of a message's command set alone (its data set follows in further PDUs)."""
    return _fragments(context_id, command, _COMMAND, max_pdu)


def _fragments(context_id: int, data: bytes, kind: int, max_pdu: int) -> bytes:
    size = max_pdu - 6 if max_pdu else max(len(data), 1)
    pdus = []
    for start in range(0, max(len(data), 1), size):
        fragment = data[start:start + size]
        last = start + size >= len(data)
        pdv_length = len(fragment) + 2
        pdus.append(struct.pack(">BxLLBB", _P_DATA_TF, pdv_length + 4, pdv_length, context_id,
                                kind | (_LAST if last else 0)) + fragment)
    return b"".join(pdus)


def store_request_command(message_id: int, sop_class: str, sop_instance: str, originator_title: str,
                          originator_message_id: int) -> bytes:
    """The command set of a C-STORE-RQ with a data set, Medium priority and the Move Originator
    fields (QM-03), Implicit VR Little Endian, elements in tag order (PS3.7 9.3.1.1)."""
    elements = b"".join((
        _element(0x0002, _ui(sop_class)),
        _element(0x0100, struct.pack("<H", _C_STORE_RQ)),
        _element(0x0110, struct.pack("<H", message_id)),
        _element(0x0700, struct.pack("<H", _MEDIUM_PRIORITY)),
        _element(0x0800, struct.pack("<H", _DATA_SET_PRESENT)),
        _element(0x1000, _ui(sop_instance)),
        _element(0x1030, _even(originator_title.encode("ascii"), b" ")),
        _element(0x1031, struct.pack("<H", originator_message_id)),
    ))
    return _element(0x0000, struct.pack("<L", len(elements))) + elements


def move_response_command(sop_class: str, message_id: int, status: int, remaining: int | None, completed: int,
                          failed: int, warning: int, identifier: bool) -> bytes:
    """The command set of a C-MOVE-RSP with the sub-operation counts (Remaining left out when
    None), and whether an identifier follows (PS3.7 9.3.4.2). The counts are US: a move of
    more than 65535 instances reports 65535 until fewer remain."""
    counts = b"".join(_element(element, struct.pack("<H", min(value, 0xFFFF))) for element, value in (
        (0x1020, remaining), (0x1021, completed), (0x1022, failed), (0x1023, warning)) if value is not None)
    elements = b"".join((
        _element(0x0002, _ui(sop_class)),
        _element(0x0100, struct.pack("<H", _C_MOVE_RSP)),
        _element(0x0120, struct.pack("<H", message_id)),
        _element(0x0800, struct.pack("<H", _DATA_SET_PRESENT if identifier else _NO_DATA_SET)),
        _element(0x0900, struct.pack("<H", status)),
        counts,
    ))
    return _element(0x0000, struct.pack("<L", len(elements))) + elements


def event_report_command(message_id: int, sop_class: str, sop_instance: str, event_type: int) -> bytes:
    """The command set of an N-EVENT-REPORT-RQ with Event Information (PS3.7 10.3.1.1)."""
    elements = b"".join((
        _element(0x0002, _ui(sop_class)),
        _element(0x0100, struct.pack("<H", _N_EVENT_REPORT_RQ)),
        _element(0x0110, struct.pack("<H", message_id)),
        _element(0x0800, struct.pack("<H", _DATA_SET_PRESENT)),
        _element(0x1000, _ui(sop_instance)),
        _element(0x1002, struct.pack("<H", event_type)),
    ))
    return _element(0x0000, struct.pack("<L", len(elements))) + elements


def echo_request_command(message_id: int) -> bytes:
    """The command set of a C-ECHO-RQ (PS3.7 9.3.5.1)."""
    elements = b"".join((
        _element(0x0002, _ui(_VERIFICATION)),
        _element(0x0100, struct.pack("<H", _C_ECHO_RQ)),
        _element(0x0110, struct.pack("<H", message_id)),
        _element(0x0800, struct.pack("<H", _NO_DATA_SET)),
    ))
    return _element(0x0000, struct.pack("<L", len(elements))) + elements


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHL", 0x0000, element, len(value)) + value


def _ui(uid: str) -> bytes:
    return _even(uid.encode("ascii"), b"\0")


def _even(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def command_elements(command: bytes) -> dict[int, bytes]:
    """The elements of an Implicit VR Little Endian command set, by element number (group
    0000), raw values; ValueError when the bytes are not one."""
    found = {}
    position = 0
    while position < len(command):
        if position + 8 > len(command):
            raise ValueError("command set truncated")
        group, element, length = struct.unpack_from("<HHL", command, position)
        if group != 0x0000 or position + 8 + length > len(command):
            raise ValueError(f"not a command set element at byte {position}")
        found[element] = command[position + 8:position + 8 + length]
        position += 8 + length
    return found


def command_uint16(elements: dict[int, bytes], element: int) -> int | None:
    value = elements.get(element)
    return struct.unpack("<H", value[:2])[0] if value is not None and len(value) >= 2 else None
