"""The way to the audit collector: UDP (RFC 5426), TCP (RFC 6587) or TLS (RFC 5425) (AU-01).

`Transport.send(message)` delivers one RFC 5424 message or raises OSError (an ssl.SSLError is
one); the sender then keeps it in the spool and tries again later. A stream transport connects
on its first message and again after a failure, and finds out before each send whether the
collector has closed the connection meanwhile, so that a message is not written into a
connection that is already gone. Delivery is at least once: a message whose write failed part
way is sent again whole on the next connection.

TLS: 1.2 or 1.3 with the BCP 195 suites of DICOM TLS (appliance.tls.contexts), the
collector's certificate verified against `tls.ca_bundle` and, unlike a DICOM peer's, its name
or IP address against the host of `audit.collector` (RFC 5425 5.2: the collector is one
configured server, and anyone with a certificate from the hospital's CA must not stand in for
it); the box presents `tls.certificate` with `tls.key` when the certificate exists (mutual
authentication, IHE ATNA). The files are read at each connection, so renewed ones take effect
without a restart.
"""

from __future__ import annotations

import select
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from appliance.audit.syslog import octet_counted
from appliance.tls.contexts import TlsUnavailable, requester_context

CONNECT_TIMEOUT = 3.0  # seconds; also bounds what a stop waits for an unreachable collector
SEND_TIMEOUT = 10.0


@dataclass(frozen=True)
class Collector:
    """`audit.collector` taken apart, with the TLS files (resolved paths) a tls:// one uses."""

    scheme: str  # "udp", "tcp" or "tls"
    host: str
    port: int
    certificate: Path
    key: Path
    ca_bundle: Path

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a collector URL the configuration loader has accepted."""
    parts = urlsplit(url)
    return parts.scheme, parts.hostname or "", parts.port or 0


class Transport:
    def send(self, message: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def transport_for(collector: Collector) -> Transport:
    if collector.scheme == "udp":
        return Udp(collector)
    return Stream(collector)


class Udp(Transport):
    """One datagram per message (RFC 5426 3.1). A connected socket reports an ICMP port
    unreachable for an earlier datagram as ECONNREFUSED on a later send, which is then kept."""

    def __init__(self, collector: Collector):
        self.collector = collector
        self._sock: socket.socket | None = None

    def send(self, message: bytes) -> None:
        if self._sock is None:
            family, kind, proto, _, address = socket.getaddrinfo(self.collector.host, self.collector.port,
                                                                 type=socket.SOCK_DGRAM)[0]
            self._sock = socket.socket(family, kind, proto)
            self._sock.settimeout(SEND_TIMEOUT)
            try:
                self._sock.connect(address)
            except OSError:
                self.close()
                raise
        try:
            self._sock.send(message)
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Stream(Transport):
    """TCP with octet counting, or the same inside TLS."""

    def __init__(self, collector: Collector):
        self.collector = collector
        self._sock: socket.socket | None = None

    def send(self, message: bytes) -> None:
        if self._sock is not None and self._closed_by_peer():
            self.close()
        if self._sock is None:
            self._sock = self._connect()
        try:
            self._sock.sendall(octet_counted(message))
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def _connect(self) -> socket.socket:
        collector = self.collector
        context = client_context(collector) if collector.scheme == "tls" else None
        sock = socket.create_connection((collector.host, collector.port), timeout=CONNECT_TIMEOUT)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if context is not None:
                sock = context.wrap_socket(sock, server_hostname=collector.host)
            sock.settimeout(SEND_TIMEOUT)
        except BaseException:
            sock.close()
            raise
        return sock

    def _closed_by_peer(self) -> bool:
        """A collector never writes to us: a readable socket means it has closed (or sent a TLS
        record: a TLS 1.3 session ticket, a close_notify), so read what is there to tell."""
        sock = self._sock
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            sock.setblocking(False)
            try:
                while True:
                    if not sock.recv(4096):
                        return True  # EOF (or the TLS close_notify)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return False  # only records without data (session tickets), or data we ignore
            finally:
                sock.settimeout(SEND_TIMEOUT)
        except (OSError, ValueError):
            return True


def client_context(collector: Collector) -> ssl.SSLContext:
    """The DICOM requester's context (appliance.tls.contexts), with the collector's name
    checked too (RFC 5425 5.2); OSError when the files do not make one, as for a collector
    that cannot be reached."""
    try:
        return requester_context(collector.certificate, collector.key, collector.ca_bundle, check_hostname=True)
    except TlsUnavailable as exc:
        raise OSError(f"no TLS to the collector: {exc}") from None
