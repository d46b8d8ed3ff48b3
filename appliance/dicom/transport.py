"""One DICOM connection's bytes (PS3.8 9): a bounded PDU reader, a sender, and an abort.

Accepted associations and every association the service requests (STORAGE-SCU, commitment
reports, the service tool's echo) use this one class. Its owner thread reads and sends;
`abort` may come from any thread (lease lost, shutdown, reload) and ends a blocked read or
send at once.

Reading goes through one reusable buffer: a recv fills as much of it as the kernel has, and
the PDUs in it are handed out as memoryviews, valid until the next read. So a C-STORE data
set moves from the socket to its file without a copy in Python, several PDUs per system call.
Bounds: a PDU may announce at most what `check_header` allows; within a PDU the peer may
pause at most `pdu_gap` (CF-07) and must complete it within `whole` seconds of its first
byte, so a trickling peer cannot hold a thread; a send may block at most `send_timeout`
(CF-06).
"""

from __future__ import annotations

import collections
import os
import socket
import ssl
import threading
import time

from appliance.dicom import pdu
from appliance.dicom.pdu import HEADER, ProtocolError

_DRAIN_LIMIT = 1 << 20  # bytes read and dropped at close, so the close is a FIN, not a reset
_MIN_READ = 64 << 10  # a read into less free space than this moves the unread bytes to the front first


class Closed(Exception):
    """The connection ended: closed by the peer, broken, or shut by `abort`."""


class PeerClosed(Closed):
    """The peer closed the connection (end of file)."""

    def __init__(self):
        super().__init__("connection lost")


class Idle(Exception):
    """No PDU began within the wait the caller gave."""


class TimedOut(ProtocolError):
    """A timer expired inside a PDU."""


class SendTimedOut(Exception):
    """The peer took no data for timeouts.send seconds (CF-06)."""


class Buffers:
    """Receive buffers kept for the next connections. A quarter megabyte allocated in one thread
    and freed in another, per association, fragments the C heap: the service grew about 3 MB
    per 1,000 associations until they were reused (UL-03)."""

    def __init__(self, size: int, kept: int):
        self.size = size
        self._free: collections.deque[bytearray] = collections.deque(maxlen=kept)  # thread-safe append/pop

    def take(self) -> bytearray:
        try:
            return self._free.pop()
        except IndexError:
            return bytearray(self.size)

    def give(self, buffer: bytearray) -> None:
        if len(buffer) == self.size:  # not one that grew for a larger PDU than usual
            self._free.append(buffer)


