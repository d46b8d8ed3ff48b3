"""A small syslog collector for the audit trail tests: UDP (RFC 5426), TCP with octet counting
(RFC 6587) and TLS (RFC 5425), on loopback, in threads of the test process.

Every message received is parsed as RFC 5424 (a message that is not is a test failure, kept
in `malformed`); `wait_for` blocks until the messages satisfy a condition, with a bound. A
stream that ends in the middle of a frame is recorded in `truncated` (a sender that wrote
part of a message and then lost its connection). `stop` closes the listener and every
connection, so that the same port can be refused, then served again by a new collector.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass

_BOM = b"\xef\xbb\xbf"
# RFC 5424 6: HEADER SP STRUCTURED-DATA [SP MSG]; the appliance sends no structured data.
_SYSLOG = re.compile(rb"<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) (-|\[.*?\])(?: (.*))?\Z", re.S)


@dataclass(frozen=True)
class Message:
    facility: int
    severity: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    body: bytes  # MSG without its BOM
    bom: bool
    peer_certificate: dict | None = None  # TLS: the client certificate the sender presented

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


def parse(data: bytes, peer_certificate: dict | None = None) -> Message:
    found = _SYSLOG.match(data)
    if not found:
        raise ValueError(f"not an RFC 5424 message: {data[:200]!r}")
    pri, timestamp, hostname, app_name, procid, msgid, _, body = found.groups()
    body = body or b""
    bom = body.startswith(_BOM)
    return Message(int(pri) // 8, int(pri) % 8, timestamp.decode(), hostname.decode(), app_name.decode(),
                   procid.decode(), msgid.decode(), body[3:] if bom else body, bom, peer_certificate)


class Collector:
    def __init__(self, scheme: str, port: int, context: ssl.SSLContext | None = None):
        self.scheme = scheme
        self.port = port
        self.context = context
        self.messages: list[Message] = []
        self.malformed: list[bytes] = []
        self.truncated = 0
        self.connections = 0
        self._cond = threading.Condition()
        self._open: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stopping = False

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> "Collector":
        kind = socket.SOCK_DGRAM if self.scheme == "udp" else socket.SOCK_STREAM
        self._sock = socket.socket(socket.AF_INET, kind)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        if kind == socket.SOCK_STREAM:
            self._sock.listen(16)
        self._sock.settimeout(0.2)
        self._spawn(self._serve_udp if self.scheme == "udp" else self._accept)
        return self

    def stop(self) -> None:
        self._stopping = True
        for thread in self._threads:
            thread.join(5)
        self._sock.close()

    def __enter__(self) -> "Collector":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_for(self, condition, what: str, timeout: float = 15.0):
        """Block until `condition(messages)` is true (returned); fail after `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = condition(list(self.messages))
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"the collector has not received {what} within {timeout} s; it has "
                                         f"{len(self.messages)} messages: {[m.msgid for m in self.messages]}")
                self._cond.wait(left)

    def wait_count(self, count: int, timeout: float = 15.0) -> list[Message]:
        return self.wait_for(lambda found: found if len(found) >= count else None, f"{count} messages", timeout)

    # --- threads ---------------------------------------------------------------------------------

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _keep(self, data: bytes, peer_certificate: dict | None = None) -> None:
        try:
            message = parse(data, peer_certificate)
        except ValueError:
            with self._cond:
                self.malformed.append(data)
                self._cond.notify_all()
            return
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    def _serve_udp(self) -> None:
        while not self._stopping:
            try:
                data = self._sock.recv(65535)
            except socket.timeout:
                continue
            self._keep(data)

    def _accept(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            self.connections += 1
            self._spawn(self._serve_stream, conn)

    def _serve_stream(self, conn: socket.socket) -> None:
        certificate = None
        try:
            conn.settimeout(5)
            if self.context is not None:
                conn = self.context.wrap_socket(conn, server_side=True)
                certificate = conn.getpeercert()
            conn.settimeout(0.2)
            buffer = b""
            while not self._stopping:
                try:
                    chunk = conn.recv(65536)
                except (socket.timeout, ssl.SSLWantReadError):
                    continue
                if not chunk:
                    break
                buffer += chunk
                while True:  # RFC 6587 3.4.1: MSG-LEN SP SYSLOG-MSG
                    space = buffer.find(b" ")
                    if space < 0:
                        break
                    if not buffer[:space].isdigit():
                        with self._cond:
                            self.malformed.append(buffer)
                            self._cond.notify_all()
                        return
                    length = int(buffer[:space])
                    if len(buffer) < space + 1 + length:
                        break
                    self._keep(buffer[space + 1:space + 1 + length], certificate)
                    buffer = buffer[space + 1 + length:]
            if buffer:
                self.truncated += 1
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()
