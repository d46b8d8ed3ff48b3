"""C-MOVE destinations for the tests: a pynetdicom Storage SCP that records what arrives, and
a C-MOVE requester that returns every response with its counts.

The recording SCP keeps each data set as the bytes that came over the wire, with the
command's Move Originator fields, the calling AE title and the context it came on, so tests
can compare arrivals with the stored files byte for byte (SU-15).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.presentation import build_context
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import register_uid, uid_to_service_class

import datasets
from helpers import wait_for

# Move Destinations every move_archive (tests/conftest.py) knows (remote_aes): each test starts the ones it needs.
MOVE_DESTINATIONS = ("DEST", "STORESCP", "DOWN")

# pynetdicom's table lacks the retired US classes; without them its SCP aborts such a C-STORE.
for _retired in (datasets.US_RETIRED, datasets.US_MULTIFRAME_RETIRED):
    if uid_to_service_class(_retired) is not StorageServiceClass:
        register_uid(_retired, "Retired_" + _retired.replace(".", "_"), StorageServiceClass)

MOVE_MODELS = {"P": datasets.PATIENT_ROOT_MOVE, "S": datasets.STUDY_ROOT_MOVE}


@dataclass
class Arrival:
    sop_class: str
    sop_instance: str
    transfer_syntax: str
    data: bytes  # the data set as received
    calling: str
    originator_title: str
    originator_id: int | None


@dataclass
class Destination:
    """A Storage SCP on `port` (127.0.0.1) named `title`.

    `answer(n)` gives the status of the n-th C-STORE (1-based) and may block (a slow or dead
    destination); at the `abort_at`-th it aborts the association instead of answering, at the
    `stall_at`-th it writes the first bytes of a PDU before `answer` is asked (a peer that hangs
    inside a PDU);
    `contexts` what it accepts (default: every storage class in every TS)."""

    title: str
    port: int
    answer: object = None
    abort_at: int = 0
    stall_at: int = 0
    contexts: list | None = None
    arrivals: list[Arrival] = field(default_factory=list)
    proposals: list[list] = field(default_factory=list)  # per association: (abstract, [ts]) proposed
    most_at_once: int = 0
    released: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self):
        self._open = 0
        self._lock = threading.Lock()
        self.ae = AE(ae_title=self.title)
        self.ae.supported_contexts = self.contexts if self.contexts is not None else [
            build_context(sop_class, [datasets.ILE, datasets.ELE, datasets.JPEG_BASELINE])
            for sop_class in datasets.ALL_STORAGE]
        self.ae.maximum_pdu_size = 16384  # below the appliance's 128 KiB: fragments are exercised
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_REQUESTED, self._on_requested),
                    (evt.EVT_ESTABLISHED, self._on_established), (evt.EVT_RELEASED, self._on_end),
                    (evt.EVT_ABORTED, self._on_end)]
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)

    def _on_requested(self, event) -> None:
        self.proposals.append([(str(cx.abstract_syntax), [str(ts) for ts in cx.transfer_syntax])
                               for cx in event.assoc.requestor.requested_contexts])

    def _on_established(self, event) -> None:
        with self._lock:
            self._open += 1
            self.most_at_once = max(self.most_at_once, self._open)

    def _on_end(self, event) -> None:
        with self._lock:
            self._open -= 1
        self.released.set()

    def _on_store(self, event) -> int:
        request = event.request
        self.arrivals.append(Arrival(
            str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID),
            str(event.context.transfer_syntax), request.DataSet.getvalue(),
            event.assoc.requestor.ae_title.strip(), str(request.MoveOriginatorApplicationEntityTitle or "").strip(),
            request.MoveOriginatorMessageID))
        if len(self.arrivals) == self.abort_at:
            event.assoc.abort()
        if len(self.arrivals) == self.stall_at:
            event.assoc.dul.socket.socket.sendall(b"\x04\x00\x00")
        return self.answer(len(self.arrivals)) if self.answer else 0x0000

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Arrival]:
        wait_for(lambda: len(self.arrivals) >= count, f"{count} instances at {self.title}", timeout)
        return self.arrivals

    def stop(self) -> None:
        self.server.shutdown()
        self.ae.shutdown()


@dataclass
class Response:
    status: int
    remaining: int | None
    completed: int | None
    failed: int | None
    warning: int | None
    failed_uids: list[str] | None = None  # None: no identifier, or none with the list
    comment: str | None = None  # its Error Comment (UL-05)

    @property
    def counts(self) -> tuple:
        return self.remaining, self.completed, self.failed, self.warning


def move_identifier(level: str, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def move(assoc, identifier: Dataset, destination: str, model: str = "S", on_response=None,
         msg_id: int = 1) -> list[Response]:
    """Every C-MOVE response; `on_response(assoc, responses so far)` runs after each one and
    ends the wait for more by returning True (after it aborted the association, say)."""
    responses = []
    for status, found in assoc.send_c_move(identifier, destination, MOVE_MODELS[model], msg_id=msg_id):
        if "Status" not in status:
            break  # pynetdicom: no response (association ended)
        failed = None
        if found is not None and "FailedSOPInstanceUIDList" in found:
            value = found.FailedSOPInstanceUIDList
            failed = [] if value in (None, "") else [str(v) for v in ([value] if isinstance(value, str) else value)]
        responses.append(Response(status.Status, status.get("NumberOfRemainingSuboperations"),
                                  status.get("NumberOfCompletedSuboperations"),
                                  status.get("NumberOfFailedSuboperations"),
                                  status.get("NumberOfWarningSuboperations"), failed, status.get("ErrorComment")))
        if on_response is not None and on_response(assoc, responses):
            break
    assert responses, "no C-MOVE response"
    return responses


def cancel(assoc, msg_id: int, model: str = "S") -> None:
    context = next(cx for cx in assoc.accepted_contexts if cx.abstract_syntax == MOVE_MODELS[model])
    assoc.send_c_cancel(msg_id, context.context_id)


def move_contexts() -> list:
    return [build_context(sop_class, [datasets.ILE]) for sop_class in
            (datasets.VERIFICATION, datasets.PATIENT_ROOT_MOVE, datasets.STUDY_ROOT_MOVE,
             datasets.PATIENT_ROOT_FIND, datasets.STUDY_ROOT_FIND)]
