"""Daemon lifecycle: sd_notify READY/STATUS/STOPPING/WATCHDOG, SIGTERM drain, SIGHUP reload,
refusal to start (bad configuration, port in use), IPv6 loopback. Real daemon, real sockets."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

import datasets
import pdus
from helpers import WITHOUT_BIND_CAPABILITY, free_port, merge, wait_for
from scu import associate, echo

SUCCESS = 0x0000
CALLED_AE_NOT_RECOGNIZED = (1, 1, 7)  # A-ASSOCIATE-RJ result, source, reason (AS-04)
TEMPORARY_CONGESTION = (2, 3, 1)  # AS-02

# Invalid configurations and the key their refusal must name.
INVALID = [
    pytest.param({"storage_scp": {"port": "x"}}, "storage_scp.port", id="port-not-integer"),
    pytest.param({"storage_scp": {"ae_title": "EX_QUERY_SCP"}}, "storage_scp.ae_title", id="title-shared-with-QR"),
]


def test_ready_is_notified_with_a_status_line(appliance):
    """The unit is Type=notify: READY=1 comes with a STATUS= naming both AEs and their ports."""
    fields = dict(line.split("=", 1) for line in appliance.ready_message.split("\n"))
    assert fields["READY"] == "1"
    for title, port in (("EX_STORE_SCP", appliance.storage_port), ("EX_QUERY_SCP", appliance.qr_port)):
        assert f"{title} on port {port}" in fields["STATUS"]


@pytest.mark.parametrize("reload_first", [False, True], ids=["plain", "after-a-reload"])
def test_sigterm_lets_a_running_transfer_finish(appliance, tmp_path, reload_first):
    """SIGTERM drains: an association already transferring completes every C-STORE with 0x0000
    while new requests to either AE get 2/3/1 (AS-02); then the daemon sends STOPPING=1, logs
    'stopped' and exits 0; the instances are indexed. Also for an association that began
    before a SIGHUP rebuilt the listeners."""
    paths = [datasets.write(datasets.image(), tmp_path / f"{n}.dcm") for n in range(20)]
    assoc = associate(appliance.storage_port, appliance.storage_title, datasets.CT)
    if reload_first:
        appliance.write_config(merge(appliance.config, {"storage_scp": {"ae_title": "NEW_STORE_SCP"}}))
        appliance.reload()
    statuses = []
    first_stored = threading.Event()

    def transfer():
        for path in paths:
            statuses.append(getattr(assoc.send_c_store(path), "Status", None))
            first_stored.set()
        assoc.release()

    sender = threading.Thread(target=transfer)
    sender.start()
    try:
        assert first_stored.wait(10)
        appliance.signal(signal.SIGTERM)
        appliance.wait_notify("STOPPING=1", 10)
        appliance.wait_log(r"stopping: new associations refused \(2/3/1\); waiting up to \d+ s for 1 running")
        title = "NEW_STORE_SCP" if reload_first else appliance.storage_title
        assert echo(appliance.storage_port, title) == TEMPORARY_CONGESTION
        assert echo(appliance.qr_port, "EX_QUERY_SCP") == TEMPORARY_CONGESTION
    finally:
        sender.join(30)
    assert statuses == [SUCCESS] * len(paths)
    assert appliance.proc.wait(30) == 0, appliance.log()
    appliance.wait_log(r"appliance\.daemon: stopped")
    assert appliance.index_rows("SELECT count(*) FROM instance") == [(len(paths),)]


def test_sigterm_aborts_associations_that_outlive_the_drain(make_appliance):
    """timeouts.shutdown_drain bounds the wait: the idle associations still open then (both AEs at
    their maximum, 10 each) are aborted at once, each peer sees its A-ABORT within 1 s of the
    drain's end (UL-02), and the daemon still exits 0."""
    app = make_appliance({"timeouts": {"shutdown_drain": 1}})
    peers = [(app.storage_port, "EX_STORE_SCP")] * 10 + [(app.qr_port, "EX_QUERY_SCP")] * 10
    socks = [pdus.associated(port, called=title) for port, title in peers]
    try:
        signalled = time.monotonic()
        app.signal(signal.SIGTERM)
        for sock in socks:
            sock.settimeout(5)
            assert pdus.read_pdu(sock)[:1] == b"\x07"  # A-ABORT
        assert time.monotonic() - signalled < 1 + 1.0  # shutdown_drain, then at most a second
    finally:
        for sock in socks:
            sock.close()
    assert app.proc.wait(15) == 0, app.log()
    app.wait_log(r"aborting 20 associations still running at shutdown")
    assert app.log().count("association aborted by the appliance (A-ABORT); 0 ") == 20


