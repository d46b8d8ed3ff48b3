"""Failure paths of STORAGE-SCP: full disk, a client that vanishes mid-dataset, SIGKILL mid-transfer.

Everything runs against the real daemon over real sockets; the small disk is a real tmpfs.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import uuid
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF

import datasets
from appliance.store import files
from helpers import SMALL_DISK_INODES, Appliance, fill_until_free, wait_for
from scu import associate, echo

SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700
RESERVE = 4 << 20
RESERVED = {"storage": {"reserve_bytes": RESERVE}}  # on the small disk (conftest.small_disk)


# --- helpers ---------------------------------------------------------------------------------

def fill_below_reserve(directory: Path) -> list[Path]:
    return fill_until_free(directory, RESERVE // 2)


def fill_inodes(directory: Path) -> list[Path]:
    """Create empty files until the filesystem has no inode left (bytes stay plentiful)."""
    fillers = []
    for _ in range(SMALL_DISK_INODES):
        filler = directory / f"inode-{uuid.uuid4().hex}"
        try:
            filler.touch()
        except OSError:
            return fillers
        fillers.append(filler)
    raise AssertionError(f"{SMALL_DISK_INODES} files did not exhaust the inodes")


def indexed_paths(app: Appliance) -> set[str]:
    return {path for (path,) in app.index_rows("SELECT path FROM instance")}


def store(app: Appliance, *paths: Path) -> list[int | None]:
    """C-STORE each Part 10 file (sent as encoded, bit for bit) over one association."""
    assoc = associate(app.storage_port, app.storage_title, datasets.CT)
    assert assoc.is_established, assoc.acse_result
    try:
        return [getattr(assoc.send_c_store(path), "Status", None) for path in paths]
    finally:
        if assoc.is_established:
            assoc.release()


def new_instance(tmp_path: Path, name: str, **kwargs) -> Path:
    return datasets.write(datasets.image(**kwargs), tmp_path / f"{name}.dcm")


def new_instances(tmp_path: Path, prefix: str, count: int, **kwargs) -> dict[str, Path]:
    """`count` Part 10 files, by SOP Instance UID."""
    made = [datasets.image(**kwargs) for _ in range(count)]
    return {ds.SOPInstanceUID: datasets.write(ds, tmp_path / f"{prefix}{n:03}.dcm") for n, ds in enumerate(made)}


def assert_stored_intact(app: Appliance, sent: dict[str, Path]) -> None:
    """Each SOP Instance UID has an index row whose file exists, parses, and equals what was sent."""
    for uid, path in sent.items():
        rows = app.index_rows("SELECT path FROM instance WHERE sop_instance_uid = ?", uid)
        assert len(rows) == 1, f"{uid} not indexed"
        stored = app.data_dir / "store" / rows[0][0]
        assert pydicom.dcmread(stored).SOPInstanceUID == uid
        assert datasets.dataset_bytes(stored) == datasets.dataset_bytes(path)


def assert_no_debris(app: Appliance) -> None:
    """No orphan store file (every file has an index row), nothing in flight in the spool."""
    store_root = app.data_dir / "store"
    on_disk = {str(p.relative_to(store_root)) for p in app.stored_files()}
    assert on_disk == indexed_paths(app)
    assert app.in_flight() == []


# --- full disk (ST-07) -------------------------------------------------------------------------

@pytest.mark.parametrize("fill, reason", [(fill_below_reserve, "disk full: .* below the reserve"),
                                          (fill_inodes, "disk full while receiving")],
                         ids=["bytes-below-reserve", "no-inode-left"])
def test_full_disk_refuses_with_a700_and_recovers(small_disk, tmp_path, fill, reason):
    """ST-07, LG-05, FL-08: on a full disk (free bytes below storage.reserve_bytes, or no inode left
    for a receive file) a C-STORE gets A700, a 'disk full' log line, and leaves no file, spool
    file or index row; earlier instances stay readable, C-ECHO still works, and storing works
    again once space is freed. Without inodes the files made ahead still take instances, each
    stored whole, until they are used up."""
    app = small_disk(RESERVED)
    before = new_instances(tmp_path, "before", 2)
    assert store(app, *before.values()) == [SUCCESS, SUCCESS]

    fillers = fill(app.data_dir)
    # Until two in a row are refused: tmpfs counts every hard link as an inode, so each instance
    # stored (its spool name removed) gives one back, and every second one pays for a file made
    # ahead (two names): about twice the files ready when the disk filled.
    stored, refused_in_a_row = dict(before), 0
    for n in range(3 * (files.POOL_LOW + files.POOL_BATCH)):
        sent = new_instance(tmp_path, f"sent{n}")
        uid = pydicom.dcmread(sent).SOPInstanceUID
        if store(app, sent) == [SUCCESS]:
            stored[uid], refused_in_a_row = sent, 0
        else:
            refused_in_a_row += 1
            if refused_in_a_row == 2:
                break
    assert refused_in_a_row == 2, "the disk never refused an instance"

    app.wait_log(rf"C-STORE {uid} .*status 0xA700: {reason}")
    assert app.index_rows("SELECT count(*) FROM instance WHERE sop_instance_uid = ?", uid) == [(0,)]
    assert len(app.stored_files()) == len(stored)
    assert_no_debris(app)
    assert_stored_intact(app, stored)
    assert echo(app.storage_port, app.storage_title) == SUCCESS

    for filler in fillers:
        filler.unlink()
    assert store(app, sent) == [SUCCESS]
    assert_stored_intact(app, {**stored, uid: sent})
    assert_no_debris(app)


def test_instance_larger_than_free_space_is_refused_not_aborted(small_disk, tmp_path):
    """ST-07, FL-08: a 6 MiB instance arriving with 5 MiB free (above the 4 MiB reserve when it
    starts) fills the disk while it is received. Expected: the whole
    dataset is still read, the C-STORE is answered A700 on the same association (no abort), the
    partial spool file is gone, and the association goes on storing (an instance that fits)."""
    app = small_disk(RESERVED)
    fill_until_free(app.data_dir, RESERVE + (1 << 20))
    big = new_instance(tmp_path, "big", rows=1536, columns=2048)  # 6 MiB of pixels
    small = new_instance(tmp_path, "small")
    big_uid, small_uid = (pydicom.dcmread(p).SOPInstanceUID for p in (big, small))

    assert store(app, big, small) == [OUT_OF_RESOURCES, SUCCESS]

    app.wait_log(rf"C-STORE {big_uid} .*status 0xA700: disk full")
    app.wait_log(r"association released; 1 instances stored, 1 refused")
    assert "Traceback" not in app.log()
    assert_stored_intact(app, {small_uid: small})
    assert_no_debris(app)
    assert echo(app.storage_port, app.storage_title) == SUCCESS


# --- client vanishes mid-dataset (FL-02, FL-03) ------------------------------------------------

def send_first_half(assoc, path: Path, context_id: int | None = None) -> None:
    """Write the C-STORE-RQ command and half of the dataset's P-DATA-TF PDUs straight to the socket
    (on the accepted presentation context for the SOP class unless `context_id` says otherwise)."""
    ds = pydicom.dcmread(path)
    request = C_STORE()
    request.MessageID = 99
    request.AffectedSOPClassUID = ds.SOPClassUID
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 2
    request.DataSet = BytesIO(datasets.dataset_bytes(path))
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    [context] = [c for c in assoc.accepted_contexts if c.abstract_syntax == ds.SOPClassUID]
    pdus = []
    for primitive in message.encode_msg(context_id or context.context_id, assoc.acceptor.maximum_length):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        pdus.append(pdu.encode())
    assert len(pdus) > 20, "instance too small to be cut in the middle"
    try:
        for pdu in pdus[:len(pdus) // 2]:
            assoc.dul.socket.socket.sendall(pdu)
    except (BrokenPipeError, ConnectionResetError):
        # Allowed only for a protocol violation (unknown context): the appliance may drop
        # the connection before half the dataset is written; the callers assert the rest.
        assert context_id is not None


def abort(assoc) -> None:
    assoc.abort()


def drop_tcp(assoc) -> None:
    assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)


def stall(assoc) -> None:
    """Send nothing more: the appliance's idle timeout (1 s here) must abort the association."""


