"""Who gets in, on each listening AE: the rejection table, its precedence, limits (AS-*, CC-*, SE-*).

Every rejection is checked on the wire (A-ASSOCIATE-RJ result, source, reason) and in the
service log (AS-10: AE, calling AE, address, called AE, codes and the rule that fired, which
tells AS-07 from AS-08 where the codes coincide). Requests pynetdicom's AE would never send
(wrong application context, missing items, garbage) are encoded with pynetdicom's PDU classes
and sent on a raw socket (tests/support/pdus.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
from pathlib import Path

import pytest

import datasets
import pdus
from appliance.config.model import StorageSCP
from appliance.dicom.admission import CALLING_AE as CALLING_AE_REJECTION
from appliance.dicom.admission import Admission, Gate, Slot
from appliance.dicom.pdu import decode_request
from helpers import dcmtk, merge, wait_for
from pynetdicom.pdu_primitives import AsynchronousOperationsWindowNegotiation
from scu import associate, echo, scu_ae

SUCCESS = 0x0000
AES = [("storage_scp", "STORAGE-SCP", "EX_STORE_SCP"), ("query_retrieve_scp", "QUERY-RETRIEVE-SCP", "EX_QUERY_SCP")]
AE_IDS = ["STORAGE-SCP", "QUERY-RETRIEVE-SCP"]
UNKNOWN_CLASS = "1.2.826.0.1.3680043.9.7433.99.1"  # a SOP class neither AE supports

UNPARSEABLE = (1, 2, 1)  # AS-06
APPLICATION_CONTEXT = (1, 1, 2)  # AS-03
CALLED_AE = (1, 1, 7)  # AS-04
CALLING_AE = (1, 1, 3)  # AS-05
NO_REASON = (1, 1, 1)  # AS-07, AS-08
LIMIT = (2, 3, 2)  # AS-01
CONGESTION = (2, 3, 1)  # AS-02


def port(app, section: str) -> int:
    return app.config[section]["port"]


def corrupt_items(data: bytes) -> bytes:
    """A request whose first variable item (the application context) claims 60000 bytes."""
    return data[:76] + b"\xea\x60" + data[78:]


def rejection_logged(app, ae: str, calling: str, called: str, codes: tuple, rule: str) -> None:
    result, source, reason = codes
    app.wait_log(rf"{ae} #\d+ {calling}@127\.0\.0\.1:\d+: association rejected \(called {called}\): "
                 rf"[^\n]*result {result}, source {source}, reason {reason} \({rule}\)")


@pytest.mark.parametrize("section,ae,title", AES, ids=AE_IDS)
def test_each_row_of_the_rejection_table(make_appliance, section, ae, title):
    """AS-03..AS-08 with their exact codes and log lines, on each AE's own settings (AS-14)."""
    app = make_appliance({section: {"accepted_calling_aes": ["MODALITY", "TEST_SCU"]}})
    at = port(app, section)
    rows = [
        ("AS-06", "TEST_SCU", title, pdus.request(called=title, max_length=None), UNPARSEABLE),
        ("AS-06", "TEST_SCU", title, corrupt_items(pdus.request(called=title)), UNPARSEABLE),
        ("AS-06", "TEST_SCU", title, pdus.request(called=title, contexts=((datasets.VERIFICATION, ()),)),
         UNPARSEABLE),  # a context without transfer syntax (found by tests/fuzz)
        ("AS-03", "TEST_SCU", title, pdus.request(called=title, application_context="1.2.3.4"), APPLICATION_CONTEXT),
        ("AS-04", "TEST_SCU", "SOMEONE_ELSE", pdus.request(called="SOMEONE_ELSE"), CALLED_AE),
        ("AS-05", "INTRUDER", title, pdus.request(calling="INTRUDER", called=title), CALLING_AE),
        ("AS-07", "TEST_SCU", title, pdus.request(called=title, contexts=((UNKNOWN_CLASS, (datasets.ILE,)),)),
         NO_REASON),
    ]
    for rule, calling, called, data, codes in rows:
        assert pdus.rejection(pdus.exchange(at, data)) == codes, rule
        rejection_logged(app, ae, calling, called, codes, rule)
    assert pdus.rejection(pdus.exchange(at, pdus.request(calling="MODALITY", called=title))) == "accepted"
    assert echo(at, title) == SUCCESS
    other_section, other_title = ("query_retrieve_scp", "EX_QUERY_SCP") if section == "storage_scp" \
        else ("storage_scp", "EX_STORE_SCP")
    assert echo(port(app, other_section), other_title, calling="INTRUDER") == SUCCESS  # lists are per AE


