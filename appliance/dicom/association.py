"""An accepted association, from its A-ASSOCIATE-AC to its end, in a thread of its own.

PS3.8 Sta6 (data transfer) to Sta13 (awaiting the close): the thread reads the peer's PDUs,
puts DIMSE messages together (`dimse.Assembler`, a C-STORE data set straight into its file),
and serves the requests one at a time (AS-11, AS-12) through the AE's routes: a handler per
(command, abstract syntax) that answers through `respond`. A request the AE does not offer on
its context is answered 0x0211 (unrecognised operation).

Timers: the next request's first PDU within the AE's idle timeout (CF-15, CF-24), else
A-ABORT; inside a PDU the transport's pdu_gap (CF-07), and a whole PDU within the idle
timeout of its first byte; a send within timeouts.send (CF-06). A PDU that breaks PS3.8 (a
PDV on a context never accepted, a command fragment in a data set, ...) is answered with
A-ABORT.

While a handler runs, nothing is read unless it asks: `cancelled` takes in what has arrived,
without waiting, and looks for a C-CANCEL-RQ (UL-04); other requests that arrive meanwhile
wait their turn, at most QUEUED_LIMIT of them; `exchange` sends a request of ours (the
N-EVENT-REPORT of SC-11) and reads until its response comes.

Any thread may `abort` the association (lease lost, shutdown): the A-ABORT goes out at once
and the association thread's read or send returns. Its end is logged once, and from then
on its slot is free (CC-01), even while a C-MOVE export it started still runs (QM-15).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from appliance.config.model import Timeouts
from appliance.dicom import dimse, pdu
from appliance.dicom.dimse import RESPONSE, Assembler, Command, Message, Sink
from appliance.dicom.pdu import ABORT, P_DATA_TF, RELEASE_RQ, ProtocolError
from appliance.dicom.session import Session
from appliance.dicom.transport import Closed, Idle, SendTimedOut, TimedOut, Transport

log = logging.getLogger("appliance.association")

# One operation at a time is negotiated (AS-11): a conforming peer has at most a C-CANCEL and
# a release request waiting while an operation runs.
QUEUED_LIMIT = 2
UNRECOGNIZED_OPERATION = 0x0211  # PS3.7 C: the operation is not one agreed for this context
_POLL_ROUNDS = 64  # recv calls per `cancelled`, so that a peer sending without pause cannot hold it
_RELEASE = "A-RELEASE-RQ"  # in the queue of what the peer sent, between messages
_IN_SESSION = (P_DATA_TF, RELEASE_RQ, ABORT)  # the PDUs a peer may send in data transfer (Sta6)


@dataclass(frozen=True)
class Served:
    """What one listening AE offers and how, shared by every association it accepts."""

    name: str  # "STORAGE-SCP" or "QUERY-RETRIEVE-SCP"
    # (Command Field, abstract syntax) -> handler(association, message), which answers.
    routes: dict[tuple[int, str], Callable[["Association", Message], None]]
    # Where a C-STORE data set goes as it arrives: receiver(association, context_id, command).
    receiver: Callable[["Association", int, Command], Sink] | None
    max_pdu: int  # the largest P-DATA-TF we take, as advertised (CF-14, CF-22)
    max_pdu_send: int  # the largest we send (CF-02), lowered to the peer's maximum (AS-16)
    idle_timeout: float  # CF-15, CF-24
    timeouts: Timeouts


class Association:
    def __init__(self, served: Served, session: Session, transport: Transport, called: str,
                 accepted: dict[int, tuple[str, str]], peer_max_pdu: int, accept_pdu: bytes,
                 on_end: Callable[[], None]):
        self.served = served
        self._on_end = on_end  # its slot is free (admission)
        self.called = called
        self.session = session
        self.transport = transport
        self.accepted = accepted  # context ID -> (abstract syntax, transfer syntax)
        self.max_pdu = min(served.max_pdu_send, peer_max_pdu) if peer_max_pdu else served.max_pdu_send
        self._accept_pdu = accept_pdu
        self._assembler = Assembler(accepted, self._sink_for)
        self._incoming: collections.deque = collections.deque()  # messages and _RELEASE, in arrival order
        self._end_lock = threading.Lock()
        self.open = True  # data transfer (Sta6): what we send reaches the peer
        self.thread: threading.Thread | None = None
        self._invoked = 0  # the Message ID of our last request on it

    @property
    def calling(self) -> str:
        return self.session.title

    def start(self) -> None:
        """The association's thread; RuntimeError when none can be started."""
        self.thread = threading.Thread(target=self._run, name=f"{self.served.name} #{self.session.number}",
                                       daemon=True)
        self.thread.start()

    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    # --- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self.transport.send(self._accept_pdu)
            log.info("%s: association accepted (called %s, %d presentation contexts accepted%s)",
                     self.session.prefix(), self.called, len(self.accepted),
                     f"; {self.session.tls}" if self.session.tls else "")
            while self.open:
                item = self._next()
                if item is _RELEASE:
                    self._release()
                elif item is not None:
                    self._dispatch(item)
        except Idle:
            self.abort(f"after {self.served.idle_timeout:g} s without data", separator=" ")
        except SendTimedOut as exc:
            self._drop(str(exc))
        except TimedOut as exc:
            self.abort(str(exc))
        except ProtocolError as exc:
            self._broken(exc)
        except Closed as exc:
            if self.transport.received:
                self._end(str(exc))
            else:  # issue 22: a peer that gave up (or probed the port) and used nothing
                self._end(f"{exc}; nothing came after the A-ASSOCIATE-RQ (the peer gave up, or only tried the port)",
                          logging.INFO)
        except Exception:
            log.exception("%s: unexpected failure serving the association", self.session.prefix())
            self.abort("unexpected failure (see the traceback above)")
        finally:
            self._end("connection lost")
            self._assembler.discard()
            while self._incoming:
                item = self._incoming.popleft()
                if isinstance(item, Message):
                    item.discard()
            self.transport.close()

    def _next(self):
        """The next message or release request, read if none waits; None after a stale cancel."""
        while not self._incoming:
            self._read(self.served.idle_timeout)
        item = self._incoming.popleft()
        if isinstance(item, Message) and item.command.field == dimse.C_CANCEL_RQ:
            return None  # its operation has been answered already (PS3.7 9.3.2.3: ignored)
        return item

    def _read(self, wait: float) -> None:
        """One PDU, waiting up to `wait` for it, then every PDU already received."""
        self._take_all(self.transport.read_pdu(wait, _IN_SESSION, self.served.idle_timeout,
                                               f"{_section(self.served.name)}.idle_timeout"))

    def _take_all(self, found) -> None:
        """`found` and every PDU received whole after it; what they complete joins the queue."""
        try:
            while found is not None:
                self._take(*found)
                found = self.transport.buffered_pdu(_IN_SESSION)
        finally:
            self._assembler.flush()  # before the buffer is filled again
        if sum(1 for item in self._incoming if not _is_cancel(item)) > QUEUED_LIMIT:
            raise ProtocolError(f"more than {QUEUED_LIMIT} requests sent without waiting for the responses "
                                "(one operation at a time was negotiated)")

    def _take(self, pdu_type: int, body: memoryview) -> None:
        if pdu_type == P_DATA_TF:
            completed: list[Message] = []
            try:
                self._assembler.feed(body, completed)
            finally:  # a message completed before a bad PDV is queued, so that its file is discarded
                self._incoming.extend(completed)
        elif pdu_type == RELEASE_RQ:
            if self._assembler.in_progress:
                raise ProtocolError("A-RELEASE-RQ in the middle of a message")
            self._incoming.append(_RELEASE)
        else:
            raise Closed("association aborted by the peer (A-ABORT)")

    def _dispatch(self, message: Message) -> None:
        command = message.command
        if command.field & RESPONSE:
            message.discard()
            log.warning("%s: %s for message %d, which nothing waits for: ignored", self.session.prefix(), command.name,
                        command.message_id)
            return
        handler = self.served.routes.get((command.field, self.accepted[message.context_id][0]))
        if handler is None:
            message.discard()
            if command.field not in dimse.REQUESTS:
                raise ProtocolError(f"a command set with Command Field 0x{command.field:04X}")
            why = f"{command.name} is not offered on a context for {self.accepted[message.context_id][0]}"
            log.warning("%s: %s #%d status 0x%04X: %s", self.session.prefix(), command.name, command.message_id,
                        UNRECOGNIZED_OPERATION, why)
            self.respond(message, UNRECOGNIZED_OPERATION, comment=why)  # UL-05
            return
        handler(self, message)

    def _sink_for(self, context_id: int, command: Command) -> Sink | None:
        if command.field == dimse.C_STORE_RQ and self.served.receiver is not None:
            return self.served.receiver(self, context_id, command)
        return None

    def _release(self) -> None:
        """A-RELEASE-RQ: every request before it has been answered, so the association is over.
        Its slot is free before the A-RELEASE-RP goes: a peer that opens its next association
        as soon as it has the RP must not find the limit still reached (AS-01). The peer then
        closes (ARTIM bounds the wait)."""
        self._end("association released", logging.INFO)
        try:
            self.transport.send(pdu.RELEASE_RP_PDU)
        except (Closed, SendTimedOut):
            return  # the peer went without waiting for the A-RELEASE-RP
        self.transport.wait_for_close(self.served.timeouts.artim)

    # --- what handlers use --------------------------------------------------------------------

    def respond(self, message: Message, status: int, data: bytes | None = None, comment: str = "",
                extra: dict[int, bytes] | None = None) -> bool:
        """The response to `message` with `status` (and a data set); whether it was sent."""
        command = dimse.response(message.command, status, data_set=data is not None, comment=comment, extra=extra)
        return self.send(message.context_id, command, data)

    def send(self, context_id: int, command: bytes, data: bytes | None = None) -> bool:
        """A message on the association; False when it can no longer reach the peer (the end is
        logged: lost connection, send timeout)."""
        if not self.open:
            return False
        try:
            self.transport.send(dimse.message_pdus(context_id, command, data, self.max_pdu))
            return True
        except SendTimedOut as exc:
            self._drop(str(exc))
        except Closed as exc:
            self._end(str(exc))
        return False

    def next_message_id(self) -> int:
        """For a request of ours (PS3.7 9.1.1.1: unique among those we send on the association)."""
        self._invoked = self._invoked % 0xFFFF + 1
        return self._invoked

    def cancelled(self, message_id: int) -> bool:
        """Whether the peer has cancelled request `message_id` (UL-04): what it sent meanwhile is
        taken in without waiting; a C-CANCEL-RQ for that request is consumed."""
        if self.open:
            try:
                for _ in range(_POLL_ROUNDS):
                    if not self.transport.poll():
                        break
                    self._take_all(self.transport.buffered_pdu(_IN_SESSION))
            except ProtocolError as exc:
                self._broken(exc)
            except Closed as exc:
                self._end(str(exc))
        for item in self._incoming:
            if _is_cancel(item) and item.command.us(dimse.RESPONDED_TO) == message_id:
                self._incoming.remove(item)
                return True
        return False

    def exchange(self, context_id: int, command: bytes, data: bytes | None, message_id: int,
                 timeout: float) -> Command | str:
        """Send a request of ours and wait up to `timeout` for its response; the response's
        command, or why there is none: "release" (the peer asked to release instead), "gone"
        (aborted or lost), "timeout" (then the association is aborted, SC-23). Requests the
        peer sends meanwhile wait their turn."""
        if not self.send(context_id, command, data):
            return "gone"
        deadline = time.monotonic() + timeout
        while True:
            for item in self._incoming:
                if isinstance(item, Message) and item.command.field & RESPONSE \
                        and item.command.message_id == message_id:
                    self._incoming.remove(item)
                    return item.command
                if item is _RELEASE:
                    return "release"
            if not self.open:
                return "gone"
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise Idle()
                self._read(left)
            except Idle:
                self.abort(f"no answer within {timeout:g} s")
                return "timeout"
            except TimedOut as exc:
                self.abort(str(exc))
                return "gone"
            except ProtocolError as exc:
                self._broken(exc)
                return "gone"
            except Closed as exc:
                self._end(str(exc))
                return "gone"

    # --- ending -------------------------------------------------------------------------------

    def abort(self, why: str = "", source: int = pdu.USER, separator: str = ": ", level: int = logging.ERROR) -> None:
        """A-ABORT now, from any thread; `why` goes into the log line. Ended first, so that the
        association's own thread, woken by the abort, does not log it as a lost connection."""
        if self._end(f"association aborted by the appliance (A-ABORT){separator + why if why else ''}", level):
            self.transport.abort(source, owner=threading.current_thread() is self.thread)

    def _broken(self, exc: ProtocolError) -> None:
        """The peer broke PS3.8: its mistake, not the service's (issue 22), so a WARNING."""
        self.abort(str(exc), source=pdu.PROVIDER, level=logging.WARNING)

    def _drop(self, why: str) -> None:
        """A send the peer did not take (CF-06): the connection goes without an A-ABORT, which
        could not be sent either."""
        if self._end(f"connection dropped: {why}"):
            self.transport.abort()

    def _end(self, why: str, level: int = logging.ERROR) -> bool:
        """Logged once, with the first reason given; the slot is free from here. Whether this
        call ended it."""
        with self._end_lock:
            if not self.open:
                return False
            self.open = False
        log.log(level, "%s: %s; %s", self.session.prefix(), why, self.session.summary())
        self._on_end()
        return True


def _is_cancel(item) -> bool:
    return isinstance(item, Message) and item.command.field == dimse.C_CANCEL_RQ


def _section(name: str) -> str:
    return "storage_scp" if name == "STORAGE-SCP" else "query_retrieve_scp"