@pytest.mark.parametrize("key", ["ae_title", "port"])
def test_sighup_applies_a_valid_change(appliance, key):
    """SIGHUP reloads: a new STORAGE-SCP title is accepted and the old one refused with
    A-ASSOCIATE-RJ 1/1/7 (AS-04); a new port is served and the old one closed."""
    old_title, old_port = appliance.storage_title, appliance.storage_port
    new_value = "NEW_STORE_SCP" if key == "ae_title" else free_port()
    appliance.write_config(merge(appliance.config, {"storage_scp": {key: new_value}}))
    assert appliance.reload().startswith("appliance ")  # what it runs now, on sd_notify STATUS=
    if key == "ae_title":
        assert echo(old_port, new_value) == SUCCESS
        assert echo(old_port, old_title) == CALLED_AE_NOT_RECOGNIZED
        appliance.wait_log(rf"STORAGE-SCP #\d+ TEST_SCU@\S+: association rejected \(called {old_title}\): "
                           r".*result 1, source 1, reason 7 \(AS-04\)")
    else:
        assert echo(new_value, old_title) == SUCCESS
        assert echo(old_port, old_title) is None  # connection refused
    assert echo(appliance.qr_port, "EX_QUERY_SCP") == SUCCESS


@pytest.mark.parametrize("bad, key", INVALID)
def test_sighup_refuses_an_invalid_config_and_keeps_serving(appliance, bad, key):
    """An invalid file on SIGHUP is refused with a log line naming the key; the running
    configuration keeps serving (AE-06, AE-07)."""
    appliance.write_config(merge(appliance.config, bad))
    status = appliance.reload(refused=True)  # systemctl status says so too (sd_notify STATUS=)
    assert status.startswith(f"reload refused, running the previous configuration: {key}:"), status
    appliance.wait_log(rf"reload refused, keeping the running configuration: {key}:")
    assert echo(appliance.storage_port, "EX_STORE_SCP") == SUCCESS
    assert echo(appliance.qr_port, "EX_QUERY_SCP") == SUCCESS
    assert appliance.proc.poll() is None


def test_sighup_to_a_port_in_use_keeps_the_running_listeners(appliance):
    """A reload whose new port is taken is refused like an invalid file: logged with the AE and
    port, the old port serves again, and no 'configuration reloaded' is claimed."""
    port = free_port()
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as blocker:
        blocker.bind(("::", port))
        blocker.listen()
        appliance.write_config(merge(appliance.config, {"storage_scp": {"port": port}}))
        appliance.reload(refused=True)
    appliance.wait_log(rf"reload refused, keeping the running configuration: STORAGE-SCP \(EX_STORE_SCP\) "
                       rf"cannot listen on port {port}: Address already in use")
    assert echo(appliance.storage_port, appliance.storage_title) == SUCCESS
    assert "configuration reloaded" not in appliance.log()


def test_signals_at_any_point_of_the_main_loop_are_taken(appliance):
    """A SIGHUP sent the moment the previous reload's READY=1 arrives lands where the main loop
    goes back to waiting; then SIGTERM: it still serves and stops cleanly. (A handler that set a
    threading.Event deadlocked when the signal came while the main thread held that Event's lock;
    CI once saw a single SIGHUP after start hang so.)"""
    deadline = time.monotonic() + 10
    for _ in range(300):  # bounded in count and time
        appliance.signal(signal.SIGHUP)
        appliance.wait_notify("READY=1", 5)  # also keeps the notify queue (10 datagrams) from filling
        if time.monotonic() > deadline:
            break
    assert echo(appliance.storage_port, appliance.storage_title) == SUCCESS
    assert appliance.stop(timeout=15) == 0, appliance.log()


def test_watchdog_is_fed_when_systemd_arms_it(make_appliance):
    """WatchdogSec in the unit: with WATCHDOG_USEC set the daemon sends WATCHDOG=1 at half that."""
    app = make_appliance(env={"WATCHDOG_USEC": "200000"})  # 0.2 s: a ping every 0.1 s
    for _ in range(3):
        app.wait_notify("WATCHDOG=1", 2)


