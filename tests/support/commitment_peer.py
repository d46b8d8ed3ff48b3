"""A modality's side of Storage Commitment for the tests: it sends N-ACTIONs to STORAGE-SCP
and receives N-EVENT-REPORTs, on its own association or on one STORAGE-SCP opens to its
listener (SC-11, SC-12). Every report is kept with how it came."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE, evt
from pynetdicom.presentation import build_context

import datasets
from helpers import wait_for

SCPM = "1.2.840.10008.1.20.1"
SCPM_INSTANCE = "1.2.840.10008.1.20.1.1"


@dataclass
class Received:
    event_type: int
    transaction_uid: str
    committed: list[tuple[str, str]]
    failed: list[tuple[str, str, int]]
    calling: str  # the AE title of the association it came on (ours when on our own association)
    own_association: bool


def request(transaction_uid: str, references: list[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ds.ReferencedSOPSequence = Sequence()
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
        ds.ReferencedSOPSequence.append(item)
    return ds


def _parsed(event, own: bool) -> Received:
    info = event.event_information
    committed = [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
                 for i in info.get("ReferencedSOPSequence", [])]
    failed = [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID), int(i.FailureReason))
              for i in info.get("FailedSOPSequence", [])]
    return Received(event.request.EventTypeID, str(info.TransactionUID), committed, failed,
                    event.assoc.requestor.ae_title.strip() if not own else "", own)


@dataclass
class Modality:
    """Title `title`; its listener on `port` (127.0.0.1) when started; `answer(report)` gives
    the N-EVENT-REPORT-RSP status (default 0000)."""

    title: str
    port: int
    answer: object = None
    received: list[Received] = field(default_factory=list)
    proposals: list[list] = field(default_factory=list)  # per association to the listener
    server: object = None

    def __post_init__(self):
        self._lock = threading.Lock()

    def _on_report(self, event, own: bool):
        report = _parsed(event, own)
        with self._lock:
            self.received.append(report)
        return (self.answer(report) if self.answer else 0x0000), None

    def listen(self, tls=None) -> "Modality":
        """Its listener; over TLS with `tls`, a server ssl.SSLContext."""
        ae = AE(ae_title=self.title)
        for syntax in (datasets.ELE, datasets.ILE):
            ae.add_supported_context(SCPM, syntax, scu_role=False, scp_role=True)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, ssl_context=tls, evt_handlers=[
            (evt.EVT_N_EVENT_REPORT, lambda event: self._on_report(event, own=False)),
            (evt.EVT_REQUESTED, lambda event: self.proposals.append(
                [(str(cx.abstract_syntax), [str(ts) for ts in cx.transfer_syntax])
                 for cx in event.assoc.requestor.requested_contexts]))])
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def associate(self, port: int, contexts: list | None = None, called: str = "EX_STORE_SCP"):
        """An association to STORAGE-SCP (called `called`) proposing SCPM (and the storage classes)."""
        ae = AE(ae_title=self.title)
        ae.requested_contexts = contexts or [build_context(SCPM, [datasets.ILE, datasets.ELE]),
                                             build_context(datasets.CT, [datasets.ELE])]
        assoc = ae.associate("127.0.0.1", port, ae_title=called,
                             evt_handlers=[(evt.EVT_N_EVENT_REPORT, lambda event: self._on_report(event, own=True))])
        assert assoc.is_established, assoc.acse_result if hasattr(assoc, "acse_result") else "rejected"
        return assoc

    def commit(self, port: int, transaction_uid: str, references: list[tuple[str, str]]) -> Received:
        """One N-ACTION on an association of its own, answered 0000, and the report that comes
        back on that association; then the association is released."""
        assoc = self.associate(port)
        try:
            assert n_action(assoc, request(transaction_uid, references)) == 0x0000
            (report,) = self.wait_for(1)
        finally:
            assoc.release()
        return report

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        wait_for(lambda: len(self.received) >= count, f"{count} reports at {self.title}", timeout)
        return self.received


def n_action(assoc, ds: Dataset | None, action_type: int = 1, msg_id: int = 1) -> int:
    return n_action_status(assoc, ds, action_type, msg_id).Status


def n_action_status(assoc, ds: Dataset | None, action_type: int = 1, msg_id: int = 1) -> Dataset:
    """As `n_action`, the whole status of the N-ACTION-RSP (Status, and ErrorComment on a failure)."""
    status, _ = assoc.send_n_action(ds, action_type, SCPM, SCPM_INSTANCE, msg_id=msg_id)
    assert "Status" in status, "no N-ACTION-RSP"
    return status
