"""Hostile and broken peers (CF-04, CF-06, CF-07, CC-04, FL-02, FL-08, AS-06).

Each client is bounded in count and time. After each one the service must still answer C-ECHO
on both AEs, every instance stored before must still be in the index and on disk, and nothing
may be left in the spool. The timers are shortened in the configuration so that the tests
wait seconds, not the defaults' half minutes.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import datasets
import pdus
import query_archive
import scu
from helpers import wait_for
from scu import association, echo, send_file

SUCCESS = 0x0000
LIMIT = (2, 3, 2)
STORED_BEFORE = 2


@pytest.fixture
def target(make_appliance, tmp_path):
    """Start an appliance with short timers (`overrides` win) that already holds STORED_BEFORE instances."""

    def start(overrides: dict | None = None):
        config = {"timeouts": {"artim": 2, "pdu_gap": 1, "send": 1}, **(overrides or {})}
        app = make_appliance(config)
        with association(app.storage_port) as assoc:
            for n in range(STORED_BEFORE):
                path = datasets.write(datasets.image(), tmp_path / f"before{n}.dcm")
                assert send_file(assoc, path) == SUCCESS
        return app

    return start


def assert_still_serving(app, stored: int = STORED_BEFORE) -> None:
    assert echo(app.storage_port, "EX_STORE_SCP") == SUCCESS
    assert echo(app.qr_port, "EX_QUERY_SCP") == SUCCESS
    assert app.index_rows("SELECT count(*) FROM instance") == [(stored,)]
    assert len(app.stored_files()) == stored
    wait_for(lambda: not app.in_flight(), "nothing in flight in the spool")


def trickle(sock: socket.socket, data: bytes, interval: float = 1.0, limit: float = 15.0) -> tuple[float, bytes]:
    """Send `data` one byte per `interval` until the appliance answers or closes; returns the
    seconds that took and the first PDU bytes it sent (b"" if it only closed)."""
    start = time.monotonic()
    sock.settimeout(interval)  # the wait between bytes doubles as the watch for an answer
    for byte in data:
        if time.monotonic() - start > limit:
            raise AssertionError(f"still open after {limit} s of trickling")
        try:
            sock.send(bytes([byte]))
            answer = sock.recv(65536)
            return time.monotonic() - start, answer
        except socket.timeout:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - start, b""
    raise AssertionError("the whole PDU was trickled without an answer")


def test_random_bytes_are_logged_and_dropped(target):
    """Garbage on either port closes that connection (logged, the start of it shown); concurrent
    garbage does not disturb the service."""
    app = target()
    rng = random.Random(20261122)
    payloads = [(app.storage_port if n % 2 else app.qr_port, rng.randbytes(rng.randint(1, 8192)))
                for n in range(40)]
    payloads.append((app.storage_port, b"GET / HTTP/1.1\r\nHost: archive\r\n\r\n"))
    payloads.append((app.qr_port, bytes.fromhex("16030100c8010000c40303") + bytes(190)))

    def send(job) -> bool:
        port, payload = job
        with pdus.connect(port) as sock:
            try:
                sock.sendall(payload)
            except (BrokenPipeError, ConnectionResetError):
                return True
            return pdus.closed_by_peer(sock)

    with ThreadPoolExecutor(len(payloads)) as pool:
        assert all(pool.map(send, payloads))
    app.wait_log(r"STORAGE-SCP #\d+ \?@127\.0\.0\.1:\d+: connection closed: not a DICOM PDU \(an HTTP request\)")
    app.wait_log(r"QUERY-RETRIEVE-SCP #\d+ \?@127\.0\.0\.1:\d+: connection closed: not a DICOM PDU \(a TLS handshake")
    assert_still_serving(app)


@pytest.mark.parametrize("ae", ["STORAGE-SCP", "QUERY-RETRIEVE-SCP"])
def test_a_silent_connection_is_closed_at_artim(target, ae):
    """CF-04: a TCP connection that never sends A-ASSOCIATE-RQ is closed after timeouts.artim."""
    app = target()
    port = app.storage_port if ae == "STORAGE-SCP" else app.qr_port
    with pdus.connect(port) as sock:
        start = time.monotonic()
        assert pdus.closed_by_peer(sock)
        assert 1.5 <= time.monotonic() - start < 6
    app.wait_log(rf"{ae} #\d+ \?@127\.0\.0\.1:\d+: connection closed: no A-ASSOCIATE-RQ within 2 s \(timeouts\.artim\)")
    assert_still_serving(app)


def test_a_4gb_pdu_header_aborts_the_association(target):
    """A P-DATA-TF announcing 4 GB is not buffered: A-ABORT at once, logged with the sizes."""
    app = target()
    with pdus.associated(app.storage_port) as sock:
        sock.sendall(pdus.header(0x04, 0xFFFFFFFF) + bytes(4096))
        assert pdus.rejection(pdus.read_pdu(sock)) == "aborted"
        assert pdus.closed_by_peer(sock)
    app.wait_log(r"STORAGE-SCP #\d+ TEST_SCU@127\.0\.0\.1:\d+: association aborted by the appliance \(A-ABORT\): "
                 r"P-DATA-TF of 4294967295 bytes announced, more than the 131072 accepted")
    assert_still_serving(app)


def test_an_association_that_stops_mid_pdu_is_aborted_and_its_dataset_discarded(target, tmp_path):
    """CF-07, FL-02: a pause longer than timeouts.pdu_gap inside a C-STORE's PDU aborts the
    association; the partial dataset leaves nothing; the instance stored before on the same
    association is kept."""
    app = target()
    first, second = (datasets.write(datasets.image(transfer_syntax=datasets.ILE), tmp_path / f"{n}.dcm")
                     for n in range(2))
    with pdus.associated(app.storage_port, (datasets.CT, (datasets.ILE,))) as sock:
        for pdu in pdus.c_store(first, context_id=1, message_id=1):
            sock.sendall(pdu)
        response = pdus.read_pdu(sock)
        assert response[:1] == b"\x04"  # the C-STORE-RSP of the complete instance
        partial = pdus.c_store(second, context_id=1, message_id=2)
        assert len(partial) >= 2, "the dataset must span several PDUs"
        sock.sendall(partial[0])
        sock.sendall(partial[1][: len(partial[1]) // 2])
        start = time.monotonic()
        assert pdus.rejection(pdus.read_pdu(sock)) == "aborted"
        assert 0.8 <= time.monotonic() - start < 5
    app.wait_log(r"association aborted by the appliance \(A-ABORT\): no data for 1 s inside a PDU "
                 r"\(\d+ of \d+ bytes received; timeouts\.pdu_gap\); 1 instances stored")
    assert_still_serving(app, STORED_BEFORE + 1)


def test_200_connections_at_once(target):
    """200 simultaneous association requests: exactly max_associations (10) are accepted, the
    rest get 2/3/2, and the service answers normally once they are gone."""
    app = target()
    sockets = [pdus.connect(app.storage_port) for _ in range(200)]
    try:
        for sock in sockets:
            sock.sendall(pdus.request())
        answers = [pdus.rejection(pdus.read_pdu(sock)) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    assert answers.count("accepted") == 10
    assert answers.count(LIMIT) == 190
    wait_for(lambda: echo(app.storage_port, "EX_STORE_SCP") == SUCCESS, "a free slot after the burst")
    assert_still_serving(app)


def test_a_trickling_client_is_cut_off_and_does_not_delay_others(target):
    """One byte a second: the A-ASSOCIATE-RQ must be complete within ARTIM and a later PDU within
    the idle timeout, although every gap is far below pdu_gap; meanwhile other peers are served
    at once (CC-04)."""
    app = target({"timeouts": {"artim": 2, "pdu_gap": 30}, "storage_scp": {"idle_timeout": 3}})
    echo_times = []

    def echo_meanwhile():
        for _ in range(3):
            start = time.monotonic()
            assert echo(app.qr_port, "EX_QUERY_SCP") == SUCCESS
            echo_times.append(time.monotonic() - start)

    with pdus.connect(app.storage_port) as sock:
        other = threading.Thread(target=echo_meanwhile)
        other.start()
        elapsed, answer = trickle(sock, pdus.request())
        other.join(30)
    assert answer == b"" and 1.5 <= elapsed < 5
    assert len(echo_times) == 3 and max(echo_times) < 1.5, echo_times
    app.wait_log(r"connection closed: the A-ASSOCIATE-RQ was not complete within 2 s \(\d+ of \d+ bytes "
                 r"received; timeouts\.artim\)")

    with pdus.associated(app.storage_port) as sock:
        elapsed, answer = trickle(sock, pdus.c_echo()[0])
    assert pdus.rejection(answer) == "aborted" and 2.5 <= elapsed < 6
    app.wait_log(r"association aborted by the appliance \(A-ABORT\): a PDU was not complete within 3 s")
    assert_still_serving(app)


def test_a_peer_that_stops_reading_is_dropped_after_the_send_timeout(make_appliance):
    """CF-06: when the peer accepts none of our data for timeouts.send, the connection is dropped
    and logged. The peer asks for 20,000 C-FIND matches and never reads them; small socket
    buffers make the appliance's responses back up quickly."""
    app = make_appliance({"timeouts": {"send": 1}, "network": {"socket_buffer_size": 4096}}, start=False)
    app.start().stop()  # creates the index
    query_archive.fill_index(app, 20000)
    app.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", app.qr_port))
    with sock:
        sock.sendall(pdus.request(called="EX_QUERY_SCP", contexts=((datasets.STUDY_ROOT_FIND, (datasets.ILE,)),)))
        assert pdus.read_pdu(sock)[:1] == b"\x02"
        sock.sendall(b"".join(pdus.p_data(pdus.c_find(datasets.STUDY_ROOT_FIND, scu.identifier({
            "QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": query_archive.uid("S100"),
            "SeriesInstanceUID": query_archive.uid("S100.1"), "SOPInstanceUID": ""})))))
        app.wait_log(r"QUERY-RETRIEVE-SCP #\d+ TEST_SCU@127\.0\.0\.1:\d+: connection dropped: the peer accepted "
                     r"no data for 1 s \(timeouts\.send\)", timeout=20)
    assert echo(app.storage_port, "EX_STORE_SCP") == SUCCESS
    assert echo(app.qr_port, "EX_QUERY_SCP") == SUCCESS


