"""Reading and writing PDUs on an accepted connection, with bounds and timers (CF-04, CF-06, CF-07, AS-06).

pynetdicom 3.0 reads a PDU as "6 header bytes, then as many as the header announces", each
recv() waiting up to the idle timeout, into a buffer that grows to the announced length. A
peer can therefore hold a reader for 15 minutes per byte, trickle an A-ASSOCIATE-RQ past
ARTIM, or announce 4 GB and make it allocate as much as it sends; an undecodable
A-ASSOCIATE-RQ is answered with A-ABORT instead of the A-ASSOCIATE-RJ of AS-06.

`attach` gives each accepted association our reader and sender instead (pynetdicom has no hook
for either; both replace instance attributes, like `wakeups`):

- a PDU may announce at most our advertised maximum length (P-DATA-TF, D-1) or
  `CONTROL_PDU_LIMIT` (all other types);
- within a PDU, the peer may pause at most `timeouts.pdu_gap` (CF-07);
- the A-ASSOCIATE-RQ must be complete within ARTIM of the connection (CF-04), any later PDU
  within the AE's idle timeout of its first byte, so a trickling peer cannot hold a worker;
- a send may block at most `timeouts.send` (CF-06);
- a DIMSE message that pynetdicom keeps in memory (a command set, an identifier, an N-ACTION's
  references; not a C-STORE data set, which goes to a file) may grow to `MESSAGE_LIMIT`, and at
  most `QUEUED_LIMIT` complete requests may wait for the association thread: with one
  operation at a time negotiated (AS-11) a conforming peer never has more than one waiting.

A violation before the A-ASSOCIATE-RQ closes the connection (an undecodable request is first
answered 1/2/1, AS-06) and is logged here: pynetdicom may never report that end (its reader was
busy with our read when its own ARTIM stopped the association). After the request, the
association is aborted (A-ABORT, FL-02); the session records why, and
`associations.Tracker` logs it when the association ends.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time

from pynetdicom import dul as pynetdicom_dul
from pynetdicom import evt

from appliance.config.model import Timeouts
from appliance.dicom.admission import UNPARSEABLE, log_rejection, reject_pdu

log = logging.getLogger("appliance.association")

# PS3.8 sets no maximum for an A-ASSOCIATE-RQ; real ones (128 contexts, user identity) stay
# well below 100 KiB. Release and abort PDUs are 10 bytes.
CONTROL_PDU_LIMIT = 1 << 20
_PDU_TYPES = {0x01: "A-ASSOCIATE-RQ", 0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ", 0x04: "P-DATA-TF",
              0x05: "A-RELEASE-RQ", 0x06: "A-RELEASE-RP", 0x07: "A-ABORT"}
P_DATA_TF = 0x04
# An N-ACTION committing 100,000 instances is about 12 MB; C-FIND identifiers are a few KiB.
MESSAGE_LIMIT = 16 << 20
QUEUED_LIMIT = 2


class ProtocolError(Exception):
    """The peer's bytes break PS3.8 or our bounds; the message says how, for the log."""


class _TimedOut(ProtocolError):
    """A timer expired inside a PDU: the connection ends without an answer."""


class _Closed(Exception):
    """The peer closed the connection, or it broke."""


def check_header(header: bytes, max_pdata: int, expect_request: bool) -> tuple[int, int]:
    """The PDU type and length of a 6-byte header, or ProtocolError."""
    pdu_type, length = struct.unpack(">BxL", header)
    if pdu_type not in _PDU_TYPES:
        raise ProtocolError(f"not a DICOM PDU ({describe(header)})")
    if expect_request and pdu_type != 0x01:
        raise ProtocolError(f"{_PDU_TYPES[pdu_type]} received where an A-ASSOCIATE-RQ was expected")
    limit = max_pdata if pdu_type == P_DATA_TF else CONTROL_PDU_LIMIT
    if length > limit:
        raise ProtocolError(f"{_PDU_TYPES[pdu_type]} of {length} bytes announced, more than the "
                            f"{limit} accepted")
    return pdu_type, length


