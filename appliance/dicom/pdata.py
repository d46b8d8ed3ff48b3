"""The P-DATA-TF PDUs of a DIMSE message whose command set repeats: encoded once, sent many times.

A C-FIND answers with one Pending per match, and every Pending of one request has the same
command set. pynetdicom's `send_msg` encodes each through a pydicom Dataset and hands it to
its reader thread, about 1 ms a message; here the command set is encoded once (by pynetdicom,
so its bytes are the ones pynetdicom would send) and each message goes out as its bytes, in
the layout pynetdicom uses: one PDV per PDU, the command set first, then the data set,
fragments no longer than the peer's maximum PDU length allows (PS3.8 9.3.5, Annex E).
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
    return _fragments(context_id, command, _COMMAND, max_pdu) + _fragments(context_id, dataset, 0, max_pdu)


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
