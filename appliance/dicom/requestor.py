"""An association the appliance requests, run synchronously in the calling thread.

STORAGE-SCU's exports, STORAGE-SCP's commitment reports and the service tool's echo each do
one thing at a time (SU-16), so the calling thread owns the connection outright: it writes
each request (a C-STORE-RQ straight from the stored file, in PDU-sized reads) and waits for
the answer itself, with one timer per wait (CF-03 connect, CF-05 association response, CF-06
send, CF-07 inside a PDU, SU-10 DIMSE). Bytes go through the same transport as an accepted
association's. Towards a remote AE with `tls = true` the connection is TLS (SE-10): the
handshake follows the TCP connect, within timeouts.connect too.

Every failure raises `Failed` with words for the service log; after one the association is
unusable and has been aborted or closed.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
from dataclasses import dataclass

from appliance.config.model import Config, RemoteAE, Timeouts
from appliance.dicom import dimse, pdu, sockets
from appliance.dicom.dimse import Assembler, Command, Message
from appliance.dicom.pdu import (ABORT, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA_TF, PDV_OVERHEAD, RELEASE_RP, RELEASE_RQ,
                                 Identity, Proposal, ProtocolError)
from appliance.dicom.transport import Buffers, Closed, Idle, PeerClosed, SendTimedOut, TimedOut, Transport, reason
from appliance.tls.contexts import TlsUnavailable, check_subject, client_context, handshake_failure

_ANY_PDU = tuple(pdu.NAMES)
_BUFFERS = Buffers(64 << 10, 16)  # responses are small
_BATCH = 1 << 20  # bytes of PDUs per write
_MAX_IOVECS = 1024  # Linux IOV_MAX: buffers per preadv


class Failed(Exception):
    """The association could not be opened, or broke; the message says why (service log)."""


@dataclass(frozen=True)
class Local:
    """Who requests and how: calling title, the largest PDU it receives (advertised) and sends
    (CF-02), its socket buffers (CF-08), its implementation identity (AE-10, AE-11)."""

    title: str
    max_pdu_receive: int
    max_pdu_send: int
    socket_buffer_size: int
    implementation_uid: str
    implementation_version: str

    def identity(self) -> Identity:
        return Identity(self.max_pdu_receive, self.implementation_uid, self.implementation_version)


class Association:
    """An established association. `accepted` maps context ID -> (abstract syntax, transfer syntax)."""

    def __init__(self, transport: Transport, timeouts: Timeouts, max_send: int):
        self.transport = transport
        self.timeouts = timeouts
        self.accepted: dict[int, tuple[str, str]] = {}
        self.max_pdu = max_send  # CF-02, lowered to the peer's maximum once it is known (AS-16)
        self.open = True

    # --- opening ----------------------------------------------------------------------------

    @classmethod
    def request(cls, host: str, port: int, called: str, local: Local, proposals: list[Proposal],
                timeouts: Timeouts, tls: ssl.SSLContext | None = None, subject: str = "") -> "Association":
        """`subject`: over TLS, the one the peer's certificate must have (SE-09), "" any."""
        sock = connect(host, port, local, timeouts)
        if tls is not None:
            sock = secure(sock, tls, host, port, subject)
        return cls.over(sock, called, local, proposals, timeouts)

    @classmethod
    def over(cls, sock: socket.socket, called: str, local: Local, proposals: list[Proposal],
             timeouts: Timeouts) -> "Association":
        """The association negotiated on a connected socket (closed when that fails)."""
        association = cls(Transport(sock, local.max_pdu_receive, timeouts.pdu_gap, timeouts.send, _BUFFERS),
                          timeouts, local.max_pdu_send)
        try:
            association._send(pdu.request_pdu(local.title, called, proposals, local.identity()))
            pdu_type, body = association._read_pdu(timeouts.association_response, "the association response",
                                                   "timeouts.association_response")
            if pdu_type == ASSOCIATE_RJ:
                raise Failed(f"association rejected by {called}: {pdu.describe_reject(body)}")
            if pdu_type != ASSOCIATE_AC:
                raise Failed(f"{called} answered the association request with PDU type 0x{pdu_type:02X}")
            try:
                association.accepted, peer_max = pdu.decode_accept(body, proposals)
            except ProtocolError as exc:
                raise Failed(str(exc)) from None
            if peer_max:  # 0: no limit (PS3.8 D.1)
                association.max_pdu = min(association.max_pdu, peer_max)
            return association
        except BaseException:
            association._close()
            raise

    # --- messages ---------------------------------------------------------------------------

    def send_message(self, context_id: int, command: bytes, fd: int, offset: int, length: int) -> None:
        """A message whose data set is the `length` bytes at `offset` of file `fd`, in PDUs the
        peer accepts.

        Up to `_BATCH` bytes of PDUs are built in one buffer: one scattered read (preadv) puts
        each fragment after the gap left for its header, and one write sends them all. With a
        destination's 16 KiB PDUs (DCMTK's default) a read and a write per PDU cost more than
        the copies."""
        self._send(dimse.fragments(context_id, command, pdu.COMMAND, self.max_pdu))
        # PS3.8 9.3.1: the maximum bounds a P-DATA-TF's length field, so a PDV value holds 6
        # bytes less.
        fragment = self.max_pdu - 6
        per_batch = max(min(_BATCH // (fragment + PDV_OVERHEAD), _MAX_IOVECS), 1)
        buffer = bytearray(min(per_batch, -(-max(length, 1) // fragment)) * (fragment + PDV_OVERHEAD))
        view = memoryview(buffer)
        remaining = length
        while True:
            sizes, slots, used, left = [], [], 0, remaining
            while used < len(buffer) and (left or not sizes):  # an empty data set is one empty PDV
                size = min(left, fragment)
                sizes.append(size)
                slots.append(view[used + PDV_OVERHEAD:used + PDV_OVERHEAD + size])
                used += PDV_OVERHEAD + size
                left -= size
            wanted = remaining - left
            got = os.preadv(fd, slots, offset) if wanted else 0
            if got != wanted:
                raise Failed(f"the stored file ended {remaining - got} bytes early")
            offset += wanted
            position = 0
            for size in sizes:
                remaining -= size
                struct.pack_into(">BxLLBB", buffer, position, P_DATA_TF, size + 6, size + 2, context_id,
                                 pdu.LAST if remaining == 0 else 0x00)
                position += PDV_OVERHEAD + size
            self._send(view[:used])
            if remaining == 0:
                return

    def send_command(self, context_id: int, command: bytes) -> None:
        """A message without a data set (Command Data Set Type 0x0101): its command set only."""
        self._send(dimse.message_pdus(context_id, command, None, self.max_pdu))

    def send_bytes_message(self, context_id: int, command: bytes, dataset: bytes) -> None:
        """A message whose data set was built in memory (an export with changed values)."""
        self._send(dimse.message_pdus(context_id, command, dataset, self.max_pdu))

    def receive_command(self, timeout: float, what: str, key: str) -> Command:
        """The command set of the next message (a data set after it is read and dropped).
        `timeout` bounds the wait for its first PDU."""
        assembler = Assembler(self.accepted, lambda context_id, command: None)
        completed: list[Message] = []
        while not completed:
            pdu_type, body = self._read_pdu(timeout, what, key)
            if pdu_type != P_DATA_TF:
                self._unexpected(pdu_type)
            try:
                assembler.feed(body, completed)
            except ProtocolError as exc:
                self.abort()
                raise Failed(f"the peer's message cannot be read: {exc}") from None
        return completed[0].command

    def _unexpected(self, pdu_type: int) -> None:
        if pdu_type == ABORT:
            self._close()
            raise Failed("association aborted by the peer (A-ABORT)")
        self.abort()
        if pdu_type == RELEASE_RQ:
            raise Failed("the peer asked to release the association in the middle of the export")
        raise Failed(f"unexpected PDU type 0x{pdu_type:02X} from the peer")

    # --- ending -----------------------------------------------------------------------------

    def release(self) -> None:
        """A-RELEASE-RQ, then the peer's A-RELEASE-RP; aborts if it does not come. Nothing
        after an abort or a lost connection."""
        if not self.open:
            return
        try:
            self._send(pdu.RELEASE_RQ_PDU)
            while True:
                pdu_type, _ = self._read_pdu(self.timeouts.association_response, "the release response",
                                             "timeouts.association_response")
                if pdu_type == RELEASE_RP:
                    break
                if pdu_type == RELEASE_RQ:  # release collision (PS3.8 7.2.2): we requested, so we answer
                    self._send(pdu.RELEASE_RP_PDU)
                elif pdu_type != P_DATA_TF:
                    self._unexpected(pdu_type)
        finally:
            self._close()

    def release_quietly(self) -> None:
        """Release at the end of a job: a destination that fails to answer the release has
        still received everything (it was aborted), so that is no export failure."""
        try:
            self.release()
        except Failed:
            pass

    def abort(self) -> None:
        if not self.open:
            return
        self.transport.abort(owner=True)  # the calling thread owns the connection
        self._close()

    def _close(self) -> None:
        self.open = False
        self.transport.close()

    # --- transport --------------------------------------------------------------------------

    def _send(self, data) -> None:
        try:
            self.transport.send(data)
        except SendTimedOut as exc:
            self.abort()
            raise Failed(str(exc)) from None
        except Closed as exc:
            self._close()
            raise Failed(str(exc)) from None

    def _read_pdu(self, timeout: float, what: str, key: str) -> tuple[int, memoryview]:
        """The next PDU: its first byte within `timeout`, the rest without a gap longer than
        timeouts.pdu_gap (CF-07). On a timeout the association is aborted."""
        try:
            return self.transport.read_pdu(timeout, _ANY_PDU, timeout, key)
        except Idle:
            self.abort()
            raise Failed(f"no {what} within {timeout:g} s ({key})") from None
        except ProtocolError as exc:  # TimedOut too
            self.abort()
            raise Failed(str(exc) if isinstance(exc, TimedOut) else f"the peer's PDU: {exc}") from None
        except PeerClosed:
            self._close()
            raise Failed("connection closed by the peer") from None
        except Closed as exc:
            self._close()
            raise Failed(str(exc)) from None


def connect(host: str, port: int, local: Local, timeouts: Timeouts) -> socket.socket:
    """A TCP connection within timeouts.connect (CF-03), tuned like every DICOM socket (CF-08)."""
    try:
        sock = socket.create_connection((host, port), timeout=timeouts.connect)
    except OSError as exc:
        raise Failed(f"cannot connect to {host} port {port}: {reason(exc)}") from None
    sockets.tune(sock, local.socket_buffer_size)  # no Nagle: a C-STORE-RQ's last PDU must not wait
    return sock


def secure(sock: socket.socket, context: ssl.SSLContext, host: str, port: int, subject: str = "") -> ssl.SSLSocket:
    """The TLS handshake on a connected socket, within its timeout (timeouts.connect), and the
    peer's certificate checked against `subject` when one is pinned (SE-09); the socket is
    closed when either fails."""
    try:
        tls = context.wrap_socket(sock)
    except ssl.SSLError as exc:
        sock.close()
        raise Failed(f"TLS handshake with {host} port {port} failed: {handshake_failure(exc)}") from None
    except OSError as exc:
        sock.close()
        raise Failed(f"TLS handshake with {host} port {port} failed: {reason(exc)}") from None
    if (wrong := check_subject(tls, subject)) is not None:
        tls.close()
        raise Failed(f"TLS with {host} port {port} refused: {wrong}")
    return tls


def tls_towards(remote: RemoteAE, config: Config) -> ssl.SSLContext | None:
    """The TLS context for associations to `remote` (None: plain TCP); Failed when the box's
    TLS files cannot make one (SE-10)."""
    if not remote.tls:
        return None
    try:
        return client_context(config)
    except TlsUnavailable as exc:
        raise Failed(f"no TLS to {remote.ae_title.strip()}: {exc}") from None
