"""FL-09 with real parts: the daemon runs in the lab's box namespace on `box0`, a DHCP client
holds a lease from dnsmasq, and a modality (pynetdicom) in the server namespace associates over
the veth to the leased address. A renewal refused (DHCPNAK) or a lease run out aborts every
association; a static address removed, or a lease released while the service stops, does not."""

from __future__ import annotations

import datetime
import re
import signal
import time

import pytest

import pdus
import scu
from helpers import Appliance, merge, wait_for
import netlab
from netlab import BOX, lab  # noqa: F401  (lab: the fixture)

LOST = r"ERROR appliance\.network: DHCP lease lost on box0: (\S+) removed [^\n]*; (\d+) DICOM associations aborted"
ABORTED = r"{ae} #\d+ TEST_SCU@10\.251\.1\.1:\d+: association aborted by the appliance \(A-ABORT\)"
ABORT_BOUND = 5.0  # seconds from the DHCPNAK (or the end of the lifetime) to the associations aborted


@pytest.fixture
def box(lab, tmp_path):
    """Factory: the appliance inside the box namespace, managing box0 and listening on every
    address; stopped before the lab goes."""
    made = []

    def make(overrides: dict | None = None, watched: bool = True) -> Appliance:
        config = merge({"network": {"interface": BOX, "bind_address": "*"}, "timeouts": {"shutdown_drain": 3}},
                       overrides or {})
        app = Appliance(tmp_path / "appliance", config, prefix=("ip", "netns", "exec", lab.client))
        made.append(app)
        app.start()
        if watched:
            app.wait_log(r"watching box0 for DHCP leases lost")
        return app

    yield make
    for app in made:
        app.stop(timeout=10)  # longer: killed, and the test errors


@pytest.fixture
def modality(lab):
    """Factory: an association from the server namespace to `address`; aborted at teardown."""
    opened = []

    def associate(address: str, port: int, title: str = "EX_STORE_SCP"):
        assoc = lab.call(lab.server, scu.associate, port, title, host=address)
        opened.append(assoc)
        assert assoc.is_established, assoc.acse_result
        return assoc

    yield associate
    for assoc in opened:
        if assoc.is_alive():
            assoc.abort()
        assoc.ae.shutdown()


def test_refused_renewal_aborts_every_association(lab, box, modality):
    client = lab.dhcp_client()
    leased = client.wait_bound()
    app = box()
    modality(leased, app.storage_port)
    modality(leased, app.qr_port, "EX_QUERY_SCP")
    app.wait_associations(2)

    lab.move_pool()
    refused = time.monotonic()
    client.renew()
    lost = app.wait_log(LOST, timeout=ABORT_BOUND)
    latency = time.monotonic() - refused

    assert (lost[1], lost[2]) == (f"{leased}/24", "2"), lost[0]
    assert f"DHCPNAK(srv0) {leased}" in lab.dnsmasq_log()  # it was a refusal, not a release
    for ae in ("STORAGE-SCP", "QUERY-RETRIEVE-SCP"):
        app.wait_log(ABORTED.format(ae=ae), timeout=ABORT_BOUND - latency)
    # The service goes on: a new lease, a new association (FL-08).
    again = client.wait_bound()
    assert again != leased
    assoc = modality(again, app.storage_port)
    assert scu.echo_status(assoc) == 0
    assoc.release()
    assert app.stop() == 0, app.log()
    assert len(re.findall(LOST, app.log())) == 1, app.log()


def test_both_aes_at_their_maximum_are_aborted_within_a_second(lab, box):
    """FL-09, UL-02: with STORAGE-SCP and QUERY-RETRIEVE-SCP both at max_associations (10 each), a
    refused renewal aborts all 20 at once, each within 1 s of the refusal (an abort used to wait
    0.1 s per association: 2 s for these). The peers cannot tell: the address their A-ABORTs
    would come from is gone, so the service's log lines are the record."""
    client = lab.dhcp_client()
    leased = client.wait_bound()
    app = box()
    peers = [(app.storage_port, "EX_STORE_SCP")] * 10 + [(app.qr_port, "EX_QUERY_SCP")] * 10
    socks = lab.call(lab.server, lambda: [pdus.associated(port, called=title, host=leased) for port, title in peers])
    try:
        assert pdus.rejection(lab.call(lab.server, pdus.exchange, app.storage_port,
                                       pdus.request(), host=leased)) == (2, 3, 2)  # full (AS-01)
        lab.move_pool()
        refused = datetime.datetime.now().astimezone()
        client.renew()
        lost = app.wait_log(LOST, timeout=ABORT_BOUND)
    finally:
        for sock in socks:
            sock.close()
    assert lost[2] == "20", lost[0]
    aborted = re.findall(r"^(\S+) ERROR appliance\.association: " + ABORTED.format(ae=r"(?:STORAGE|QUERY-RETRIEVE)-SCP"), app.log(), re.M)
    assert len(aborted) == 20, app.log()
    latest = max(datetime.datetime.fromisoformat(when) for when in aborted) - refused
    assert latest.total_seconds() < 1.0, f"the last of 20 associations was aborted {latest} after the refusal"