def test_an_oversized_request_is_refused_without_reading_it(make_appliance):
    """AS-06: an A-ASSOCIATE-RQ header announcing ~4 GB is answered 1/2/1 at once, not buffered."""
    app = make_appliance()
    with pdus.connect(app.storage_port) as sock:
        sock.sendall(pdus.header(0x01, 0xFFFFFFF0) + b"\0" * 1000)
        assert pdus.rejection(pdus.read_pdu(sock)) == UNPARSEABLE
        assert pdus.closed_by_peer(sock)
    app.wait_log(r"STORAGE-SCP #\d+ \?@127\.0\.0\.1:\d+: association rejected \(called \?\): A-ASSOCIATE-RQ of "
                 r"4294967280 bytes announced, more than the 1048576 accepted; A-ASSOCIATE-RJ result 1, "
                 r"source 2, reason 1 \(AS-06\)")
    assert echo(app.storage_port, "EX_STORE_SCP") == SUCCESS


def test_called_ae_check_can_be_turned_off(make_appliance):
    """AS-04 is configurable (default on, D-14)."""
    app = make_appliance({"storage_scp": {"check_called_ae": False}})
    assert echo(app.storage_port, "ANY_TITLE") == SUCCESS
    assert echo(app.qr_port, "ANY_TITLE") == CALLED_AE  # the other AE keeps its default


@pytest.mark.parametrize("allowed,ipv4,ipv6", [
    (["10.0.0.0/8"], NO_REASON, NO_REASON),
    (["127.0.0.0/8"], SUCCESS, NO_REASON),
    (["127.0.0.1", "::1"], SUCCESS, SUCCESS),
    (["::1/128"], NO_REASON, SUCCESS),
], ids=["other-network", "ipv4-network", "both-addresses", "ipv6-only"])
def test_ip_allow_list_takes_addresses_and_networks_of_both_families(make_appliance, allowed, ipv4, ipv6):
    """AS-08, SE-03, NW-11: single addresses and networks, IPv4 and IPv6; an IPv4 peer on the
    dual-stack listener is matched as IPv4; the QUERY-RETRIEVE-SCP list is its own (AS-14)."""
    app = make_appliance({"query_retrieve_scp": {"accepted_addresses": allowed}})
    assert echo(app.qr_port, "EX_QUERY_SCP") == ipv4
    assert echo(app.qr_port, "EX_QUERY_SCP", host="::1") == ipv6
    assert echo(app.storage_port, "EX_STORE_SCP", host="::1") == SUCCESS
    if ipv4 == NO_REASON:
        rejection_logged(app, "QUERY-RETRIEVE-SCP", "TEST_SCU", "EX_QUERY_SCP", NO_REASON, "AS-08")
    if ipv6 == NO_REASON:
        app.wait_log(r"QUERY-RETRIEVE-SCP #\d+ TEST_SCU@::1:\d+: association rejected \(called EX_QUERY_SCP\): "
                     r"address ::1 is not in accepted_addresses; .*\(AS-08\)")