class Transport:
    def __init__(self, sock: socket.socket, max_pdata: int, pdu_gap: float, send_timeout: float,
                 buffers: Buffers, initial: bytes = b""):
        self.sock = sock
        self.max_pdata = max_pdata  # the largest P-DATA-TF we take: the maximum we advertised (D-1)
        self.pdu_gap = pdu_gap
        self.send_timeout = send_timeout
        self._buffers = buffers
        self._buffer = buffers.take() if len(initial) <= buffers.size else bytearray(len(initial))
        self._view = memoryview(self._buffer)
        self._buffer[:len(initial)] = initial
        self._start, self._end = 0, len(initial)  # the bytes received and not handed out yet
        self._send_lock = threading.Lock()  # one PDU at a time: an abort never splits one
        self._state_lock = threading.Lock()  # abort() and close() against each other
        self.aborted = False
        self.closed = False
        self.received = len(initial)  # bytes from the peer, `initial` (what followed its A-ASSOCIATE-RQ) included

    # --- reading --------------------------------------------------------------------------

    def read_pdu(self, wait: float, expected: tuple[int, ...], whole: float, whole_key: str) -> tuple[int, memoryview]:
        """The next PDU (type, body): its first byte within `wait` seconds (else Idle), the rest
        without a pause longer than pdu_gap and within `whole` seconds of the first byte
        (`whole_key` names that setting in the message); ProtocolError for a type not `expected`
        or a length beyond the bounds, Closed when the connection ends. Memoryviews handed out
        before are spent: their bytes may be overwritten."""
        if self._start == self._end:
            self._receive(wait, idle=True)
        deadline = time.monotonic() + whole
        while (found := self.buffered_pdu(expected)) is None:
            if time.monotonic() > deadline:
                raise TimedOut(f"a PDU was not complete within {whole:g} s ({self._progress()}; {whole_key})")
            progress = self._progress()
            try:
                self._receive(self.pdu_gap, idle=False)
            except TimeoutError:
                raise TimedOut(f"no data for {self.pdu_gap:g} s inside a PDU ({progress}; timeouts.pdu_gap)") from None
        return found

    def _progress(self) -> str:
        return progress(self._view[self._start:self._end])

    def buffered_pdu(self, expected: tuple[int, ...]) -> tuple[int, memoryview] | None:
        """The next PDU if it has been received whole, else None; no system call, and the
        memoryviews handed out before stay valid."""
        available = self._end - self._start
        if available < HEADER.size:
            return None
        pdu_type, length = HEADER.unpack_from(self._buffer, self._start)
        pdu.check_header(pdu_type, length, self.max_pdata, expected)
        total = HEADER.size + length
        if available < total:
            return None
        body = self._view[self._start + HEADER.size:self._start + total]
        self._start += total
        return pdu_type, body

    def poll(self) -> bool:
        """Take in what the peer has sent, without waiting; whether anything came. Closed when
        the connection has ended. Memoryviews handed out before are spent."""
        try:
            self._read(0)  # with a timeout, Python would wait for data before reading
        except BlockingIOError:
            return False
        return True

    def _receive(self, wait: float, idle: bool) -> None:
        try:
            self._read(wait)
        except TimeoutError:
            if idle:
                raise Idle() from None
            raise

    def _read(self, wait: float) -> None:
        self._make_room()
        self.sock.settimeout(wait)
        try:
            got = self.sock.recv_into(self._view[self._end:])
        except (BlockingIOError, TimeoutError):
            raise
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):  # TLS, not waiting: nothing whole yet
            raise BlockingIOError() from None
        except OSError as exc:
            raise Closed(f"connection lost: {reason(exc)}") from None
        if not got:
            raise PeerClosed()
        self._end += got
        self.received += got

    def _make_room(self) -> None:
        """Room after the unread bytes for the PDU they begin, and for a read worth a system
        call: the unread bytes (less than a PDU) move to the front when the free tail is short,
        and the buffer grows for a larger PDU than any before."""
        unread = self._end - self._start
        needed = HEADER.size
        if unread >= HEADER.size:  # maybe not checked yet (after a poll): bounded by the largest we take
            needed += min(HEADER.unpack_from(self._buffer, self._start)[1], max(self.max_pdata, pdu.CONTROL_PDU_LIMIT))
        size = len(self._buffer)
        if self._start + needed <= size and size - self._end >= min(_MIN_READ, needed - unread):
            return
        if needed >= size:
            bigger = bytearray(max(needed + 1, 2 * size))
            bigger[:unread] = self._view[self._start:self._end]
            self._buffer, self._view = bigger, memoryview(bigger)
        else:
            self._buffer[:unread] = self._view[self._start:self._end]
        self._start, self._end = 0, unread

    # --- sending --------------------------------------------------------------------------

    def send(self, *parts) -> None:
        """Write `parts` (bytes-like) in order; SendTimedOut when the peer takes nothing for
        send_timeout seconds (CF-06), Closed when the connection is gone or aborted."""
        with self._send_lock:
            if self.aborted or self.closed:
                raise Closed("the association was aborted")
            self.sock.settimeout(self.send_timeout)
            try:
                for part in parts:
                    self.sock.sendall(part)
            except TimeoutError:
                raise SendTimedOut(f"the peer accepted no data for {self.send_timeout:g} s (timeouts.send)") from None
            except OSError as exc:
                raise Closed(f"connection lost while sending: {reason(exc)}") from None

    # --- ending ---------------------------------------------------------------------------

    def abort(self, source: int = pdu.USER, reason_code: int = 0, owner: bool = False) -> bool:
        """From any thread: an A-ABORT, unless a PDU is being written at this moment, and the
        connection shut both ways, so that the owner's read or send returns at once. Whether
        this call aborted it (False: it was aborted or closed before).

        Over TLS only the owner thread (`owner`) writes the A-ABORT: another thread's call may
        come while the owner is inside OpenSSL reading, and one TLS connection must not be used
        by two threads at once; the peer then sees the connection close (an A-P-ABORT)."""
        with self._state_lock:
            if self.aborted or self.closed:
                return False
            self.aborted = True
            tls = isinstance(self.sock, ssl.SSLSocket)
            if (owner or not tls) and self._send_lock.acquire(blocking=False):
                try:
                    # Non-blocking: 10 bytes that the socket's buffer takes, or nothing.
                    if tls:
                        self.sock.settimeout(0)
                        self.sock.send(pdu.abort_pdu(source, reason_code))
                    else:
                        os.write(self.sock.fileno(), pdu.abort_pdu(source, reason_code))
                except OSError:
                    pass
                finally:
                    self._send_lock.release()
            try:
                # The system call itself: SSLSocket.shutdown would also drop its TLS state under
                # the owner thread's feet.
                socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
            except OSError:
                pass
            return True

    def wait_for_close(self, wait: float) -> None:
        """PS3.8 Sta13: after our A-RELEASE-RP the peer closes first (closing first ourselves
        would race the peer's reading of the answer); whatever it still sends is dropped; at
        most `wait` seconds."""
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                if not self.sock.recv_into(self._view):
                    return
            except OSError:
                return

    def close(self) -> None:
        with self._state_lock:
            if self.closed:
                return
            self.closed = True
            drained = 0
            try:
                self.sock.settimeout(0)
                while drained < _DRAIN_LIMIT:
                    got = self.sock.recv_into(self._view)
                    if not got:
                        break
                    drained += got
            except OSError:
                pass
            self.sock.close()
            self._buffers.give(self._buffer)


def progress(partial) -> str:
    """How much of a PDU has come: "N of M bytes received" (M: the header's 6 until it is whole)."""
    total = HEADER.size + HEADER.unpack_from(partial)[1] if len(partial) >= HEADER.size else HEADER.size
    return f"{len(partial)} of {total} bytes received"


def reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