def test_lease_that_runs_out_aborts_after_a_reload_named_the_interface(lab, box, modality):
    """The kernel removes an address whose lifetime ends, as it does a lease the DHCP client
    could not renew. The interface comes from a reload: the watch follows network.interface."""
    netlab.apply_static(BOX, ["10.251.1.10/24"], netns=lab.client)
    app = box({"network": {"interface": "eth7"}}, watched=False)
    app.wait_log(r"INFO appliance\.network: DHCP lease watch off: network\.interface: no interface 'eth7'")
    app.config["network"]["interface"] = BOX
    app.write_config(app.config)
    app.reload()
    app.wait_log(r"watching box0 for DHCP leases lost")  # the watch thread says so once it listens
    modality("10.251.1.10", app.storage_port)
    app.wait_associations(1)

    lab.run(lab.client, "ip", "addr", "add", "10.251.1.20/24", "dev", BOX, "valid_lft", "1", "preferred_lft", "1")
    lost = app.wait_log(LOST, timeout=1 + ABORT_BOUND)

    assert (lost[1], lost[2]) == ("10.251.1.20/24", "1"), lost[0]
    app.wait_log(ABORTED.format(ae="STORAGE-SCP"))
    assert app.stop() == 0, app.log()


def test_static_address_removed_aborts_nothing(lab, box, modality):
    netlab.apply_static(BOX, ["10.251.1.10/24", "10.251.1.11/24"], netns=lab.client)
    app = box()
    assoc = modality("10.251.1.10", app.storage_port)

    assert netlab.apply_static(BOX, ["10.251.1.10/24"], netns=lab.client) == ["removed 10.251.1.11/24"]
    app.wait_log(r"INFO appliance\.network: static address 10\.251\.1\.11/24 removed from box0: not a DHCP lease")

    assert scu.echo_status(assoc) == 0
    assoc.release()
    assert app.stop() == 0, app.log()
    assert "DHCP lease lost" not in app.log() and "aborted" not in app.log(), app.log()


def test_lease_released_while_the_service_stops_is_no_refusal(lab, box, modality):
    client = lab.dhcp_client()
    leased = client.wait_bound()
    app = box()
    modality(leased, app.storage_port)  # keeps the shutdown draining while the lease goes
    app.wait_associations(1)

    app.signal(signal.SIGTERM)
    app.wait_notify("STOPPING=1", 10)
    client.release()
    assert all(msg.get("IFA_LOCAL") != leased for msg in lab.addresses()), "the lease's address is still there"
    assert app.proc.poll() is None, "the service stopped before the lease was released"

    assert app.stop() == 0, app.log()
    assert f"DHCPRELEASE(srv0) {leased}" in lab.dnsmasq_log()
    assert "DHCP lease lost" not in app.log() and "removed from box0" not in app.log(), app.log()


def test_both_scp_aes_answer_over_ipv4_and_ipv6_on_the_configured_addresses(lab, box):
    """NW-11: with static IPv4 and IPv6 addresses on the box's interface, a modality in another
    namespace reaches both SCP AEs over either family (one dual-stack socket per AE)."""
    netlab.apply_static(BOX, ["10.251.1.20/24", "fd51::20/64"], netns=lab.client)
    app = box(watched=False)
    for address in ("10.251.1.20", "fd51::20"):
        for port, title in ((app.storage_port, "EX_STORE_SCP"), (app.qr_port, "EX_QUERY_SCP")):
            # Polled: the IPv6 address is usable once duplicate address detection is done.
            wait_for(lambda: lab.call(lab.server, scu.echo, port, title, host=address) == 0x0000,
                     f"C-ECHO to {title} at [{address}]:{port}", 10)
