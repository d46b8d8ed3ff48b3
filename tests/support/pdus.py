"""Hand-made PDUs and a raw-socket peer, for requests pynetdicom's AE would never send.

The PDUs are encoded by pynetdicom's own PDU classes from primitives we fill in, so only the
field we mean to break is unusual.
"""

from __future__ import annotations

import socket
import struct

from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, ImplementationClassUIDNotification, MaximumLengthNotification
from pynetdicom.presentation import build_context

import datasets

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
RELEASE_RQ = bytes.fromhex("05 00 00000004 00000000")


def request(calling: str = "TEST_SCU", called: str = "EX_STORE_SCP", *,
            contexts: tuple = ((datasets.VERIFICATION, (datasets.ILE,)),),
            application_context: str = APPLICATION_CONTEXT, max_length: int | None = 16384) -> bytes:
    """An encoded A-ASSOCIATE-RQ; `max_length=None` leaves out the mandatory maximum length."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = application_context
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    for number, (abstract, syntaxes) in enumerate(contexts):
        context = build_context(abstract, list(syntaxes))
        context.context_id = 2 * number + 1
        primitive.presentation_context_definition_list.append(context)
    identity = ImplementationClassUIDNotification()
    identity.implementation_class_uid = "1.2.826.0.1.3680043.9.7433.1"
    items = [identity]
    if max_length is not None:
        limit = MaximumLengthNotification()
        limit.maximum_length_received = max_length
        items.insert(0, limit)
    primitive.user_information = items
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def header(pdu_type: int, length: int) -> bytes:
    return struct.pack(">BxL", pdu_type, length)


def connect(port: int, host: str = "127.0.0.1", timeout: float = 10.0,
            receive_buffer: int | None = None) -> socket.socket:
    """A TCP connection, Nagle off; `receive_buffer`: SO_RCVBUF set before connecting, so that
    the window it advertises stays that small (a peer that reads slowly fills it at once)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.settimeout(timeout)
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_pdu(sock: socket.socket) -> bytes:
    """One whole PDU, or b"" when the connection is closed (or reset) first."""
    data = b""
    try:
        while len(data) < 6 or len(data) < 6 + struct.unpack(">L", data[2:6])[0]:
            chunk = sock.recv(65536)
            if not chunk:
                return b""
            data += chunk
    except ConnectionResetError:
        return b""
    return data


class Reader:
    """PDUs one at a time off a socket, however the bytes arrive (read_pdu may return more)."""

    def __init__(self, sock: socket.socket):
        self.sock, self.buffer = sock, b""

    def pdu(self) -> bytes:
        while len(self.buffer) < 6 or len(self.buffer) < 6 + struct.unpack(">L", self.buffer[2:6])[0]:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed in the middle of a PDU"
            self.buffer += chunk
        size = 6 + struct.unpack(">L", self.buffer[2:6])[0]
        pdu, self.buffer = self.buffer[:size], self.buffer[size:]
        return pdu


def pdvs(pdu: bytes) -> list[tuple[int, bytes]]:
    """The (message control header, fragment) of each PDV in a P-DATA-TF PDU."""
    items, offset = [], 6
    while offset < len(pdu):
        length = struct.unpack(">L", pdu[offset:offset + 4])[0]
        items.append((pdu[offset + 5], pdu[offset + 6:offset + 4 + length]))
        offset += 4 + length
    return items


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the appliance has closed the connection (EOF or reset), after any PDUs it sent."""
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True


def exchange(port: int, data: bytes, host: str = "127.0.0.1") -> bytes:
    """Send `data` on a new connection and return the first PDU that comes back."""
    with connect(port, host) as sock:
        sock.sendall(data)
        return read_pdu(sock)


def rejection(pdu: bytes) -> tuple[int, int, int] | str:
    """(result, source, reason) of an A-ASSOCIATE-RJ; otherwise a short description."""
    if pdu[:1] == b"\x03":
        return pdu[7], pdu[8], pdu[9]
    return {b"": "closed", b"\x02": "accepted", b"\x07": "aborted"}.get(pdu[:1], f"PDU type {pdu[:1].hex()}")


def p_data(message, context_id: int = 1, max_pdu: int = 16384, message_class=None) -> list[bytes]:
    """The encoded P-DATA-TF PDUs of a DIMSE primitive (C_ECHO, C_STORE, …) as pynetdicom
    encodes it: a request, or the message of `message_class` (C_FIND_RSP, …)."""
    from pynetdicom import dimse_messages
    from pynetdicom.pdu import P_DATA_TF

    encoder = (message_class or getattr(dimse_messages, f"{type(message).__name__}_RQ"))()
    encoder.primitive_to_message(message)
    encoded = []
    for primitive in encoder.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        encoded.append(pdu.encode())
    return encoded


def c_echo(message_id: int = 1, context_id: int = 1) -> list[bytes]:
    from pynetdicom.dimse_primitives import C_ECHO

    message = C_ECHO()
    message.MessageID = message_id
    message.AffectedSOPClassUID = datasets.VERIFICATION
    return p_data(message, context_id)


def c_find(sop_class: str, identifier, message_id: int = 1) -> "object":
    """A C-FIND-RQ primitive (for `p_data`); `identifier` is a pydicom Dataset (sent in ILE) or bytes."""
    from io import BytesIO

    from pynetdicom.dimse_primitives import C_FIND
    from pynetdicom.dsutils import encode

    message = C_FIND()
    message.MessageID, message.AffectedSOPClassUID, message.Priority = message_id, sop_class, 0
    message.Identifier = BytesIO(identifier if isinstance(identifier, bytes) else encode(identifier, True, True))
    return message


def c_store(path, context_id: int, message_id: int = 1) -> list[bytes]:
    """The C-STORE-RQ of Part 10 file `path`, its dataset bytes as they are in the file."""
    import io

    from pydicom import dcmread
    from pynetdicom.dimse_primitives import C_STORE

    meta = dcmread(path, stop_before_pixels=True).file_meta
    message = C_STORE()
    message.MessageID = message_id
    message.AffectedSOPClassUID = meta.MediaStorageSOPClassUID
    message.AffectedSOPInstanceUID = meta.MediaStorageSOPInstanceUID
    message.Priority = 0
    message.DataSet = io.BytesIO(datasets.dataset_bytes(path))
    return p_data(message, context_id)


def associated(port: int, *contexts, called: str = "EX_STORE_SCP", host: str = "127.0.0.1",
               calling: str = "TEST_SCU", receive_buffer: int | None = None) -> socket.socket:
    """A raw socket with an accepted association (contexts as for `request`; IDs 1, 3, 5, …)."""
    sock = connect(port, host, receive_buffer=receive_buffer)
    sock.sendall(request(calling=calling, called=called,
                         contexts=contexts or ((datasets.VERIFICATION, (datasets.ILE,)),)))
    answer = read_pdu(sock)
    assert answer[:1] == b"\x02", f"association not accepted: {rejection(answer)}"
    return sock
