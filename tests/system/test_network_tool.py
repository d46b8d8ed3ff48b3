"""`service-tool network` against real systemd daemons (TL-03, NW-03, NW-06, NW-12, NW-13): the
box's rootfs boots as a container in a lab with dnsmasq (tests/support/nspawn.py, tests/support/netlab.py); the tool writes the
files into the container's root, runs netplan's generator there and tells networkd, timesyncd,
hostnamed and timedated over the container's bus. `network try` without a confirmation puts
everything back; with one, the new settings stay.
"""

from __future__ import annotations

import json
import subprocess
import tomllib

import pytest
import tomlkit

import nspawn
from netlab import lab  # noqa: F401  (the fixture)
import rootfs
from appliance.network import system_bus
from helpers import SERVICE_TOOL, service_tool, wait_for

pytestmark = pytest.mark.debian_tree

STATIC = "10.251.1.50"
SETTLE = 30.0  # s; networkd acts on a change in well under 1 s, a DHCP lease takes 1-7 s


@pytest.fixture
def box(lab, tmp_path):
    with nspawn.booted(rootfs.cached_rootfs(), lab, tmp_path, {}) as container:
        yield container


@pytest.fixture
def target(box, lab) -> list[str]:
    """The options that point the tool at the container instead of this host. Its root as its
    PID 1 sees it: /run there is the container's own tmpfs, where netplan's output must go."""
    return ["--root", f"/proc/{box.pid}/root", "--bus", box.bus_address, "--netns", lab.client]


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "appliance.toml"
    path.write_text(tomlkit.dumps({"storage": {"data_dir": str(tmp_path / "data")},
                                   "network": {"interface": nspawn.INTERFACE, "dhcp": True}}))
    return path


def tool(config, target: list[str], *args: str) -> subprocess.CompletedProcess:
    return service_tool(config, "network", *args, *target)


def link(box) -> system_bus.LinkState:
    async def describe(bus):
        return await bus.describe_link(await bus.link_index(nspawn.INTERFACE))

    return system_bus.run(describe, box.bus_address)


def dhcp_address(box) -> str | None:
    found = link(box).addresses_from("DHCPv4")
    return found[0] if found else None


def static_in_force(box) -> bool:
    state = link(box)
    return f"{STATIC}/24" in state.addresses_from("static") and not state.addresses_from("DHCPv4")


def test_apply_puts_the_files_settings_in_force(box, config, target):
    result = tool(config, target, "apply")
    assert result.returncode == 0, result.stderr
    assert (box.root / "etc/netplan/90-appliance.yaml").exists()
    wait_for(lambda: dhcp_address(box), "a DHCPv4 lease through netplan's file", SETTLE)
    assert link(box).network_file == "/run/systemd/network/10-netplan-appliance.network"


def test_try_without_confirmation_puts_everything_back(box, config, target):
    """The installer's typo must not cut a headless box off: no 'yes' in time, and the files,
    the configuration file and the running daemons are as before."""
    assert tool(config, target, "apply").returncode == 0
    wait_for(lambda: dhcp_address(box), "the DHCP lease", SETTLE)
    before = config.read_bytes()
    netplan_before = (box.root / "etc/netplan/90-appliance.yaml").read_text()
    trying = subprocess.Popen(
        [str(SERVICE_TOOL), "--config", str(config), "network", "try", "--dhcp", "off", "--address",
         f"{STATIC}/24", "--gateway4", "10.251.1.1", "--dns", "10.251.1.2", "--timeout", "8", *target],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: static_in_force(box), "the static address in force during the try", SETTLE)
        out, err = trying.communicate(timeout=60)
    finally:
        if trying.poll() is None:
            trying.kill()
    assert trying.returncode == 1, err
    assert "no confirmation in time" in err and "previous network settings are back in force" in err
    assert config.read_bytes() == before
    assert (box.root / "etc/netplan/90-appliance.yaml").read_text() == netplan_before
    wait_for(lambda: dhcp_address(box), "the DHCP lease again after the revert", SETTLE)
    assert f"{STATIC}/24" not in [a.value for a in link(box).addresses]


def test_try_confirmed_keeps_the_new_settings(box, config, target):
    assert tool(config, target, "apply").returncode == 0
    trying = subprocess.Popen(
        [str(SERVICE_TOOL), "--config", str(config), "network", "try", "--dhcp", "off", "--address",
         f"{STATIC}/24,fd51::50/64", "--gateway4", "10.251.1.1", "--dns", "10.251.1.2", "--ntp", "10.251.1.3",
         "--hostname", "ct-archive-2", "--timeout", "60", *target],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: static_in_force(box), "the static address in force", SETTLE)
        out, err = trying.communicate("yes\n", timeout=60)
    finally:
        if trying.poll() is None:
            trying.kill()
    assert trying.returncode == 0, err
    network = tomllib.loads(config.read_text())["network"]
    assert (network["dhcp"], network["addresses"]) == (False, [f"{STATIC}/24", "fd51::50/64"])
    assert static_in_force(box)
    assert system_bus.run(lambda bus: bus.hostnames(), box.bus_address) == ("ct-archive-2", "ct-archive-2")
    index = link(box).index
    dns = system_bus.run(lambda bus: bus.link_dns(index), box.bus_address)[0]
    assert dns == ["10.251.1.2"]
    # NW-08: the installer's NTP server, from the timesyncd drop-in; DHCP's is not used any more.
    ntp = system_bus.run(lambda bus: bus.ntp_state(), box.bus_address)
    assert (ntp.system_servers, ntp.link_servers) == (("10.251.1.3",), ())
    shown = json.loads(tool(config, target, "show", "--json").stdout)
    assert shown["configured"]["addresses"] == [f"{STATIC}/24", "fd51::50/64"]
    assert f"{STATIC}/24" in shown["actual"]["addresses"] and shown["actual"]["dhcp"] is False
    assert shown["actual"]["hostname"] == "ct-archive-2" and shown["actual"]["dns_servers"] == ["10.251.1.2"]
    assert "synchronized" in shown["actual"]["ntp_server"]
    text = tool(config, target, "show").stdout
    assert "addresses" in text and f"{STATIC}/24" in text and "ct-archive-2" in text


def test_invalid_settings_are_refused_before_anything_changes(box, config, target):
    before = config.read_bytes()
    result = tool(config, target, "set", "--dhcp", "off")  # no address
    assert result.returncode == 1 and "network.addresses" in result.stderr
    result = tool(config, target, "set", "--dhcp", "off", "--address", "169.254.7.7/16")
    assert result.returncode == 1 and "NW-07" in result.stderr
    result = tool(config, target, "set", "--interface", "nosuch0", "--dns", "10.251.1.2")  # valid, but not there
    assert result.returncode == 1 and "network.interface" in result.stderr and "is restored" in result.stderr
    assert config.read_bytes() == before
    assert not (box.root / "etc/netplan/90-appliance.yaml").exists()