def decode_pdu(data: bytes):
    """The pynetdicom PDU object and state-machine event of a whole PDU (header checked), or
    ProtocolError; an A-ASSOCIATE-RQ must also convert and carry its mandatory items (AS-06)."""
    pdu_class, event = pynetdicom_dul._PDU_TYPES[data[:1]]
    pdu = pdu_class()
    try:
        pdu.decode(data)
        request = pdu.to_primitive() if data[0] == 0x01 else None
    except Exception as exc:  # pynetdicom's decoders raise anything on bad input
        raise ProtocolError(f"{_PDU_TYPES[data[0]]} cannot be decoded ({exc!r:.200})") from None
    if request is not None:
        if request.application_context_name is None:
            raise ProtocolError("the A-ASSOCIATE-RQ has no application context item")
        if request.maximum_length_received is None:
            raise ProtocolError("the A-ASSOCIATE-RQ has no maximum length in its user information")
        for context in request.presentation_context_definition_list:
            # pynetdicom's negotiation raises on such a context and then answers nothing at all.
            if not context.abstract_syntax or not context.transfer_syntax:
                raise ProtocolError(f"presentation context {context.context_id} has no abstract syntax "
                                    "or no transfer syntax")
    return pdu, event


def describe(first: bytes) -> str:
    """What the first bytes of a non-DICOM connection look like, for a field engineer."""
    if first.startswith(b"\x16\x03"):
        return "a TLS handshake: the peer expects DICOM over TLS, which this AE does not offer"
    if first[:4] in (b"GET ", b"POST", b"HEAD", b"PUT ", b"OPTI", b"CONN"):
        return "an HTTP request"
    return "first bytes " + first.hex(" ")


