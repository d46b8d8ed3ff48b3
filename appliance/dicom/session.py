"""What the service log and `status` say of one connection (LG-07, LG-08, AS-10).

Every line names the local AE, a connection number, and the peer as ``CALLING_AE@ip:port``,
so a field engineer can grep one peer or one association.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

_numbers = itertools.count(1)


def known_ip(address: str) -> str:
    """The peer's IP as it knows it: a dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d."""
    return address.removeprefix("::ffff:")


@dataclass
class Session:
    """One accepted connection and, once requested, its association: who, since when, what it carried."""

    ae_name: str
    ip: str  # the peer's, as it knows it (known_ip)
    port: int
    number: int = field(default_factory=lambda: next(_numbers))
    title: str = ""  # the calling AE title, once the A-ASSOCIATE-RQ is read
    tls: str = ""  # on a TLS port: protocol, cipher and the client's certificate subject (SE-07)
    started: float = field(default_factory=time.monotonic)
    instances: int = 0
    failures: int = 0
    queries: int = 0  # C-FINDs answered (QUERY-RETRIEVE-SCP)
    moves: int = 0  # C-MOVEs answered
    bytes: int = 0
    # AU-01: the instances stored, per study (Study Instance UID -> audit Tally), audited as one
    # DICOM Instances Transferred message per study when the association ends.
    received: dict = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    def prefix(self) -> str:
        return f"{self.ae_name} #{self.number} {self.title or '?'}@{self.address}"

    def summary(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        if self.ae_name == "QUERY-RETRIEVE-SCP":
            line = f"{self.queries} queries answered" + (f", {self.moves} moves" if self.moves else "")
        else:
            line = f"{self.instances} instances stored"
        if self.failures:
            line += f", {self.failures} refused"
        if self.bytes:
            line += f", {self.bytes} bytes in {elapsed:.2f} s ({self.bytes / elapsed / 1e6:.1f} MB/s)"
        return line
