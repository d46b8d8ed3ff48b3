"""An association the appliance requests, run synchronously in the calling thread (STORAGE-SCU).

pynetdicom's requestor runs each association as two threads that poll every millisecond and
hands every PDU between them; each C-STORE-RSP then waits 1-3 ms in those polls, and its
DIMSE timeout, network timeout and abort are spread over both threads. An export is one
thread doing one thing at a time (SU-16), so here it owns its socket outright: it writes
each C-STORE-RQ straight from the stored file in PDU-sized reads and waits for the answer in
the same thread, with one timer per wait (CF-03 connect, CF-05 association response, CF-06
send, CF-07 inside a PDU, SU-10 DIMSE). pynetdicom still encodes and decodes the association
PDUs (A-ASSOCIATE-RQ/AC/RJ).

Every failure raises `Failed` with words for the service log; after one the association is
unusable and has been aborted or closed.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
from dataclasses import dataclass

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (A_ASSOCIATE, ImplementationClassUIDNotification,
                                       ImplementationVersionNameNotification, MaximumLengthNotification,
                                       SCP_SCU_RoleSelectionNegotiation)
from pynetdicom.presentation import PresentationContext

from appliance.config.model import Timeouts
from appliance.codes import uids
from appliance.dicom import pdata, sockets

_ASSOCIATE_AC, _ASSOCIATE_RJ, _P_DATA_TF, _RELEASE_RQ, _RELEASE_RP, _ABORT = 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
_RELEASE_RQ_PDU = struct.pack(">BxLL", _RELEASE_RQ, 4, 0)
_RELEASE_RP_PDU = struct.pack(">BxLL", _RELEASE_RP, 4, 0)
_ABORT_PDU = struct.pack(">BxLxxBB", _ABORT, 4, 0, 0)  # source: service user, no reason
_MAX_INCOMING_PDU = 1 << 24
_BATCH = 1 << 20  # bytes of PDUs per write
_MAX_IOVECS = 1024  # Linux IOV_MAX: buffers per preadv  # a C-STORE-RSP is about 200 bytes; anything near this is garbage


class Failed(Exception):
    """The association could not be opened, or broke; the message says why (service log)."""


@dataclass(frozen=True)
class Proposal:
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]
    as_scp: bool = False  # an SCP/SCU Role Selection item: we are SCP, not SCU (PC-13)


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


class Association:
    """An established association. `accepted` maps context ID -> (abstract syntax, transfer syntax)."""

    def __init__(self, sock: socket.socket, timeouts: Timeouts, max_send: int):
        self.sock = sock
        self.accepted: dict[int, tuple[str, str]] = {}
        self.timeouts = timeouts
        self.max_pdu = max_send  # CF-02, lowered to the peer's maximum once it is known (AS-16)
        self.open = True

    # --- opening ----------------------------------------------------------------------------

    @classmethod
    def request(cls, host: str, port: int, called: str, local: Local, proposals: list[Proposal],
                timeouts: Timeouts) -> "Association":
        return cls.over(connect(host, port, local, timeouts), called, local, proposals, timeouts)

    @classmethod
    def over(cls, sock: socket.socket, called: str, local: Local, proposals: list[Proposal],
             timeouts: Timeouts) -> "Association":
        """The association negotiated on a connected socket (closed when that fails)."""
        try:
            association = cls(sock, timeouts, local.max_pdu_send)
            association._send(_associate_request(called, local, proposals))
            pdu_type, body = association._read_pdu(timeouts.association_response, "the association response",
                                                   "timeouts.association_response")
            if pdu_type == _ASSOCIATE_RJ:
                raise Failed(f"association rejected by {called}: {_rejection(body)}")
            if pdu_type != _ASSOCIATE_AC:
                raise Failed(f"{called} answered the association request with PDU type 0x{pdu_type:02X}")
            association._accept(body, proposals)
            return association
        except BaseException:
            sock.close()
            raise

    def _accept(self, body: bytes, proposals: list[Proposal]) -> None:
        ac = A_ASSOCIATE_AC()
        try:
            ac.decode(struct.pack(">BxL", _ASSOCIATE_AC, len(body)) + body)
            primitive = ac.to_primitive()
        except Exception as exc:  # pynetdicom's decoders raise anything on bad input
            raise Failed(f"the A-ASSOCIATE-AC cannot be decoded ({exc!r:.200})") from None
        proposed = {p.context_id: p for p in proposals}
        for result in primitive.presentation_context_definition_results_list:
            proposal = proposed.get(result.context_id)
            syntax = result.transfer_syntax[0] if result.transfer_syntax else None
            # PS3.8 9.3.3.2: only an accepted context's transfer syntax counts, and it must be
            # one we proposed for that context.
            if result.result == 0 and proposal is not None and syntax in proposal.transfer_syntaxes:
                self.accepted[result.context_id] = (proposal.abstract_syntax, str(syntax))
        peer_max = primitive.maximum_length_received or 0  # 0: no limit (PS3.8 D.1)
        if peer_max:
            self.max_pdu = min(self.max_pdu, peer_max)

    # --- messages ---------------------------------------------------------------------------

    def send_message(self, context_id: int, command: bytes, fd: int, offset: int, length: int) -> None:
        """A message whose data set is the `length` bytes at `offset` of file `fd`, in PDUs the
        peer accepts.

        Up to `_BATCH` bytes of PDUs are built in one buffer: one scattered read (preadv) puts
        each fragment after the gap left for its header, and one write sends them all. With a
        destination's 16 KiB PDUs (DCMTK's default) a read and a write per PDU cost more than
        the copies."""
        self._send(pdata.command_pdus(context_id, command, self.max_pdu))
        # PS3.8 9.3.1: the maximum bounds a P-DATA-TF's length field, so a PDV value holds 6
        # bytes less.
        fragment = self.max_pdu - 6
        per_batch = max(min(_BATCH // (fragment + pdata.PDV_OVERHEAD), _MAX_IOVECS), 1)
        buffer = bytearray(min(per_batch, -(-max(length, 1) // fragment)) * (fragment + pdata.PDV_OVERHEAD))
        view = memoryview(buffer)
        remaining = length
        while True:
            sizes, slots, used, left = [], [], 0, remaining
            while used < len(buffer) and (left or not sizes):  # an empty data set is one empty PDV
                size = min(left, fragment)
                sizes.append(size)
                slots.append(view[used + pdata.PDV_OVERHEAD:used + pdata.PDV_OVERHEAD + size])
                used += pdata.PDV_OVERHEAD + size
                left -= size
            wanted = remaining - left
            got = os.preadv(fd, slots, offset) if wanted else 0
            if got != wanted:
                raise Failed(f"the stored file ended {remaining - got} bytes early")
            offset += wanted
            position = 0
            for size in sizes:
                remaining -= size
                struct.pack_into(">BxLLBB", buffer, position, _P_DATA_TF, size + 6, size + 2, context_id,
                                 0x02 if remaining == 0 else 0x00)
                position += pdata.PDV_OVERHEAD + size
            self._send(view[:used])
            if remaining == 0:
                return

    def send_command(self, context_id: int, command: bytes) -> None:
        """A message without a data set (Command Data Set Type 0x0101): its command set only."""
        self._send(pdata.command_pdus(context_id, command, self.max_pdu))

    def send_bytes_message(self, context_id: int, command: bytes, dataset: bytes) -> None:
        """A message whose data set was built in memory (an export with changed values)."""
        self._send(pdata.message_pdus(context_id, command, dataset, self.max_pdu))

    def receive_command(self, timeout: float, what: str, key: str) -> dict[int, bytes]:
        """The command set of the next message (a data set after it is read and dropped): raw
        elements by element number. `timeout` bounds the wait for its first PDU."""
        command = bytearray()
        in_data_set = False
        while True:
            pdu_type, body = self._read_pdu(timeout, what, key)
            if pdu_type != _P_DATA_TF:
                self._unexpected(pdu_type)
            position = 0
            while position + 6 <= len(body):
                length, _context, control = struct.unpack_from(">LBB", body, position)
                value = body[position + 6:position + 4 + length]
                position += 4 + length
                if control & 0x01:
                    command += value
                    if control & 0x02:
                        elements = self._decode_command(bytes(command))
                        if pdata.command_uint16(elements, 0x0800) == 0x0101:
                            return elements
                        in_data_set = True
                elif in_data_set and control & 0x02:
                    return elements

    def _decode_command(self, command: bytes) -> dict[int, bytes]:
        try:
            return pdata.command_elements(command)
        except ValueError as exc:
            self.abort()
            raise Failed(f"the peer's command set cannot be read: {exc}") from None

    def _unexpected(self, pdu_type: int) -> None:
        if pdu_type == _ABORT:
            self._close()
            raise Failed("association aborted by the peer (A-ABORT)")
        self.abort()
        if pdu_type == _RELEASE_RQ:
            raise Failed("the peer asked to release the association in the middle of the export")
        raise Failed(f"unexpected PDU type 0x{pdu_type:02X} from the peer")

    # --- ending -----------------------------------------------------------------------------

    def release(self) -> None:
        """A-RELEASE-RQ, then the peer's A-RELEASE-RP; aborts if it does not come. Nothing
        after an abort or a lost connection."""
        if not self.open:
            return
        try:
            self._send(_RELEASE_RQ_PDU)
            while True:
                pdu_type, _ = self._read_pdu(self.timeouts.association_response, "the release response",
                                             "timeouts.association_response")
                if pdu_type == _RELEASE_RP:
                    break
                if pdu_type == _RELEASE_RQ:  # release collision (PS3.8 7.2.2): we requested, so we answer
                    self._send(_RELEASE_RP_PDU)
                elif pdu_type != _P_DATA_TF:
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
        try:
            self.sock.settimeout(1.0)
            self.sock.sendall(_ABORT_PDU)
        except OSError:
            pass
        self._close()

    def _close(self) -> None:
        self.open = False
        self.sock.close()

    # --- transport --------------------------------------------------------------------------

    def _send(self, data) -> None:
        self.sock.settimeout(self.timeouts.send)
        with self._transport(f"the peer accepted no data for {self.timeouts.send:g} s (timeouts.send)",
                             "connection lost while sending"):
            self.sock.sendall(data)

    def _read_pdu(self, timeout: float, what: str, key: str) -> tuple[int, bytes]:
        """The next PDU: its first byte within `timeout`, the rest without a gap longer than
        timeouts.pdu_gap (CF-07). On a timeout the association is aborted."""
        try:
            ready, _, _ = select.select([self.sock], [], [], timeout)
        except (OSError, ValueError) as exc:
            self._close()
            raise Failed(f"connection lost: {_reason(exc)}") from None
        if not ready:
            self.abort()
            raise Failed(f"no {what} within {timeout:g} s ({key})")
        header = self._receive(6)
        pdu_type, length = struct.unpack(">BxL", header)
        if length > _MAX_INCOMING_PDU:
            self.abort()
            raise Failed(f"the peer announced a PDU of {length} bytes")
        return pdu_type, self._receive(length)

    def _receive(self, count: int) -> bytes:
        self.sock.settimeout(self.timeouts.pdu_gap)
        data = bytearray()
        while len(data) < count:
            with self._transport(f"no data for {self.timeouts.pdu_gap:g} s inside a PDU (timeouts.pdu_gap)",
                                 "connection lost"):
                chunk = self.sock.recv(count - len(data))
            if not chunk:
                self._close()
                raise Failed("connection closed by the peer")
            data += chunk
        return bytes(data)


    @contextlib.contextmanager
    def _transport(self, timed_out: str, lost: str):
        """A timeout aborts the association, a broken connection closes it; both raise Failed."""
        try:
            yield
        except TimeoutError:
            self.abort()
            raise Failed(timed_out) from None
        except OSError as exc:
            self._close()
            raise Failed(f"{lost}: {_reason(exc)}") from None


def connect(host: str, port: int, local: Local, timeouts: Timeouts) -> socket.socket:
    """A TCP connection within timeouts.connect (CF-03), tuned like every DICOM socket (CF-08)."""
    try:
        sock = socket.create_connection((host, port), timeout=timeouts.connect)
    except OSError as exc:
        raise Failed(f"cannot connect to {host} port {port}: {_reason(exc)}") from None
    sockets.tune(sock, local.socket_buffer_size)  # no Nagle: a C-STORE-RQ's last PDU must not wait
    return sock


def _associate_request(called: str, local: Local, proposals: list[Proposal]) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = uids.APPLICATION_CONTEXT
    primitive.calling_ae_title = local.title
    primitive.called_ae_title = called
    contexts = []
    for proposal in proposals:
        context = PresentationContext()
        context.context_id = proposal.context_id
        context.abstract_syntax = proposal.abstract_syntax
        context.transfer_syntax = list(proposal.transfer_syntaxes)
        contexts.append(context)
    primitive.presentation_context_definition_list = contexts
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = local.max_pdu_receive
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = local.implementation_uid
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = local.implementation_version
    roles = []
    for abstract_syntax in dict.fromkeys(p.abstract_syntax for p in proposals if p.as_scp):
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid, role.scu_role, role.scp_role = abstract_syntax, False, True
        roles.append(role)
    primitive.user_information = [maximum, implementation, version, *roles]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def _rejection(body: bytes) -> str:
    rj = A_ASSOCIATE_RJ()
    try:
        rj.decode(struct.pack(">BxL", _ASSOCIATE_RJ, len(body)) + body)
    except Exception:
        return "undecodable A-ASSOCIATE-RJ"
    return f"{rj.result_str}, {rj.source_str}, {rj.reason_str} ({rj.result}/{rj.source}/{rj.reason_diagnostic})"


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