def test_precedence_of_reasons(make_appliance):
    """AS-09: AS-06 > AS-03 > AS-04 > AS-05 > AS-08 > AS-07 for a request that fails several."""
    app = make_appliance({"storage_scp": {"accepted_calling_aes": ["MODALITY"],
                                          "accepted_addresses": ["192.0.2.0/24"]}})
    nothing = ((UNKNOWN_CLASS, (datasets.ILE,)),)
    rows = [
        ("AS-06", pdus.request("INTRUDER", "WRONG", contexts=nothing, application_context="1.2.3", max_length=None),
         UNPARSEABLE),
        ("AS-03", pdus.request("INTRUDER", "WRONG", contexts=nothing, application_context="1.2.3"), APPLICATION_CONTEXT),
        ("AS-04", pdus.request("INTRUDER", "WRONG", contexts=nothing), CALLED_AE),
        ("AS-05", pdus.request("INTRUDER", "EX_STORE_SCP", contexts=nothing), CALLING_AE),
        ("AS-08", pdus.request("MODALITY", "EX_STORE_SCP", contexts=nothing), NO_REASON),
    ]
    for rule, data, codes in rows:
        assert pdus.rejection(pdus.exchange(app.storage_port, data)) == codes, rule
        app.wait_log(rf"association rejected [^\n]*\({rule}\)")


@pytest.mark.parametrize("section,ae,title", AES, ids=AE_IDS)
def test_total_limit_per_ae_is_independent_of_the_other(make_appliance, section, ae, title):
    """AS-01, CC-01, CC-03: the (max+1)th association to one AE gets 2/3/2 and is logged; the
    other AE still admits; a slot freed is reused."""
    app = make_appliance({section: {"max_associations": 2}})
    other_section, other_title = ("query_retrieve_scp", "EX_QUERY_SCP") if section == "storage_scp" \
        else ("storage_scp", "EX_STORE_SCP")
    held = [associate(port(app, section), title) for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        assert echo(port(app, section), title) == LIMIT
        rejection_logged(app, ae, "TEST_SCU", title, LIMIT, "AS-01")
        assert echo(port(app, other_section), other_title) == SUCCESS
        held.pop().release()
        wait_for(lambda: echo(port(app, section), title) == SUCCESS, "a freed slot to be reused")
    finally:
        for assoc in held:
            assoc.release()


def test_a_slot_is_free_once_the_release_is_answered(make_appliance):
    """AS-01, CC-01: with one association allowed, a peer that opens its next association as
    soon as it has the A-RELEASE-RP, before closing the last, is admitted every time."""
    app = make_appliance({"storage_scp": {"max_associations": 1}})
    previous = None
    try:
        for _ in range(200):
            sock = pdus.associated(app.storage_port)
            if previous is not None:
                previous.close()
            sock.sendall(pdus.RELEASE_RQ)
            assert pdus.read_pdu(sock)[:1] == b"\x06"
            previous = sock
    finally:
        if previous is not None:
            previous.close()


def test_per_calling_ae_limit_lets_other_titles_in(make_appliance):
    """CC-02: with association_limit = "per_calling_ae" the 11th association from one title is
    rejected 2/3/2 while another title still gets in."""
    app = make_appliance({"storage_scp": {"association_limit": "per_calling_ae"}})
    held = [associate(app.storage_port, "EX_STORE_SCP", calling="MODALITY_A") for _ in range(10)]
    try:
        assert all(a.is_established for a in held)
        assert echo(app.storage_port, "EX_STORE_SCP", calling="MODALITY_A") == LIMIT
        rejection_logged(app, "STORAGE-SCP", "MODALITY_A", "EX_STORE_SCP", LIMIT, "AS-01")
        assert echo(app.storage_port, "EX_STORE_SCP", calling="MODALITY_B") == SUCCESS
    finally:
        for assoc in held:
            assoc.release()


def test_associations_from_before_a_reload_still_count(make_appliance):
    """CC-01 across SIGHUP: the listeners are rebuilt, the running associations keep their slots."""
    app = make_appliance({"storage_scp": {"max_associations": 2}})
    held = [associate(app.storage_port, "EX_STORE_SCP") for _ in range(2)]
    try:
        app.write_config(merge(app.config, {"storage_scp": {"idle_timeout": 600}}))
        app.reload()
        assert echo(app.storage_port, "EX_STORE_SCP") == LIMIT
    finally:
        for assoc in held:
            assoc.release()


def test_limit_comes_before_draining_and_draining_before_contexts(make_appliance):
    """AS-09's tail, AS-01 > AS-02 > AS-07: during the shutdown drain a full AE answers 2/3/2
    and the other one 2/3/1, even to a request with no acceptable context."""
    app = make_appliance({"storage_scp": {"max_associations": 1}})
    held = associate(app.storage_port, "EX_STORE_SCP")
    nothing = ((UNKNOWN_CLASS, (datasets.ILE,)),)
    try:
        assert held.is_established
        app.signal(signal.SIGTERM)
        app.wait_notify("STOPPING=1", 10)  # sent once new requests are refused
        data = pdus.request(called="EX_STORE_SCP", contexts=nothing)
        assert pdus.rejection(pdus.exchange(app.storage_port, data)) == LIMIT
        data = pdus.request(called="EX_QUERY_SCP", contexts=nothing)
        assert pdus.rejection(pdus.exchange(app.qr_port, data)) == CONGESTION
        app.wait_log(r"QUERY-RETRIEVE-SCP #\d+ [^\n]*: the service is shutting down; [^\n]*\(AS-02\)")
    finally:
        held.release()
    assert app.proc.wait(15) == 0, app.log()


def test_requests_while_starting_get_temporary_congestion(make_appliance):
    """AS-02: the listeners answer before the index is open; until then (here: another process
    holds the index locked, as the service tool may) every request gets 2/3/1."""
    app = make_appliance(start=False)
    app.data_dir.mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(app.data_dir / "index.sqlite", isolation_level=None)) as holder:
        holder.execute("BEGIN EXCLUSIVE")
        app.spawn()
        assert wait_for(lambda: echo(app.storage_port, "EX_STORE_SCP"), "the listener to answer") == CONGESTION
        assert echo(app.qr_port, "EX_QUERY_SCP") == CONGESTION
        app.wait_log(r"STORAGE-SCP #\d+ [^\n]*: the service is starting; [^\n]*\(AS-02\)")
        holder.execute("ROLLBACK")
    app.wait_notify("READY=1", 30)
    assert echo(app.storage_port, "EX_STORE_SCP") == SUCCESS


