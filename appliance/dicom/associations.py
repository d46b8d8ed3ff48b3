"""Association bookkeeping and the association-level service log (LG-07, LG-08, AS-10).

Every line names the local AE, an association number, and the peer as
``CALLING_AE@ip:port``, so a field engineer can grep one peer or one association.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import weakref
from dataclasses import dataclass, field

from pynetdicom import evt
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT

from appliance.dicom import receive

log = logging.getLogger("appliance.association")

_numbers = itertools.count(1)
# PS3.8 9.2 local service requests: A-ASSOCIATE, P-DATA, A-RELEASE (request and response), A-ABORT.
_LOCAL_REQUESTS = {"Evt1", "Evt7", "Evt8", "Evt9", "Evt11", "Evt14", "Evt15"}


@dataclass
class Session:
    """One accepted connection and, once requested, its association: who, since when, what it carried."""

    number: int
    ae_name: str
    address: str  # ip:port
    title: str = ""  # the calling AE title, once the A-ASSOCIATE-RQ is read
    stage: str = "connected"  # -> "requested" -> "established"; or "rejected" or "closed" (logged)
    started: float = field(default_factory=time.monotonic)
    instances: int = 0
    failures: int = 0
    queries: int = 0  # C-FINDs answered (QUERY-RETRIEVE-SCP)
    moves: int = 0  # C-MOVEs answered
    bytes: int = 0
    received_abort: str = ""  # "A-ABORT" (the peer's) or "A-P-ABORT" (connection lost)
    last_received: float = field(default_factory=time.monotonic)  # any PDU from the peer
    ending: str = ""  # why the appliance ended the association, when it did (framing)

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


def in_data_transfer(assoc) -> bool:
    """Established and still in PS3.8's Sta6: a message sent now reaches the peer. pynetdicom's
    is_established stays True until its association thread notices the end."""
    return assoc.is_established and assoc.dul.state_machine.current_state == "Sta6"


def address_of(assoc) -> str:
    return peer_text(assoc.requestor.address, assoc.requestor.port)


def peer_text(address: str, port: int) -> str:
    # A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d; log the address they know.
    return f"{address.removeprefix('::ffff:')}:{port}"


class Tracker:
    """Sessions of one listening AE, keyed by pynetdicom's Association object."""

    def __init__(self, ae_name: str):
        self.ae_name = ae_name
        self._sessions: dict[object, Session] = {}
        # Ended sessions stay findable: pynetdicom's two threads race, so an event can follow
        # the end (EVT_ESTABLISHED after framing aborted on the first PDU). It must not start a
        # new session and log the association again.
        self._ended: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def session(self, assoc) -> Session:
        with self._lock:
            found = self._sessions.get(assoc) or self._ended.get(assoc)
            if found is None:
                found = self._sessions[assoc] = Session(next(_numbers), self.ae_name, address_of(assoc))
            return found

    def current(self) -> list[Session]:
        """The sessions not ended yet (connected, requested or established)."""
        with self._lock:
            return list(self._sessions.values())

    def _end(self, assoc) -> Session | None:
        with self._lock:
            found = self._sessions.pop(assoc, None)
            if found is not None:
                self._ended[assoc] = found
            return found

    def handlers(self) -> list:
        return [
            (evt.EVT_CONN_OPEN, self._guard_reader),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_ACSE_RECV, self._on_acse_recv),
            (evt.EVT_PDU_RECV, self._on_pdu_recv),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]

    def _guard_reader(self, event) -> None:
        """pynetdicom (3.0) lets an exception in its reader thread's state machine (e.g. a
        C-STORE-RQ on a presentation context ID that was never accepted: KeyError) end that
        thread silently: no abort or close event, and the dataset file it had opened stays in
        spool/. Wrap the association's state machine so that such an end is logged and the
        file removed; pynetdicom's own handling (the re-raise) is unchanged.

        One such exception is no fault: after framing aborted the association (Sta13, waiting
        for the close), a response the association thread was still sending arrives as a local
        request (Evt9 P-DATA and the like), for which PS3.8's table has no action. It is dropped,
        and so is its primitive: the DUL only peeks at its outgoing queue and leaves the taking
        to the action, so a primitive left there would raise the same event for ever, a DUL
        thread spinning at full speed and an association thread that never ends."""
        assoc = event.assoc
        dul = assoc.dul
        machine = dul.state_machine
        do_action = machine.do_action

        def guarded(fsm_event):
            if machine.current_state == "Sta13" and fsm_event in _LOCAL_REQUESTS:
                try:
                    dul.to_provider_queue.get_nowait()
                except queue.Empty:
                    pass
                return None
            try:
                return do_action(fsm_event)
            except Exception as exc:
                self._reader_failed(assoc, exc)
                raise

        machine.do_action = guarded

    def _reader_failed(self, assoc, exc: Exception) -> None:
        receive.discard_in_flight(assoc)
        s = self._end(assoc)
        prefix = s.prefix() if s else f"{self.ae_name} {address_of(assoc)}"
        log.error("%s: connection dropped: cannot process the peer's data (%s: %s)%s", prefix,
                  type(exc).__name__, exc, f"; {s.summary()}" if s else "")

    def _on_requested(self, event) -> None:
        s = self.session(event.assoc)
        s.title = event.assoc.requestor.primitive.calling_ae_title.strip()
        s.stage = "requested"

    def _on_established(self, event) -> None:
        s = self._sessions.get(event.assoc)
        if s is None:  # ended already; its end was logged
            return
        s.stage = "established"
        called = event.assoc.acceptor.ae_title.strip()
        accepted = len(event.assoc.accepted_contexts)
        log.info("%s: association accepted (called %s, %d presentation contexts accepted)",
                 s.prefix(), called, accepted)

    def _on_released(self, event) -> None:
        s = self._end(event.assoc)
        if s is not None:
            log.info("%s: association released; %s", s.prefix(), s.summary())

    def _on_pdu_recv(self, event) -> None:
        # A plain read of the dict, no lock: this runs for every PDU, and the GIL keeps a
        # lookup safe against concurrent inserts.
        if (s := self._sessions.get(event.assoc)) is not None:
            s.last_received = time.monotonic()

    def _on_acse_recv(self, event) -> None:
        kind = {A_ABORT: "A-ABORT", A_P_ABORT: "A-P-ABORT"}.get(type(event.primitive))
        if kind:
            with self._lock:
                if (s := self._sessions.get(event.assoc)) is not None:
                    s.received_abort = kind

    # pynetdicom fires EVT_CONN_CLOSE and EVT_ABORTED for the same end, in either order
    # (the DUL and association threads race); the first one logs, with the cause.
    def _on_aborted(self, event) -> None:
        self._finish(event.assoc)

    def _on_closed(self, event) -> None:
        assoc = event.assoc
        released = assoc.is_released or assoc.dul.state_machine.current_state == "Sta13"
        aborted = getattr(assoc, "_sent_abort", False) or getattr(self._sessions.get(assoc), "ending", "")
        if released and not aborted:
            return  # the peer closing after our A-RELEASE-RP: _on_released logs it
        self._finish(assoc)

    def _finish(self, assoc) -> None:
        s = self._end(assoc)
        if s is None or s.stage in ("rejected", "closed"):  # already logged (admission, framing)
            return
        if s.stage == "connected":
            self._log_unrequested(assoc, s)
        else:
            log.error("%s: %s; %s", s.prefix(), _ending(assoc, s), s.summary())

    @staticmethod
    def _log_unrequested(assoc, s: Session) -> None:
        """A connection that ended before any A-ASSOCIATE-RQ and that framing did not end: ARTIM
        (pynetdicom's timer), or the service aborting everything at shutdown."""
        if time.monotonic() - s.started >= assoc.acse_timeout * 0.9:
            log.warning("%s: connection closed: no A-ASSOCIATE-RQ within %g s (timeouts.artim)",
                        s.prefix(), assoc.acse_timeout)
        else:
            log.info("%s: connection closed before an association request", s.prefix())


def _ending(assoc, s: Session) -> str:
    """Why an association ended without a release (FL-03, LG-08)."""
    if s.ending:
        return s.ending
    if getattr(assoc, "_sent_abort", False):
        # FL-01, FL-02: pynetdicom's network timeout. Its own idle timer cannot tell: the reader
        # thread restarts it when the connection closes after our A-ABORT.
        if time.monotonic() - s.last_received >= assoc.network_timeout * 0.9:
            return f"association aborted by the appliance (A-ABORT) after {assoc.network_timeout:g} s without data"
        return "association aborted by the appliance (A-ABORT)"
    received = s.received_abort
    if not received:
        received = "A-ABORT" if assoc.acse.is_aborted("a-abort") else ""
    if received == "A-ABORT":
        return "association aborted by the peer (A-ABORT)"
    return "connection lost"
