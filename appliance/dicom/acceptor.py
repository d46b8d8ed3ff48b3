"""One listening AE's acceptor (PS3.8 Sta2 and the A-ASSOCIATE-RQ, UL-01, UL-02).

One thread per listening AE waits in epoll (`selectors`) on the listening socket and on every
connection that has not been admitted yet: it accepts, reads each A-ASSOCIATE-RQ as its bytes
come, and asks admission. A connection costs no thread and no CPU before that, whether it is
silent, trickling or being rejected; only an admitted association gets a thread
(`association.Association`), so a thousand idle connections do not slow the next C-ECHO.

Timers per connection, in the same thread: the whole A-ASSOCIATE-RQ within ARTIM of the
connection (CF-04), no pause longer than pdu_gap inside it (CF-07). A rejection (AS-01..AS-10,
A-ASSOCIATE-RJ) or a request that cannot be parsed (AS-06, 1/2/1) is answered here; then the
peer closes (PS3.8 Sta13), or ARTIM closes the connection. Bytes that are not an
A-ASSOCIATE-RQ close the connection with a line that says what they looked like.

A TLS listener (SE-07) does the TLS handshake here too, without blocking, before the request:
a connection whose first bytes are not a TLS handshake (a plain DICOM client on the TLS
port) or whose handshake fails (TLS 1.0/1.1, an untrusted or missing client certificate) is
logged with the reason and closed; ARTIM bounds the handshake with the request.

The answer to a request (negotiated contexts and the encoded A-ASSOCIATE-AC) depends only on
its bytes and this listener's contexts; a modality sends the same request every time, so
answers are kept by request.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import selectors
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field

from appliance import audit
from appliance.config.model import Timeouts
from appliance.dicom import pdu, sockets
from appliance.dicom.admission import CONGESTION, UNPARSEABLE, Admission, Rejection, Slot, log_rejection
from appliance.dicom.association import Association, Served
from appliance.dicom.pdu import HEADER, Identity, ProtocolError, Request
from appliance.dicom.session import Session, known_ip
from appliance.dicom.transport import Buffers, Transport, progress
from appliance.tls.contexts import client_subject, handshake_failure
from appliance.tls.contexts import describe as describe_tls
from appliance.wake import Wake

log = logging.getLogger("appliance.association")

_ACCEPTS_PER_ROUND = 64  # a burst of connections does not starve the ones being read
_ANSWERS_KEPT = 256
_ACCEPT_PAUSE = 0.5  # seconds without accepting after accept() failed (no descriptor left)
# A request may be up to 1 MiB (pdu.CONTROL_PDU_LIMIT); real ones are a few KiB. A thousand
# peers trickling large ones must not hold a gigabyte for ARTIM.
_HELD_LIMIT = 64 << 20
_FULL_LOG_INTERVAL = 60.0  # seconds between two lines saying that the connections are at the limit
_TLS_HANDSHAKE = 0x16  # the content type of a TLS record that begins a handshake (RFC 8446 5.1)


@dataclass(eq=False)
class _Waiting:
    """A connection before its association: reading the request, or closing after a rejection."""

    sock: socket.socket
    address: str  # the peer's IP
    session: Session
    deadline: float  # ARTIM: the whole request, or the peer's close after our A-ASSOCIATE-RJ
    data: bytearray = field(default_factory=bytearray)
    gap_deadline: float = 0.0  # pdu_gap, once part of the request has come
    # ("hello" -> "handshake" ->, on a TLS listener) "reading" -> "rejected" (waiting for the
    # peer's close) -> "gone" (closed or admitted)
    state: str = "reading"
    subject: str | None = None  # over TLS, the client certificate's subject ("" without one; SE-09)


class Listener:
    def __init__(self, served: Served, title: str, host: str, port: int, admission: Admission,
                 admission_limit: int, supported: list, identity: Identity, socket_buffer_size: int,
                 waiting_limit: int, tls: ssl.SSLContext | None = None):
        self.name = served.name
        self.title = title
        self.served = served
        self.admission = admission
        self.supported = supported  # pynetdicom PresentationContexts (the negotiation's input)
        self.identity = identity
        self.timeouts: Timeouts = served.timeouts
        self.socket_buffer_size = socket_buffer_size
        self.waiting_limit = waiting_limit  # connections held before their association (descriptors)
        self._tls = tls
        self.tls = tls is not None  # a DICOM TLS port (SE-07)
        self._buffers = Buffers(_buffer_size(served.max_pdu), admission_limit)
        self._answers: dict[bytes, tuple[dict[int, tuple[str, str]], bytes]] = {}
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self._sock.family == socket.AF_INET6:
                self._sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sockets.tune(self._sock, socket_buffer_size)  # inherited by accepted connections (CF-08)
            self._sock.bind((host, port))
            self._sock.listen(socket.SOMAXCONN)
        except OSError as exc:
            self._sock.close()
            where = f"port {port}" if host in ("::", "0.0.0.0") else f"{host} port {port}"
            where = f"TLS {where}" if tls else where
            why = exc.strerror
            if exc.errno == errno.EACCES:  # issue 22 item 7b: what to do about it
                why += " (a port below 1024 takes CAP_NET_BIND_SERVICE, which service-tool ae set adds as root)"
            raise OSError(exc.errno, f"{self.name} ({title}) cannot listen on {where}: {why}") from exc
        self._sock.setblocking(False)
        self.port = self._sock.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._wake = Wake()
        self._stopping = False
        self._timers: list[tuple[float, int, _Waiting]] = []
        self._accepting = False  # the listening socket is in the selector
        self._paused_until: float | None = None  # accepting paused: no descriptor was left
        self._full_logged = -_FULL_LOG_INTERVAL
        self._waiting = 0  # connections not admitted yet (reading their request, or rejected)
        self._held = 0  # bytes of requests not complete yet, all this listener's connections together
        self._sequence = itertools.count()
        self._thread = threading.Thread(target=self._run, name=f"{self.name} acceptor", daemon=True)

    def start(self) -> "Listener":
        self._thread.start()
        return self

    def stop_accepting(self) -> None:
        """The port closes and the connections not admitted yet go; associations go on."""
        self._stopping = True
        if self._thread.ident is None:  # never started
            self._sock.close()
            self._wake.close()
            return
        self._wake.ring()
        self._thread.join(10)

    def waiting(self) -> int:
        """Connections not admitted yet (for `status`)."""
        return self._waiting

    # --- the thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        selector = self._selector
        selector.register(self._wake, selectors.EVENT_READ, self._wake)
        self._resume()
        try:
            while not self._stopping:
                due = [t for t in (self._timers[0][0] if self._timers else None, self._paused_until) if t]
                timeout = max(min(due) - time.monotonic(), 0) if due else None
                for key, _ in selector.select(timeout):
                    if key.data is None:
                        self._accept()
                    elif key.data is self._wake:
                        self._wake.wait(0)
                    else:
                        self._readable(key.data)
                self._expire()
                if self._paused_until and time.monotonic() >= self._paused_until:
                    self._paused_until = None
                if not self._accepting and self._paused_until is None and self._waiting < self.waiting_limit:
                    self._resume()
        except Exception:
            log.exception("%s: the acceptor failed; no new associations until a restart", self.name)
        finally:
            for key in list(selector.get_map().values()):
                if isinstance(key.data, _Waiting):
                    key.data.sock.close()
            selector.close()
            self._sock.close()
            self._wake.close()

    def _accept(self) -> None:
        for _ in range(_ACCEPTS_PER_ROUND):
            if self._waiting >= self.waiting_limit:
                self._full()
                return
            try:
                sock, address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the connection stays in the backlog
                # The port stays readable: without a pause the loop would spin at full speed.
                log.error("%s: cannot accept a connection: %s; accepting again in %g s", self.name, exc,
                          _ACCEPT_PAUSE)
                self._pause()
                self._paused_until = time.monotonic() + _ACCEPT_PAUSE
                return
            self._waiting += 1
            sock.setblocking(False)
            sockets.tune(sock, self.socket_buffer_size)
            session = Session(self.name, known_ip(address[0]), address[1])
            waiting = _Waiting(sock, address[0], session, time.monotonic() + self.timeouts.artim,
                               state="hello" if self._tls else "reading")
            self._selector.register(sock, selectors.EVENT_READ, waiting)
            self._timer(waiting, waiting.deadline)

    def _full(self) -> None:
        """As many connections wait for their association as this listener may hold: the next ones
        wait in the kernel's backlog (or are refused by it) until some of these go, so that the
        descriptors left serve the admitted associations, their files and the rest of the service."""
        self._pause()
        now = time.monotonic()
        if now - self._full_logged >= _FULL_LOG_INTERVAL:
            self._full_logged = now
            log.warning("%s: %d connections wait for their association request, as many as one listener may "
                        "hold (a quarter of the service's file descriptors); new connections wait until some go",
                        self.name, self._waiting)

    def _pause(self) -> None:
        if self._accepting:
            self._selector.unregister(self._sock)
            self._accepting = False

    def _resume(self) -> None:
        self._selector.register(self._sock, selectors.EVENT_READ, None)
        self._accepting = True

    def _timer(self, waiting: _Waiting, when: float) -> None:
        heapq.heappush(self._timers, (when, next(self._sequence), waiting))
        # Timers of closed connections are skipped when due; so that a flood of short-lived
        # connections does not keep thousands of them (and their objects) for ARTIM, the heap
        # is rebuilt from the live ones once they are the minority.
        if len(self._timers) > 2 * self._waiting + 64:
            self._timers = [timer for timer in self._timers if timer[2].state != "gone"]
            heapq.heapify(self._timers)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, waiting = heapq.heappop(self._timers)
            if waiting.state == "gone":
                continue
            if waiting.state == "rejected":
                if now >= waiting.deadline:
                    self._close(waiting)
            elif waiting.state in ("hello", "handshake"):
                if now >= waiting.deadline:
                    self._drop(waiting, f"connection closed: the TLS handshake was not complete within "
                                        f"{self.timeouts.artim:g} s (timeouts.artim)")
            elif now >= waiting.deadline:
                if waiting.data:
                    self._drop(waiting, f"connection closed: the A-ASSOCIATE-RQ was not complete within "
                                        f"{self.timeouts.artim:g} s ({progress(waiting.data)}; timeouts.artim)")
                else:
                    self._drop(waiting, f"connection closed: no A-ASSOCIATE-RQ within {self.timeouts.artim:g} s "
                                        "(timeouts.artim)")
            elif waiting.gap_deadline and now >= waiting.gap_deadline:
                self._drop(waiting, f"connection closed: no data for {self.timeouts.pdu_gap:g} s inside a PDU "
                                    f"({progress(waiting.data)}; timeouts.pdu_gap)")

    def _readable(self, waiting: _Waiting) -> None:
        if waiting.state == "gone":  # closed or admitted earlier in this round
            return
        if waiting.state == "hello":
            self._hello(waiting)
            return
        if waiting.state == "handshake":
            self._handshake(waiting)
            return
        self._read_request(waiting)
        # Bytes that OpenSSL has taken from the kernel and not handed out make no epoll event.
        while waiting.state == "reading" and isinstance(waiting.sock, ssl.SSLSocket) and waiting.sock.pending():
            self._read_request(waiting)

    def _read_request(self, waiting: _Waiting) -> None:
        try:
            chunk = waiting.sock.recv(65536)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError as exc:
            chunk, error = b"", exc
        else:
            error = None
        if waiting.state == "rejected":
            if not chunk:
                self._close(waiting)
            return  # what a rejected peer still sends is dropped
        if not chunk:
            self._drop(waiting, "connection closed by the peer before an association request"
                       + (f" ({error.strerror})" if error else ""), logging.INFO)
            return
        if self._held + len(chunk) > _HELD_LIMIT:  # a flood of large, slow requests: memory is bounded
            self._drop(waiting, f"connection closed: the requests not complete yet hold {self._held} bytes, the "
                                f"{_HELD_LIMIT} allowed")
            return
        waiting.data += chunk
        self._held += len(chunk)
        data = waiting.data
        if len(data) < HEADER.size:
            self._gap(waiting)
            return
        pdu_type, length = HEADER.unpack_from(data)
        try:
            if pdu_type not in pdu.NAMES:
                raise ProtocolError(f"not a DICOM PDU ({pdu.describe(bytes(data[:8]))})")
            pdu.check_header(pdu_type, length, 0, (pdu.ASSOCIATE_RQ,))
        except ProtocolError as exc:
            if pdu_type == pdu.ASSOCIATE_RQ:  # too long: refused as unparseable (AS-06), like any bad request
                self._reject(waiting, UNPARSEABLE, "?", str(exc))
            else:
                self._drop(waiting, f"connection closed: {exc}")
            return
        if len(data) < HEADER.size + length:
            self._gap(waiting)
            return
        self._requested(waiting, bytes(data[:HEADER.size + length]), bytes(data[HEADER.size + length:]))

    # --- TLS (SE-07) ----------------------------------------------------------------------------

    def _hello(self, waiting: _Waiting) -> None:
        """The first bytes on a TLS port: a TLS handshake record, or the connection goes."""
        try:
            first = waiting.sock.recv(8, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._drop(waiting, f"connection lost before the TLS handshake ({exc.strerror})", logging.INFO)
            return
        if not first:
            self._drop(waiting, "connection closed by the peer before the TLS handshake", logging.INFO)
            return
        if first[0] != _TLS_HANDSHAKE:
            looks = "it looks like a plain DICOM A-ASSOCIATE-RQ, " if first[0] == pdu.ASSOCIATE_RQ else ""
            self._tls_failed(waiting, f"the peer did not start a TLS handshake on the TLS port ({looks}"
                                      f"{pdu.describe(first)}); is it configured for TLS?")
            return
        self._selector.unregister(waiting.sock)
        waiting.sock = self._tls.wrap_socket(waiting.sock, server_side=True, do_handshake_on_connect=False)
        self._selector.register(waiting.sock, selectors.EVENT_READ, waiting)
        waiting.state = "handshake"
        self._handshake(waiting)

    def _handshake(self, waiting: _Waiting) -> None:
        sock = waiting.sock
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._selector.modify(sock, selectors.EVENT_READ, waiting)
            return
        except ssl.SSLWantWriteError:  # the handshake's answer did not fit into the socket buffer
            self._selector.modify(sock, selectors.EVENT_WRITE, waiting)
            return
        except ssl.SSLError as exc:
            self._tls_failed(waiting, handshake_failure(exc))
            return
        except OSError as exc:
            self._drop(waiting, f"connection lost during the TLS handshake ({exc.strerror or exc})", logging.INFO)
            return
        self._selector.modify(sock, selectors.EVENT_READ, waiting)
        waiting.subject = client_subject(sock)
        waiting.session.tls = describe_tls(sock, waiting.subject)
        waiting.state = "reading"
        if sock.pending():  # the request's first bytes came with the handshake's end
            self._readable(waiting)

    def _tls_failed(self, waiting: _Waiting, why: str) -> None:
        self._drop(waiting, f"TLS connection refused: {why}")
        audit.node_authentication_failure(self.title, waiting.session.ip, f"TLS connection refused: {why}")  # AU-01

    def _gap(self, waiting: _Waiting) -> None:
        waiting.gap_deadline = time.monotonic() + self.timeouts.pdu_gap
        if waiting.gap_deadline < waiting.deadline:
            self._timer(waiting, waiting.gap_deadline)

    # --- the request ----------------------------------------------------------------------------

    def _requested(self, waiting: _Waiting, data: bytes, after: bytes) -> None:
        session = waiting.session
        self._forget_data(waiting)
        try:
            request = pdu.decode_request(data)
        except ProtocolError as exc:
            session.title, called = pdu.requested_titles(data)
            self._reject(waiting, UNPARSEABLE, called, str(exc))
            return
        session.title = request.calling
        decision = self.admission.decide(request, waiting.address, waiting.sock.getsockname()[0],
                                         lambda: len(self._answer(request)[0]), waiting.subject)
        if not isinstance(decision, Slot):
            self._reject(waiting, decision[0], request.called, decision[1])
            return
        accepted, accept_pdu = self._answer(request)
        transport = Transport(waiting.sock, self.served.max_pdu, self.timeouts.pdu_gap, self.timeouts.send,
                              self._buffers, after)
        association = Association(self.served, session, transport, request.called, accepted, request.max_length,
                                  accept_pdu, lambda: self.admission.leave(decision))
        self.admission.enter(decision, association)
        waiting.state = "gone"  # the association's thread has the socket from here
        self._waiting -= 1
        self._selector.unregister(waiting.sock)
        try:
            association.start()
        except RuntimeError as exc:  # "can't start new thread" (AS-02)
            self.admission.leave(decision)
            waiting.state = "reading"
            self._waiting += 1
            self._selector.register(waiting.sock, selectors.EVENT_READ, waiting)
            self._reject(waiting, CONGESTION, request.called, f"no worker thread can be started ({exc})")

    def _answer(self, request: Request) -> tuple[dict[int, tuple[str, str]], bytes]:
        """(accepted contexts, A-ASSOCIATE-AC) for `request`, kept by its bytes."""
        found = self._answers.get(request.pdu)
        if found is None:
            results, roles = pdu.negotiate(request, self.supported)
            accepted = {cx.context_id: (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                        for cx in results if cx.result == 0x00}
            found = (accepted, pdu.accept_pdu(request, results, roles, self.identity))
            if len(self._answers) >= _ANSWERS_KEPT:
                self._answers.clear()
            self._answers[request.pdu] = found
        return found

    def _reject(self, waiting: _Waiting, rejection: Rejection, called: str, why: str) -> None:
        log_rejection(waiting.session.prefix(), called, rejection, why)
        try:
            waiting.sock.send(pdu.reject_pdu(rejection.result, rejection.source, rejection.reason))
            if rejection is UNPARSEABLE:  # a peer that sends such a request may not close itself
                waiting.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(waiting)
            return
        # PS3.8 Sta13: the peer closes the connection; ARTIM bounds the wait.
        waiting.state = "rejected"
        self._forget_data(waiting)
        waiting.deadline = time.monotonic() + self.timeouts.artim
        self._timer(waiting, waiting.deadline)

    def _drop(self, waiting: _Waiting, why: str, level: int = logging.WARNING) -> None:
        log.log(level, "%s: %s", waiting.session.prefix(), why)
        self._close(waiting)

    def _close(self, waiting: _Waiting) -> None:
        if waiting.state != "gone":
            waiting.state = "gone"
            self._waiting -= 1
            self._forget_data(waiting)
            self._selector.unregister(waiting.sock)
            waiting.sock.close()

    def _forget_data(self, waiting: _Waiting) -> None:
        self._held -= len(waiting.data)
        waiting.data = bytearray()


def _buffer_size(max_pdu: int) -> int:
    """The receive buffer of an association: several PDUs per recv, at least 1 MiB (kept in the
    listener's Buffers: ten associations hold ten)."""
    return max(1 << 20, 2 * (max_pdu + HEADER.size)) if max_pdu <= 4 << 20 else max_pdu + HEADER.size