def test_idle_timeouts_are_per_ae(target):
    """CF-15, CF-24, FL-05: a QUERY-RETRIEVE-SCP association silent for its idle_timeout is
    aborted (logged); a STORAGE-SCP association idle as long is not, its timer being its own."""
    app = target({"query_retrieve_scp": {"idle_timeout": 1}, "storage_scp": {"idle_timeout": 30}})
    with pdus.associated(app.qr_port, called="EX_QUERY_SCP") as query, pdus.associated(app.storage_port) as store:
        start = time.monotonic()
        assert pdus.rejection(pdus.read_pdu(query)) == "aborted"
        assert 0.8 <= time.monotonic() - start < 4
        for pdu in pdus.c_echo():
            store.sendall(pdu)
        assert pdus.read_pdu(store)[:1] == b"\x04"  # C-ECHO-RSP: still open
    app.wait_log(r"QUERY-RETRIEVE-SCP #\d+ TEST_SCU@127\.0\.0\.1:\d+: association aborted by the appliance \(A-ABORT\) "
                 r"after 1 s without data")
    assert_still_serving(app)


def test_an_identifier_beyond_the_message_limit_aborts_the_association(target):
    """A C-FIND identifier is held in memory as it arrives: a peer announcing an endless one is
    aborted at dimse.MESSAGE_LIMIT (16 MiB), not when the box runs out."""
    app = target()
    request = pdus.c_find(datasets.STUDY_ROOT_FIND, bytes(17 << 20))
    with pdus.associated(app.qr_port, (datasets.STUDY_ROOT_FIND, (datasets.ILE,)), called="EX_QUERY_SCP") as sock:
        try:
            for pdu in pdus.p_data(request, max_pdu=131072):
                sock.sendall(pdu)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the appliance aborted while we were still sending
        assert pdus.closed_by_peer(sock)
    app.wait_log(r"QUERY-RETRIEVE-SCP #\d+ TEST_SCU@127\.0\.0\.1:\d+: association aborted by the appliance "
                 r"\(A-ABORT\): a DIMSE message grows beyond 16777216 bytes held in memory")
    assert_still_serving(app)


def test_requests_piled_up_without_waiting_abort_the_association(target):
    """One operation at a time is negotiated (AS-11): a peer that sends 200 C-ECHO-RQs in one go
    has them queued at most association.QUEUED_LIMIT deep, then is aborted."""
    app = target()
    with pdus.associated(app.storage_port) as sock:
        try:
            sock.sendall(b"".join(pdu for n in range(1, 201) for pdu in pdus.c_echo(n)))
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert pdus.closed_by_peer(sock)  # reading the responses meanwhile: no reset from our side
    app.wait_log(r"STORAGE-SCP #\d+ TEST_SCU@127\.0\.0\.1:\d+: association aborted by the appliance \(A-ABORT\): "
                 r"more than 2 requests sent without waiting for the responses")
    assert_still_serving(app)