@pytest.mark.parametrize("vanish, logged", [
    (abort, r"association aborted by the peer \(A-ABORT\)"),
    (drop_tcp, "connection lost"),
    (stall, r"association aborted by the appliance \(A-ABORT\) after 1 s without data"),
], ids=["peer-A-ABORT", "TCP-close", "stalled-timeout"])
def test_client_vanishing_mid_dataset_leaves_nothing(make_appliance, tmp_path, vanish, logged):
    """FL-01, FL-02, FL-03, FL-08: instances stored earlier on the association stay; the
    half-received one leaves no spool file, store file or index row; the end is logged with its
    cause, as an ERROR (a communication failure, unlike a peer that goes before it sends
    anything: issue 22); the service keeps serving."""
    appliance = make_appliance({"storage_scp": {"idle_timeout": 1}})
    earlier = new_instances(tmp_path, "earlier", 2)
    large = new_instance(tmp_path, "large", rows=2048, columns=2048)  # 8 MiB, 64 PDUs of 128 KiB

    assoc = associate(appliance.storage_port, appliance.storage_title, datasets.CT)
    assert [assoc.send_c_store(p).Status for p in earlier.values()] == [SUCCESS, SUCCESS]
    send_first_half(assoc, large)
    wait_for(lambda: appliance.in_flight(larger_than=1 << 20),
             "the partial dataset to reach the spool")
    vanish(assoc)

    appliance.wait_log(rf"ERROR appliance\.association: STORAGE-SCP #\d+ TEST_SCU@\S+: {logged}; 2 instances stored")
    wait_for(lambda: appliance.in_flight() == [], "the partial spool file to be removed")
    assert_stored_intact(appliance, earlier)
    assert len(appliance.stored_files()) == 2
    assert_no_debris(appliance)
    assert echo(appliance.storage_port, appliance.storage_title) == SUCCESS
    assert store(appliance, new_instance(tmp_path, "after")) == [SUCCESS]


