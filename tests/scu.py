"""A pynetdicom SCU for tests: associations (with the rejection reasons), C-ECHO, raw C-STORE."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.pdu_primitives import A_ASSOCIATE
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

    def on_acse(event):
        primitive = event.primitive
        if isinstance(primitive, A_ASSOCIATE) and primitive.result not in (None, 0):
            seen["rj"] = (primitive.result, primitive.result_source, primitive.diagnostic)

    assoc = scu_ae(*sop_classes, title=calling).associate(host, port, ae_title=title,
                                           evt_handlers=[(evt.EVT_ACSE_RECV, on_acse)], **kwargs)
    assoc.acse_result = seen.get("rj")
    return assoc


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
def association(port: int, called: str = "EX_STORE_SCP", contexts: list | None = None):
    """An established association proposing `contexts` (default: the whole STORAGE-SCP
    matrix, one TS per context); released on exit."""
    assoc = associate(port, called, contexts=storage_contexts() if contexts is None else contexts)
    try:
        assert assoc.is_established, f"association to {called} on port {port} not established"
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        assoc.ae.shutdown()


def send_file(assoc, path: Path) -> int:
    """C-STORE the dataset of Part 10 file `path` exactly as its bytes are; returns the status."""
    previous = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    try:
        response = assoc.send_c_store(path)
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = previous
    assert "Status" in response, f"no C-STORE response for {path.name}"
    return response.Status


def echo_status(assoc) -> int:
    response = assoc.send_c_echo()
    assert "Status" in response, "no C-ECHO response"
    return response.Status