class Framing:
    """The reader (`read_pdu`) and sender (`send`) of one accepted association's DUL."""

    def __init__(self, assoc, session, timeouts: Timeouts):
        self.assoc = assoc
        self.dul = assoc.dul
        self.session = session
        self.pdu_gap = timeouts.pdu_gap
        self.send_timeout = timeouts.send
        self.opened = time.monotonic()
        # Until the A-ASSOCIATE-RQ is delivered. Not the state machine's Sta2: the first read can
        # come before pynetdicom has processed the connection event that enters Sta2.
        self.awaiting_request = True
        self.finished = False  # after a violation nothing more is read
        self._send_lock = threading.Lock()
        # recv() waits at most pdu_gap: the DUL reads only when select() saw data, so a
        # blocking wait happens only inside a PDU.
        self.dul.socket.socket.settimeout(self.pdu_gap)

    # --- reading --------------------------------------------------------------------------

    def read_pdu(self) -> None:
        """Stands in for DULServiceProvider._read_pdu_data: one PDU onto the DUL's queues."""
        dul = self.dul
        if self.finished:
            dul.socket.close()  # Evt17: the state machine ends the connection
            return
        expect_request = self.awaiting_request
        if expect_request:
            artim = self.assoc.acse_timeout
            deadline = (self.opened + artim, f"the A-ASSOCIATE-RQ was not complete within {artim:g} s",
                        "timeouts.artim")
        else:
            idle = self.assoc.network_timeout
            deadline = (time.monotonic() + idle, f"a PDU was not complete within {idle:g} s", "idle_timeout")
        data = bytearray(6)
        try:
            self._receive_into(memoryview(data), deadline)
            _, length = check_header(data, self.assoc.acceptor.maximum_length, expect_request)
            # One buffer for the whole PDU, received into in place: no copy of a 128 KiB P-DATA
            # but the one pynetdicom's decoder needs as bytes.
            data = data + bytearray(length)
            self._receive_into(memoryview(data)[6:], deadline)
            pdu, event = decode_pdu(bytes(data))
            if data[0] == P_DATA_TF:
                self._check_memory(length)
        except _Closed:
            if expect_request:
                self._drop_before_request("connection closed by the peer before an association request",
                                          logging.INFO)
            else:  # as pynetdicom does: the state machine decides (A-P-ABORT indication, or the end)
                dul.event_queue.put("Evt17")
            return
        except ProtocolError as exc:
            self._violation(expect_request, data, exc)
            return
        self.awaiting_request = False
        evt.trigger(self.assoc, evt.EVT_PDU_RECV, {"pdu": pdu})
        dul.event_queue.put(event)
        dul._recv_pdu.put(pdu)

    def _check_memory(self, incoming: int) -> None:
        """MESSAGE_LIMIT and QUEUED_LIMIT, before pynetdicom appends this P-DATA (`incoming` bytes)."""
        dimse = self.assoc.dimse
        if dimse.msg_queue.qsize() >= QUEUED_LIMIT:
            raise ProtocolError(f"more than {QUEUED_LIMIT} requests sent without waiting for the responses "
                                f"(one operation at a time was negotiated)")
        message = dimse.message
        if message is None:
            return
        held = message.encoded_command_set.tell()
        if message._data_set_file is None:  # else the data set goes to a file (receive.py)
            held += message.data_set.tell()
        if held + incoming > MESSAGE_LIMIT:
            raise ProtocolError(f"a DIMSE message grows beyond {MESSAGE_LIMIT} bytes held in memory")

    def _receive_into(self, view: memoryview, deadline: tuple[float, str, str]) -> None:
        """Fill `view`; `deadline` is (monotonic time, what is late, the key that sets it)."""
        count = len(view)
        received = 0
        sock = self.dul.socket.socket
        while received < count:
            try:
                got = sock.recv_into(view[received:])
            except TimeoutError:
                raise _TimedOut(f"no data for {self.pdu_gap:g} s inside a PDU ({received} of "
                                    f"{count} bytes received; timeouts.pdu_gap)") from None
            except OSError:
                raise _Closed() from None
            if not got:
                raise _Closed()
            # pynetdicom's idle timer then measures silence, not PDUs: a trickle is ended by the
            # deadline below, here in this thread, not by its association thread's abort.
            self.dul._idle_timer.restart()
            received += got
            if received < count and time.monotonic() > deadline[0]:
                raise _TimedOut(f"{deadline[1]} ({received} of {count} bytes received; {deadline[2]})")

    def _violation(self, expect_request: bool, data: bytearray, error: ProtocolError) -> None:
        self.finished = True
        why = str(error)
        if expect_request and data[:1] == b"\x01" and not isinstance(error, _TimedOut):
            self._refuse_request(data, why)
        elif expect_request:
            self._drop_before_request(f"connection closed: {why}", logging.WARNING)
        elif not self.assoc._sent_abort:  # else its abort (idle timeout) is on its way already
            # One A-ABORT only: marked as sent, the association thread's abort() does nothing.
            self.assoc._sent_abort = True
            self.session.ending = f"association aborted by the appliance (A-ABORT): {why}"
            self.dul.event_queue.put("Evt19")  # invalid PDU: A-ABORT, then the connection closes

    def _refuse_request(self, data: bytearray, why: str) -> None:
        """AS-06: an A-ASSOCIATE-RQ that cannot be parsed gets 1/2/1, whatever else is wrong."""
        called = data[10:26].decode("ascii", "replace").strip()
        self.session.title = data[26:42].decode("ascii", "replace").strip()
        self.session.stage = "rejected"
        log_rejection(self.session.prefix(), called, UNPARSEABLE, why)
        sock = self.dul.socket.socket
        try:
            sock.sendall(reject_pdu(UNPARSEABLE))
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self._close()

    def _drop_before_request(self, why: str, level: int) -> None:
        self.session.stage = "closed"  # logged here, not again by the tracker
        log.log(level, "%s: %s", self.session.prefix(), why)
        self._close()

    def _close(self) -> None:
        self.finished = True
        self.dul.socket.close()  # Evt17 in Sta2: back to idle
        self.dul.to_user_queue.put(None)  # the association thread stops waiting for a request

    # --- sending --------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Stands in for AssociationSocket.send. The DUL thread sends through it, and so does the
        C-FIND handler (qr_scp), so one write at a time: PDUs never interleave."""
        with self._send_lock:
            self._send(data)

    def _send(self, data: bytes) -> None:
        sock = self.dul.socket.socket
        if sock is None:
            self.dul.event_queue.put("Evt17")
            return
        if self.send_timeout != self.pdu_gap:
            sock.settimeout(self.send_timeout)
        try:
            view = memoryview(data)
            while view:
                view = view[sock.send(view):]
            # A message out counts as traffic for the idle timeout too (CF-15/CF-24): pynetdicom
            # restarts it only on what it receives, so a C-FIND streaming longer than the
            # timeout would be aborted as soon as its final response is out.
            self.dul._idle_timer.restart()
            evt.trigger(self.assoc, evt.EVT_DATA_SENT, {"data": data})
        except TimeoutError:
            self.session.ending = (f"connection dropped: the peer accepted no data for "
                                   f"{self.send_timeout:g} s (timeouts.send)")
            self.dul.event_queue.put("Evt17")
        except OSError:
            self.dul.event_queue.put("Evt17")
        finally:
            if self.send_timeout != self.pdu_gap:
                try:
                    sock.settimeout(self.pdu_gap)
                except OSError:
                    pass


def attach(assoc, session, timeouts: Timeouts) -> None:
    """EVT_CONN_OPEN (before the association's threads start)."""
    framing = Framing(assoc, session, timeouts)
    assoc.dul._read_pdu_data = framing.read_pdu
    assoc.dul.socket.send = framing.send