def test_c_store_on_a_context_never_accepted_leaves_nothing(appliance, tmp_path):
    """FL-03, FL-08: a peer sending a C-STORE-RQ on presentation context 99 (never negotiated)
    breaks PS3.8: the association is aborted and its end logged with the cause (a WARNING: the
    peer's mistake, issue 22), nothing of the data set is kept, earlier instances stay, the
    service keeps serving."""
    earlier = new_instances(tmp_path, "earlier", 1)
    assoc = associate(appliance.storage_port, appliance.storage_title, datasets.CT)
    assert [assoc.send_c_store(p).Status for p in earlier.values()] == [SUCCESS]
    send_first_half(assoc, new_instance(tmp_path, "large", rows=2048, columns=2048), context_id=99)

    appliance.wait_log(r"WARNING appliance\.association: STORAGE-SCP #\d+ TEST_SCU@\S+: association aborted by the "
                       r"appliance \(A-ABORT\): a PDV on presentation context 99, which was not accepted; 1 instances "
                       r"stored")
    wait_for(lambda: not assoc.is_alive(), "the appliance to drop the connection")
    assert_stored_intact(appliance, earlier)
    assert_no_debris(appliance)
    assert echo(appliance.storage_port, appliance.storage_title) == SUCCESS


# --- SIGKILL during a transfer (ST-06) ---------------------------------------------------------

@pytest.mark.index_backends  # the index rows survive on PostgreSQL as on SQLite (IX-01)
def test_sigkill_mid_transfer_loses_no_acknowledged_instance(appliance, tmp_path):
    """ST-06, GN-01: every instance answered 0x0000 before a SIGKILL is, after a restart on the
    same data dir, indexed with its file intact; no orphan store file, nothing left in spool/."""
    sent = new_instances(tmp_path, "i", 200, rows=32, columns=32)
    acknowledged: dict[str, Path] = {}
    halfway, killed = threading.Event(), threading.Event()

    def killer():
        if halfway.wait(60):
            os.kill(appliance.proc.pid, signal.SIGKILL)  # while the sender is already on the next instances
            killed.set()

    thread = threading.Thread(target=killer)
    thread.start()
    assoc = associate(appliance.storage_port, appliance.storage_title, datasets.CT)
    assoc.acse_timeout = 2  # bounds abort() below: the dead peer never closes its side politely
    try:
        for uid, path in sent.items():
            if not assoc.is_established or killed.is_set():
                break
            if getattr(assoc.send_c_store(path), "Status", None) == SUCCESS:
                acknowledged[uid] = path
                if len(acknowledged) == 100:
                    halfway.set()
    finally:
        halfway.set()
        thread.join(10)
        if assoc.is_established:
            assoc.abort()
    appliance.kill()
    assert appliance.proc.returncode == -signal.SIGKILL
    assert 100 <= len(acknowledged) < 200, "the kill did not land during the transfer"

    appliance.start()
    assert_stored_intact(appliance, acknowledged)
    assert_no_debris(appliance)
    [(indexed,)] = appliance.index_rows("SELECT count(*) FROM instance")
    assert len(acknowledged) <= indexed <= len(acknowledged) + 1  # at most the one whose RSP was lost