def test_asynchronous_operations_are_not_offered(appliance):
    """AS-11: a proposed Asynchronous Operations Window is answered 1/1 or left out."""
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = 5
    window.maximum_number_operations_performed = 5
    ae = scu_ae()
    assoc = ae.associate("127.0.0.1", appliance.storage_port, ae_title="EX_STORE_SCP", ext_neg=[window])
    try:
        assert assoc.is_established
        assert assoc.acceptor.asynchronous_operations == (1, 1)
    finally:
        assoc.release()


@contextlib.contextmanager
def thread_budget(pid: int):
    """Put process `pid` in a pids cgroup of its own (cgroup v1 `pids` hierarchy, or the
    cgroup2 root); yields a function that caps its number of threads (None: no cap)."""
    v1 = Path("/sys/fs/cgroup/pids")
    root = v1 if v1.is_dir() else Path("/sys/fs/cgroup")
    group = root / f"appliance-test-{os.getpid()}"
    group.mkdir()
    try:
        (group / "cgroup.procs").write_text(str(pid))

        def cap(extra: int | None) -> None:
            current = int((group / "pids.current").read_text())
            (group / "pids.max").write_text("max" if extra is None else str(current + extra))

        yield cap
    finally:
        with contextlib.suppress(OSError):
            (root / "cgroup.procs").write_text(str(pid))
        group.rmdir()


