"""DIMSE messages (PS3.7) as bytes: command sets written and read here, messages cut into PDVs
and put together again from them.

A command set is a handful of group 0000 elements in Implicit VR Little Endian; encoding one
through a pydicom Dataset costs about 0.6 ms, writing it here a few microseconds. Messages go
out in the layout pynetdicom and DCMTK use: one PDV per P-DATA-TF, the command set first,
then the data set, fragments as long as the peer's maximum PDU length allows (PS3.8 9.3.5,
Annex E). Incoming, `Assembler` checks every PDV (accepted context, command before data, one
context per message) and hands a C-STORE data set's fragments to a sink that writes them to
its file as they come; other data sets (identifiers, action and event information) are
kept in memory up to MESSAGE_LIMIT.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Callable, Protocol

from appliance.dicom.pdu import COMMAND, LAST, P_DATA_TF, PDV_HEADER, ProtocolError

# Command Field values (PS3.7 E.1-1); a response is its request's value with bit 15 set.
C_STORE_RQ, C_GET_RQ, C_FIND_RQ, C_MOVE_RQ, C_ECHO_RQ = 0x0001, 0x0010, 0x0020, 0x0021, 0x0030
N_EVENT_REPORT_RQ, N_GET_RQ, N_SET_RQ, N_ACTION_RQ, N_CREATE_RQ, N_DELETE_RQ = (
    0x0100, 0x0110, 0x0120, 0x0130, 0x0140, 0x0150)
C_CANCEL_RQ = 0x0FFF
RESPONSE = 0x8000
REQUESTS = {C_STORE_RQ: "C-STORE", C_GET_RQ: "C-GET", C_FIND_RQ: "C-FIND", C_MOVE_RQ: "C-MOVE", C_ECHO_RQ: "C-ECHO",
            N_EVENT_REPORT_RQ: "N-EVENT-REPORT", N_GET_RQ: "N-GET", N_SET_RQ: "N-SET", N_ACTION_RQ: "N-ACTION",
            N_CREATE_RQ: "N-CREATE", N_DELETE_RQ: "N-DELETE"}

# Command set elements (group 0000) by element number.
AFFECTED_SOP_CLASS, REQUESTED_SOP_CLASS = 0x0002, 0x0003
COMMAND_FIELD, MESSAGE_ID, RESPONDED_TO = 0x0100, 0x0110, 0x0120
MOVE_DESTINATION, PRIORITY, DATA_SET_TYPE, STATUS, ERROR_COMMENT = 0x0600, 0x0700, 0x0800, 0x0900, 0x0902
AFFECTED_SOP_INSTANCE, REQUESTED_SOP_INSTANCE = 0x1000, 0x1001
EVENT_TYPE, ACTION_TYPE = 0x1002, 0x1008
REMAINING, COMPLETED, FAILED, WARNINGS = 0x1020, 0x1021, 0x1022, 0x1023
MOVE_ORIGINATOR_TITLE, MOVE_ORIGINATOR_ID = 0x1030, 0x1031

NO_DATA_SET = 0x0101
_DATA_SET_PRESENT = 0x0001  # anything but 0x0101 (PS3.7 E.1-1); pynetdicom and DCMTK write 1
_MEDIUM_PRIORITY = 0x0000
# Error Comment is LO (PS3.7 Annex C, PS3.5 6.2): at most 64 characters of the default
# repertoire (command sets have no Specific Character Set), no backslash, no control characters.
_COMMENT_LIMIT = 64
_NOT_IN_LO = re.compile(r"[\x00-\x1f\x7f]+")
_ELEMENT = struct.Struct("<HHL")
_US = struct.Struct("<H")

# An N-ACTION committing 100,000 instances is about 12 MB; C-FIND identifiers are a few KiB.
MESSAGE_LIMIT = 16 << 20


# --- command sets -----------------------------------------------------------------------------

def us(value: int) -> bytes:
    return _US.pack(value)


def ui(uid: str) -> bytes:
    return _even(uid.encode("ascii"))


def _even(value: bytes) -> bytes:
    """A UI value padded to an even length (PS3.5 9.1)."""
    return value + b"\0" if len(value) % 2 else value


def text(value: str) -> bytes:
    """AE, LO and the like: padded with a space."""
    raw = value.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


def error_comment(reason: str) -> bytes:
    """The Error Comment that says `reason` (UL-05): characters outside ASCII become "?", a
    backslash (LO's value separator) "/", control characters a space. A longer reason keeps its
    start, which names the problem, and ends in "..."; the whole of it is in the service log."""
    raw = _NOT_IN_LO.sub(" ", reason.replace("\\", "/")).strip().encode("ascii", "replace")
    if len(raw) > _COMMENT_LIMIT:
        raw = raw[:_COMMENT_LIMIT - 3].rstrip() + b"..."
    return raw + b" " if len(raw) % 2 else raw


def encode_command(elements: dict[int, bytes]) -> bytes:
    """The command set of `elements` (element number -> encoded value), in tag order, with its
    Command Group Length."""
    body = b"".join(_ELEMENT.pack(0x0000, number, len(value)) + value for number, value in sorted(elements.items()))
    return _ELEMENT.pack(0x0000, 0x0000, 4) + struct.pack("<L", len(body)) + body


def response(request: "Command", status: int, *, data_set: bool = False, comment: str = "",
             extra: dict[int, bytes] | None = None) -> bytes:
    """The command set of the response to `request` with `status`: its Affected SOP Class (and
    Instance) UID as the request named them, the Error Comment that says `comment` (a warning or
    failure's reason, UL-05), `extra` elements (counts, Action Type ID)."""
    field = request.field | RESPONSE
    elements = {COMMAND_FIELD: us(field), RESPONDED_TO: us(request.message_id),
                DATA_SET_TYPE: us(_DATA_SET_PRESENT if data_set else NO_DATA_SET), STATUS: us(status)}
    # The UIDs as the request carried them: bytes a peer sent are echoed, never decoded and encoded.
    sop_class = request.elements.get(AFFECTED_SOP_CLASS) or request.elements.get(REQUESTED_SOP_CLASS)
    if sop_class:
        elements[AFFECTED_SOP_CLASS] = _even(sop_class)
    instance = request.elements.get(AFFECTED_SOP_INSTANCE) or request.elements.get(REQUESTED_SOP_INSTANCE)
    if instance and field in (C_STORE_RQ | RESPONSE, N_ACTION_RQ | RESPONSE, N_EVENT_REPORT_RQ | RESPONSE):
        elements[AFFECTED_SOP_INSTANCE] = _even(instance)
    if comment:
        elements[ERROR_COMMENT] = error_comment(comment)
    elements.update(extra or {})
    return encode_command(elements)


def store_request(message_id: int, sop_class: str, sop_instance: str, originator_title: str,
                  originator_message_id: int) -> bytes:
    """A C-STORE-RQ with a data set, Medium priority and the Move Originator fields (QM-03)."""
    return encode_command({
        AFFECTED_SOP_CLASS: ui(sop_class), COMMAND_FIELD: us(C_STORE_RQ), MESSAGE_ID: us(message_id),
        PRIORITY: us(_MEDIUM_PRIORITY), DATA_SET_TYPE: us(_DATA_SET_PRESENT), AFFECTED_SOP_INSTANCE: ui(sop_instance),
        MOVE_ORIGINATOR_TITLE: text(originator_title), MOVE_ORIGINATOR_ID: us(originator_message_id)})


def move_counts(remaining: int | None, completed: int, failed: int, warning: int) -> dict[int, bytes]:
    """The sub-operation counts of a C-MOVE-RSP (Remaining left out when None). They are US: a
    move of more than 65535 instances reports 65535 until fewer remain."""
    counts = {REMAINING: remaining, COMPLETED: completed, FAILED: failed, WARNINGS: warning}
    return {element: us(min(value, 0xFFFF)) for element, value in counts.items() if value is not None}


def event_report_request(message_id: int, sop_class: str, sop_instance: str, event_type: int) -> bytes:
    """An N-EVENT-REPORT-RQ with Event Information (PS3.7 10.3.1.1)."""
    return encode_command({
        AFFECTED_SOP_CLASS: ui(sop_class), COMMAND_FIELD: us(N_EVENT_REPORT_RQ), MESSAGE_ID: us(message_id),
        DATA_SET_TYPE: us(_DATA_SET_PRESENT), AFFECTED_SOP_INSTANCE: ui(sop_instance), EVENT_TYPE: us(event_type)})


def echo_request(message_id: int, sop_class: str) -> bytes:
    return encode_command({AFFECTED_SOP_CLASS: ui(sop_class), COMMAND_FIELD: us(C_ECHO_RQ),
                           MESSAGE_ID: us(message_id), DATA_SET_TYPE: us(NO_DATA_SET)})


@dataclass(frozen=True)
class Command:
    """A received command set: raw values by element number."""

    elements: dict[int, bytes]

    @classmethod
    def decode(cls, data: bytes) -> "Command":
        """ProtocolError when the bytes are not an Implicit VR Little Endian command set with a
        Command Field."""
        found = {}
        position = 0
        while position < len(data):
            if position + 8 > len(data):
                raise ProtocolError("the command set is truncated")
            group, element, length = _ELEMENT.unpack_from(data, position)
            if group != 0x0000 or position + 8 + length > len(data):
                raise ProtocolError(f"the command set has no valid element at byte {position}")
            found[element] = data[position + 8:position + 8 + length]
            position += 8 + length
        command = cls(found)
        if command.us(COMMAND_FIELD) is None:
            raise ProtocolError("the command set has no Command Field")
        return command

    def us(self, element: int) -> int | None:
        value = self.elements.get(element)
        return _US.unpack_from(value)[0] if value is not None and len(value) >= 2 else None

    def uid(self, element: int) -> str:
        return self.text(element).rstrip("\0")

    def text(self, element: int) -> str:
        return self.elements.get(element, b"").decode("ascii", "replace").strip(" \0")

    @property
    def field(self) -> int:
        return self.us(COMMAND_FIELD)

    @property
    def message_id(self) -> int:
        """Message ID of a request, or the one a response answers; 0 when absent."""
        return self.us(RESPONDED_TO if self.field & RESPONSE else MESSAGE_ID) or 0

    @property
    def has_data_set(self) -> bool:
        return self.us(DATA_SET_TYPE) not in (None, NO_DATA_SET)

    @property
    def name(self) -> str:
        base = REQUESTS.get(self.field & ~RESPONSE, f"command 0x{self.field:04X}")
        return base + ("-RSP" if self.field & RESPONSE else "-RQ") if self.field != C_CANCEL_RQ else "C-CANCEL-RQ"


# --- messages out -----------------------------------------------------------------------------

def message_pdus(context_id: int, command: bytes, data: bytes | None, max_pdu: int) -> bytes:
    """The PDUs of one message (`data` None: a command set alone); `max_pdu` is the peer's
    maximum PDU length (0: no limit)."""
    out = fragments(context_id, command, COMMAND, max_pdu)
    return out if data is None else out + fragments(context_id, data, 0, max_pdu)


def fragments(context_id: int, data, kind: int, max_pdu: int) -> bytes:
    # PS3.8 9.3.1: the maximum bounds a P-DATA-TF's length field, so a PDV value holds 6 bytes less.
    size = max_pdu - 6 if max_pdu else max(len(data), 1)
    pdus = []
    for start in range(0, max(len(data), 1), size):
        fragment = data[start:start + size]
        last = start + size >= len(data)
        length = len(fragment) + 2
        pdus.append(struct.pack(">BxLLBB", P_DATA_TF, length + 4, length, context_id, kind | (LAST if last else 0)))
        pdus.append(fragment)
    return b"".join(pdus)


# --- messages in ------------------------------------------------------------------------------

class Sink(Protocol):
    """Where a C-STORE data set goes while it arrives (store.files.Incoming). `add` takes a
    memoryview into the receive buffer; `flush` writes what was added before that buffer is
    filled again."""

    def add(self, fragment: memoryview) -> None: ...

    def flush(self) -> None: ...

    def discard(self) -> None: ...


@dataclass
class Message:
    context_id: int
    command: Command
    data: bytes | None = None  # a data set kept in memory
    sink: Sink | None = None  # where a C-STORE-RQ's data set went

    def discard(self) -> None:
        if self.sink is not None:
            self.sink.discard()


class Assembler:
    """Messages from the PDVs of P-DATA-TFs, for one association. `accepted`: the accepted
    context IDs; `sink_for(context_id, command)`: a Sink for that message's data set, or None
    to keep it in memory."""

    def __init__(self, accepted, sink_for: Callable[[int, Command], Sink | None]):
        self.accepted = accepted
        self.sink_for = sink_for
        self._reset()

    def _reset(self) -> None:
        self._context: int | None = None
        self._command = bytearray()
        self._parsed: Command | None = None
        self._data: bytearray | None = None
        self._sink: Sink | None = None

    @property
    def in_progress(self) -> bool:
        return self._context is not None

    def feed(self, body: memoryview, completed: list[Message]) -> None:
        """Take in the PDVs of one P-DATA-TF; each message they complete is appended to
        `completed`. ProtocolError for a PDV that breaks PS3.8 (the association is aborted)."""
        position, end = 0, len(body)
        while position < end:
            if position + PDV_HEADER.size > end:
                raise ProtocolError("a PDV item is truncated")
            length, context_id, control = PDV_HEADER.unpack_from(body, position)
            if length < 2 or position + 4 + length > end:
                raise ProtocolError(f"a PDV item's length {length} does not fit its P-DATA-TF")
            value = body[position + PDV_HEADER.size:position + 4 + length]
            position += 4 + length
            if context_id not in self.accepted:
                raise ProtocolError(f"a PDV on presentation context {context_id}, which was not accepted")
            if self._context is None:
                self._context = context_id
            elif context_id != self._context:
                raise ProtocolError(f"a message continued on presentation context {context_id} after "
                                    f"{self._context}")
            if control & COMMAND:
                self._command_fragment(value, control, completed)
            else:
                self._data_fragment(value, control, completed)

    def _command_fragment(self, value: memoryview, control: int, completed: list[Message]) -> None:
        if self._parsed is not None:
            raise ProtocolError("a command fragment where the data set was expected")
        if len(self._command) + len(value) > MESSAGE_LIMIT:
            raise ProtocolError(f"a command set grows beyond {MESSAGE_LIMIT} bytes")
        self._command += value
        if not control & LAST:
            return
        command = Command.decode(bytes(self._command))
        if not command.has_data_set:
            completed.append(Message(self._context, command))
            self._reset()
            return
        self._parsed = command
        self._sink = self.sink_for(self._context, command)
        if self._sink is None:
            self._data = bytearray()

    def _data_fragment(self, value: memoryview, control: int, completed: list[Message]) -> None:
        if self._parsed is None:
            raise ProtocolError("a data set fragment before its command set was complete")
        if self._sink is not None:
            self._sink.add(value)
        else:
            if len(self._data) + len(value) > MESSAGE_LIMIT:
                raise ProtocolError(f"a DIMSE message grows beyond {MESSAGE_LIMIT} bytes held in memory")
            self._data += value
        if control & LAST:
            if self._sink is not None:
                self._sink.flush()
                completed.append(Message(self._context, self._parsed, sink=self._sink))
            else:
                completed.append(Message(self._context, self._parsed, data=bytes(self._data)))
            self._reset()

    def flush(self) -> None:
        """Write what a sink was given: the receive buffer is about to be filled again."""
        if self._sink is not None:
            self._sink.flush()

    def discard(self) -> None:
        """The association ended inside a message: its partial data set goes (FL-02)."""
        if self._sink is not None:
            self._sink.discard()
        self._reset()
