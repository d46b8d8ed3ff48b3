"""Association bookkeeping and the association-level service log (LG-07, LG-08, AS-10).

Every line names the local AE, an association number, and the peer as
``CALLING_AE@ip:port``, so a field engineer can grep one peer or one association.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, field

from pynetdicom import evt
from pynetdicom.pdu_primitives import A_ASSOCIATE

log = logging.getLogger("appliance.association")

_numbers = itertools.count(1)


@dataclass
class Session:
    """One accepted association: who, since when, and what it carried."""

    number: int
    ae_name: str
    peer: str
    started: float = field(default_factory=time.monotonic)
    instances: int = 0
    failures: int = 0
    bytes: int = 0

    def prefix(self) -> str:
        return f"{self.ae_name} #{self.number} {self.peer}"

    def summary(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        line = f"{self.instances} instances stored"
        if self.failures:
            line += f", {self.failures} refused"
        if self.bytes:
            line += f", {self.bytes} bytes in {elapsed:.2f} s ({self.bytes / elapsed / 1e6:.1f} MB/s)"
        return line


def peer_of(assoc) -> str:
    title = (assoc.requestor.ae_title or "").strip() or "?"
    return f"{title}@{assoc.requestor.address}:{assoc.requestor.port}"


class Tracker:
    """Sessions of one listening AE, keyed by pynetdicom's Association object."""

    def __init__(self, ae_name: str):
        self.ae_name = ae_name
        self._sessions: dict[object, Session] = {}
        self._lock = threading.Lock()

    def session(self, assoc) -> Session:
        with self._lock:
            found = self._sessions.get(assoc)
            if found is None:
                found = self._sessions[assoc] = Session(next(_numbers), self.ae_name, peer_of(assoc))
            return found

    def _end(self, assoc) -> Session | None:
        with self._lock:
            return self._sessions.pop(assoc, None)

    def active(self) -> int:
        with self._lock:
            return len(self._sessions)

    def handlers(self) -> list:
        return [
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_ACSE_SENT, self._on_acse_sent),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]

    def _on_established(self, event) -> None:
        s = self.session(event.assoc)
        called = event.assoc.acceptor.ae_title.strip()
        accepted = len(event.assoc.accepted_contexts)
        log.info("%s: association accepted (called %s, %d presentation contexts accepted)",
                 s.prefix(), called, accepted)

    def _on_acse_sent(self, event) -> None:
        primitive = event.primitive
        if isinstance(primitive, A_ASSOCIATE) and primitive.result not in (None, 0x00):
            called = (primitive.called_ae_title or "").strip()
            log.warning("%s %s: association rejected (called %s): result %d, source %d, reason %d",
                        self.ae_name, peer_of(event.assoc), called, primitive.result,
                        primitive.result_source, primitive.diagnostic)

    def _on_released(self, event) -> None:
        s = self._end(event.assoc)
        if s is not None:
            log.info("%s: association released; %s", s.prefix(), s.summary())

    def _on_aborted(self, event) -> None:
        s = self._end(event.assoc)
        if s is not None:
            log.error("%s: association aborted; %s", s.prefix(), s.summary())

    def _on_closed(self, event) -> None:
        # A connection that ends without release or abort (peer vanished, idle timeout).
        s = self._end(event.assoc)
        if s is not None and event.assoc.is_established:
            log.error("%s: connection lost; %s", s.prefix(), s.summary())