def test_no_worker_thread_means_temporary_congestion(appliance):
    """AS-02: when no thread can be started for a new association (here: the process's pids
    cgroup is full), the request gets 2/3/1 and a log line that names the requester (the
    request was read without a thread, UL-02); once threads can be made again, the service
    answers normally."""
    with thread_budget(appliance.proc.pid) as cap:
        cap(0)
        assert pdus.rejection(pdus.exchange(appliance.storage_port, pdus.request())) == CONGESTION
        appliance.wait_log(r"STORAGE-SCP #\d+ TEST_SCU@127\.0\.0\.1:\d+: association rejected \(called EX_STORE_SCP\): "
                           r"no worker thread can be started \([^)]*\); A-ASSOCIATE-RJ result 2, source 3, reason 1 "
                           r"\(AS-02\)")
        cap(None)
        assert echo(appliance.storage_port, "EX_STORE_SCP") == SUCCESS


def test_dcmtk_echoscu_reads_the_rejections(make_appliance):
    """Interoperability: DCMTK's echoscu decodes our A-ASSOCIATE-RJ as the reason we meant."""
    app = make_appliance({"storage_scp": {"accepted_calling_aes": ["MODALITY"]}})
    port = str(app.storage_port)
    wrong_called = dcmtk("echoscu", "-aet", "MODALITY", "-aec", "WRONG", "127.0.0.1", port)
    assert wrong_called.returncode != 0
    assert "Called AE Title Not Recognized" in wrong_called.stdout + wrong_called.stderr
    wrong_calling = dcmtk("echoscu", "-aet", "INTRUDER", "-aec", "EX_STORE_SCP", "127.0.0.1", port)
    assert "Calling AE Title Not Recognized" in wrong_calling.stdout + wrong_calling.stderr
    allowed = dcmtk("echoscu", "-aet", "MODALITY", "-aec", "EX_STORE_SCP", "127.0.0.1", port)
    assert allowed.returncode == 0, allowed.stderr


def test_the_service_tools_own_echo_passes_the_allow_lists_from_the_box_itself_only(make_appliance):
    """SE-02, SE-03 (issue 22 item 3): `service-tool echo --local` calls as SERVICE_TOOL and must
    get through whatever allow-lists the installer wrote, yet the exception opens nothing: only
    a request proposing nothing but Verification, from the box itself (loopback, or the
    connection's own local address), and the called-AE check still applies."""
    app = make_appliance({"storage_scp": {"accepted_calling_aes": ["MODALITY"], "accepted_addresses": ["192.0.2.0/24"]}})
    verification = ((datasets.VERIFICATION, (datasets.ILE,)),)
    assert echo(app.storage_port, "EX_STORE_SCP", calling="SERVICE_TOOL") == SUCCESS
    assert echo(app.storage_port, "EX_STORE_SCP", calling="SERVICE_TOOL", host="::1") == SUCCESS
    assert echo(app.storage_port, "EX_STORE_SCP", calling="MODALITY") == NO_REASON  # the lists are on
    more = verification + ((datasets.CT, (datasets.ILE,)),)
    assert pdus.rejection(pdus.exchange(app.storage_port, pdus.request("SERVICE_TOOL", contexts=more))) == CALLING_AE
    rejection_logged(app, "STORAGE-SCP", "SERVICE_TOOL", "EX_STORE_SCP", CALLING_AE, "AS-05")
    assert echo(app.storage_port, "WRONG", calling="SERVICE_TOOL") == CALLED_AE

    # From elsewhere: the decision itself, for addresses no loopback test can come from.
    gate = Gate()
    gate.open()
    admission = Admission("STORAGE-SCP", gate)
    admission.configure(StorageSCP(accepted_calling_aes=("MODALITY",)), ("MODALITY",))
    request = decode_request(pdus.request("SERVICE_TOOL", contexts=verification))
    assert admission.decide(request, "10.20.0.7", "10.20.0.40", lambda: 1)[0] is CALLING_AE_REJECTION
    assert isinstance(admission.decide(request, "10.20.0.40", "10.20.0.40", lambda: 1), Slot)  # bind_address
