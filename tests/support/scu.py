"""A pynetdicom SCU for tests: associations (with the rejection reasons), C-ECHO, raw C-STORE."""

from __future__ import annotations

import socket
from contextlib import contextmanager
from pathlib import Path

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.presentation import build_context

import datasets


def scu_ae(*sop_classes: str, transfer_syntaxes: tuple[str, ...] = (), title: str = "TEST_SCU") -> "AE":
    """A requesting AE proposing Verification plus `sop_classes` (default TS: ELE, ILE)."""
    ae = AE(ae_title=title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    syntaxes = list(transfer_syntaxes) or [datasets.ELE, datasets.ILE]
    ae.add_requested_context(datasets.VERIFICATION)
    for sop_class in sop_classes:
        ae.add_requested_context(sop_class, syntaxes)
    return ae


def associate(port: int, title: str, *sop_classes: str, host: str = "127.0.0.1", calling: str = "TEST_SCU",
              **kwargs):
    """An association to the appliance (called `title`); `.acse_result` holds (result, source,
    reason) when rejected."""
    seen = {}

    def on_pdu(event):
        # Read off the PDU as it arrives, in pynetdicom's reader thread: when the A-ASSOCIATE-RJ
        # comes at once, pynetdicom 3.0's association thread can find the connection closed by
        # it before it looks for the answer, and then never takes the rejection in.
        pdu = event.pdu
        if isinstance(pdu, A_ASSOCIATE_RJ):
            seen["rj"] = (pdu.result, pdu.source, pdu.reason_diagnostic)

    handlers = [(evt.EVT_PDU_RECV, on_pdu), (evt.EVT_CONN_OPEN, _no_delay)]
    assoc = scu_ae(*sop_classes, title=calling).associate(host, port, ae_title=title, evt_handlers=handlers,
                                                          **kwargs)
    assoc.acse_result = seen.get("rj")
    return assoc


def _no_delay(event) -> None:
    """Nagle off, as the appliance has it: pynetdicom sends a C-FIND-RQ's command and identifier
    as two writes, and the second would wait for a delayed ACK (~40 ms)."""
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def echo(port: int, title: str, host: str = "127.0.0.1", calling: str = "TEST_SCU") -> int | tuple | None:
    """C-ECHO status; the (result, source, reason) of an A-ASSOCIATE-RJ; None if no association."""
    assoc = associate(port, title, host=host, calling=calling)
    if not assoc.is_established:
        return assoc.acse_result
    try:
        status = assoc.send_c_echo()
        return status.Status if "Status" in status else None
    finally:
        assoc.release()


def storage_contexts() -> list:
    """One context per (SOP class, TS) of the STORAGE-SCP matrix, plus Verification."""
    contexts = [build_context(datasets.VERIFICATION, [datasets.ILE])]
    for sop_class in datasets.ALL_STORAGE:
        syntaxes = (datasets.ILE, datasets.ELE, datasets.JPEG_BASELINE) if sop_class in datasets.JPEG_CLASSES \
            else (datasets.ILE, datasets.ELE)
        contexts += [build_context(sop_class, [ts]) for ts in syntaxes]
    return contexts


@contextmanager
def association(port: int, called: str = "EX_STORE_SCP", contexts: list | None = None, calling: str = "TEST_SCU",
                **kwargs):
    """An established association proposing `contexts` (default: the whole STORAGE-SCP
    matrix, one TS per context); released on exit. `kwargs` go to pynetdicom's associate()."""
    assoc = associate(port, called, contexts=storage_contexts() if contexts is None else contexts,
                      calling=calling, **kwargs)
    try:
        assert assoc.is_established, \
            f"association to {called} on port {port} not established: {assoc.acse_result}"
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        assoc.ae.shutdown()


def send_file(assoc, path: Path) -> int:
    """C-STORE the dataset of Part 10 file `path` exactly as its bytes are; returns the status."""
    return store_response(assoc, path).Status


def store_response(assoc, path: Path) -> Dataset:
    """As `send_file`, the whole C-STORE-RSP status (Status, and ErrorComment on a failure)."""
    previous = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    try:
        response = assoc.send_c_store(path)
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = previous
    assert "Status" in response, f"no C-STORE response for {path.name}"
    return response


def echo_status(assoc) -> int:
    response = assoc.send_c_echo()
    assert "Status" in response, "no C-ECHO response"
    return response.Status


def query_contexts() -> list:
    """What a viewer proposes to QUERY-RETRIEVE-SCP: Verification and both FIND models, ILE."""
    return [build_context(sop_class, [datasets.ILE]) for sop_class in
            (datasets.VERIFICATION, datasets.PATIENT_ROOT_FIND, datasets.STUDY_ROOT_FIND)]


def find(assoc, sop_class: str, identifier) -> list[tuple[int, object]]:
    """Every C-FIND response as (status, identifier or None), the final one included."""
    return [(status.Status, found) for status, found in find_statuses(assoc, sop_class, identifier)]


def find_statuses(assoc, sop_class: str, identifier) -> list[tuple[Dataset, object]]:
    """As `find`, with each response's whole status (Status, and ErrorComment on a failure)."""
    responses = [(status, found) for status, found in assoc.send_c_find(identifier, sop_class) if "Status" in status]
    assert responses, "no C-FIND response"
    return responses


def identifier(keys: dict) -> Dataset:
    """A query identifier from keyword -> text; values pydicom will not hold (a wildcard in an
    IS, a word in a DA) go in as the bytes a modality would send."""
    ds = Dataset()
    for keyword, value in keys.items():
        try:
            setattr(ds, keyword, value)
        except ValueError:
            tag = Tag(keyword)
            ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value.encode(), 0, True, True)
    return ds