def test_undeliverable_notification_does_not_stop_the_service(make_appliance, tmp_path):
    """sd_notify(3) semantics: a NOTIFY_SOCKET nobody listens on is logged, not fatal."""
    app = make_appliance(start=False, env={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    app.spawn()
    app.wait_log(r"sd_notify to \S+ failed")
    app.wait_log(r"appliance\.daemon: ready:")
    assert echo(app.storage_port, app.storage_title) == SUCCESS
    assert app.stop() == 0, app.log()


@pytest.mark.parametrize("bad, key", INVALID)
def test_invalid_config_at_start_exits_2_naming_the_key(make_appliance, bad, key):
    """AE-06, AE-07: the service refuses to start on an invalid file (exit 2, the key named)."""
    app = make_appliance(start=False)
    app.write_config(merge(app.config, bad))
    assert app.run_to_exit() == 2
    assert f"configuration refused: {key}:" in app.log()


@pytest.mark.parametrize("section, name", [("storage_scp", "STORAGE-SCP"), ("query_retrieve_scp", "QUERY-RETRIEVE-SCP")])
def test_port_in_use_exits_non_zero_with_a_clear_message(make_appliance, section, name):
    """A port held by another process: exit non-zero, a message naming the AE and the port."""
    app = make_appliance(start=False)
    port = app.config[section]["port"]
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as blocker:
        blocker.bind(("::", port))
        blocker.listen()
        assert app.run_to_exit() not in (0, None)
    assert f"{name} " in app.log() and f"cannot listen on port {port}: Address already in use" in app.log()


def test_a_port_below_1024_without_the_capability_says_what_to_do(make_appliance):
    """Issue 22 item 7b: a configuration with port 104 (restored, or edited by hand) and a service
    without CAP_NET_BIND_SERVICE: exit 1, the message names the fix."""
    app = make_appliance({"storage_scp": {"port": 104}}, start=False, prefix=WITHOUT_BIND_CAPABILITY)
    assert app.run_to_exit() == 1
    assert ("STORAGE-SCP (EX_STORE_SCP) cannot listen on port 104: Permission denied (a port below 1024 takes "
            "CAP_NET_BIND_SERVICE, which service-tool ae set adds as root)") in app.log()


def test_ipv6_loopback_client_echoes_both_aes(appliance):
    """NW-11: with the default bind address "*", an IPv6 client on ::1 reaches both AEs."""
    assert echo(appliance.storage_port, "EX_STORE_SCP", host="::1") == SUCCESS
    assert echo(appliance.qr_port, "EX_QUERY_SCP", host="::1") == SUCCESS
    appliance.wait_log(r"STORAGE-SCP #\d+ TEST_SCU@::1:\d+: C-ECHO status 0x0000")


def test_c_echo_keeps_an_idle_storage_association_open(make_appliance):
    """VE-03, CF-15, FL-01: with a 1 s idle timeout, an association that sends a C-ECHO every
    0.3 s outlives the timeout several times over; once it stops, the appliance aborts it."""
    appliance = make_appliance({"storage_scp": {"idle_timeout": 1}})
    assoc = associate(appliance.storage_port, appliance.storage_title)
    paced = threading.Event()  # never set: its wait() paces the echoes
    for _ in range(10):  # 3 s, three idle timeouts
        assert assoc.send_c_echo().Status == SUCCESS
        paced.wait(0.3)
    assert assoc.is_established
    wait_for(lambda: not assoc.is_established, timeout=5, what="the idle association to be aborted")
    appliance.wait_log(r"STORAGE-SCP #\d+ TEST_SCU@127\.0\.0\.1:\d+: association aborted by the appliance "
                       r"\(A-ABORT\) after 1 s without data")


def test_association_acceptance_carries_pdu_size_and_implementation_identity(appliance):
    """D-1/CF-01: both AEs advertise a 128 KiB maximum PDU; AE-10/AE-11: one Implementation
    Version Name for all AEs, and STORAGE-SCP's Implementation Class UID differs from
    QUERY-RETRIEVE-SCP's."""
    seen = {}
    for name, port, title in (("scp", appliance.storage_port, "EX_STORE_SCP"),
                              ("qr", appliance.qr_port, "EX_QUERY_SCP")):
        assoc = associate(port, title)
        assert assoc.is_established
        seen[name] = (assoc.acceptor.maximum_length, assoc.acceptor.implementation_class_uid,
                      assoc.acceptor.implementation_version_name)
        assoc.release()
    assert seen["scp"][0] == seen["qr"][0] == 131072
    assert seen["scp"][1] != seen["qr"][1]
    assert seen["scp"][2] == seen["qr"][2] and seen["scp"][2].startswith("APPL_")


def test_open_idle_associations_cost_almost_no_cpu(appliance):
    """CC-04, VE-03: modalities may hold associations open between images. pynetdicom's acceptor
    polled every 1 ms per association (~12 % of a core each here); an association thread that
    waits in recv for the next request keeps three open, idle associations well below that."""
    open_ones = [associate(appliance.storage_port, appliance.storage_title) for _ in range(3)]
    assert all(a.is_established for a in open_ones)

    def cpu_seconds() -> float:
        fields = open(f"/proc/{appliance.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    before = cpu_seconds()
    threading.Event().wait(2.0)  # the measurement window itself
    used = cpu_seconds() - before
    for assoc in open_ones:
        assoc.release()
    assert used / 2.0 < 0.10, f"three idle associations used {used / 2.0:.0%} of a core"


def test_associations_leave_no_descriptors_or_threads_behind(appliance):
    """A box that runs for months: 300 associations, accepted and released one after another,
    leave the daemon with the file descriptors and threads it had before (a leak of one
    descriptor each would end in refused connections once select() passes 1024)."""
    proc = Path(f"/proc/{appliance.proc.pid}")

    def counts() -> tuple[int, int]:
        return len(list((proc / "fd").iterdir())), len(list((proc / "task").iterdir()))

    assert echo(appliance.storage_port, "EX_STORE_SCP") == SUCCESS
    before = counts()
    for _ in range(300):
        with pdus.connect(appliance.storage_port) as sock:
            sock.sendall(pdus.request())
            assert pdus.read_pdu(sock)[:1] == b"\x02"
            sock.sendall(pdus.RELEASE_RQ)
            assert pdus.read_pdu(sock)[:1] == b"\x06"
    try:
        # At most as many: a thread of the first echo may still have been winding down.
        wait_for(lambda: all(now <= then for now, then in zip(counts(), before)),
                 f"descriptors and threads back to {before}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; now {counts()}") from None


@pytest.mark.index_backends
def test_the_postgresql_driver_is_loaded_only_for_a_postgresql_index(appliance, index_backend):
    """IX-01 and the peak RSS target (docs/performance.md): peewee would load psycopg (16 MiB)
    into every daemon; a box whose index is SQLite does without it."""
    maps = Path(f"/proc/{appliance.proc.pid}/maps").read_text()
    assert ("psycopg" in maps) == (index_backend == "postgresql")


def test_a_store_dir_on_another_file_system_than_the_spool_is_refused(make_appliance, tmp_path):
    """IX-02: a stored file and its spool name (in storage.data_dir) are hard links of one file,
    so storage.store_dir must be on the data directory's file system: a store on another one
    (here a tmpfs) keeps the service from starting, with a line naming the key."""
    store = tmp_path / "store"
    store.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(store)], check=True)
    try:
        app = make_appliance({"storage": {"store_dir": str(store)}}, start=False)
        assert app.run_to_exit() == 1
        assert re.search(rf"ERROR appliance.daemon: cannot start: storage.store_dir {store} is on another file "
                         r"system than the spool", app.log()), app.log()
        assert not any(store.iterdir())  # nothing was made there
    finally:
        subprocess.run(["umount", str(store)], check=True)


def test_a_store_dir_that_is_not_there_is_refused_not_made(make_appliance, tmp_path):
    """IX-02: storage.store_dir names a shared file system; made by the service when it is not
    mounted, it would be a directory on the local disk under the mount point."""
    share = tmp_path / "share"  # the mount point, with nothing mounted
    share.mkdir()
    app = make_appliance({"storage": {"store_dir": str(share / "store")}}, start=False)
    assert app.run_to_exit() == 1
    assert (f"ERROR appliance.daemon: cannot start: storage.store_dir {share / 'store'} is not a directory "
            "(is the shared file system mounted?)") in app.log()
    assert not any(share.iterdir())
