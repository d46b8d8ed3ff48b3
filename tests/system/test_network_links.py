"""appliance.network.links against the real kernel, in the lab's box namespace: which interface
is managed (NW-01), its state read through netlink and ethtool, static addresses, gateways and
MTU programmed and read back (also with iproute2, so a reading mistake cannot hide a writing one),
and a DHCP lease told apart from static addresses."""

from __future__ import annotations

import dataclasses
import json

import pytest

from appliance.errors import ConfigError
from appliance.network import links
from helpers import wait_for
import netlab
from netlab import BOX, SERVER_V4, lab  # noqa: F401  (lab: the fixture)


def with_ra_route(state: links.LinkState) -> links.LinkState | None:
    return state if any(g.startswith("fe80:") for g in state.gateways) else None


def ip_json(lab, *args: str):
    return json.loads(lab.run(lab.client, "ip", "-j", *args).stdout)


def test_the_one_ethernet_interface_is_found_and_software_links_do_not_count(lab):
    lab.run(lab.client, "ip", "link", "add", "br0", "type", "bridge")
    lab.run(lab.client, "ip", "link", "add", "ifb0", "type", "ifb")
    assert links.find_interface("", netns=lab.client) == BOX
    assert links.find_interface("br0", netns=lab.client) == "br0"  # named: the installer's choice


def test_several_ethernet_interfaces_need_the_key(lab):
    lab.run(lab.client, "ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth2")
    with pytest.raises(ConfigError) as refused:
        links.find_interface("", netns=lab.client)
    assert refused.value.key == "network.interface"
    assert "this host has 3: box0, eth1, eth2; name one" in str(refused.value)


def test_no_ethernet_interface_or_a_missing_one_names_the_key(lab):
    lab.run(lab.client, "ip", "link", "del", BOX)  # its peer goes with it
    lab.run(lab.client, "ip", "link", "add", "br0", "type", "bridge")
    with pytest.raises(ConfigError, match=r"^network\.interface: .*this host has none; name one"):
        links.find_interface("", netns=lab.client)
    with pytest.raises(ConfigError, match=r"^network\.interface: no interface 'eth0' on this host \(it has lo, br0\)"):
        links.find_interface("eth0", netns=lab.client)


def test_link_state_and_what_nw01_reports(lab):
    state = links.read_state(BOX, netns=lab.client)
    (link,) = ip_json(lab, "link", "show", "dev", BOX)
    assert (state.name, state.index, state.operstate, state.mtu, state.mac) == \
        (BOX, link["ifindex"], "UP", link["mtu"], link["address"])
    # A veth says 10000 Mbit/s full duplex: not what the appliance is specified for.
    assert (state.speed, state.duplex) == (10000, "full")
    assert "10000 Mbit/s, full duplex" in state.link_problem and "NW-01" in state.link_problem
    assert dataclasses.replace(state, speed=100).link_problem is None
    assert dataclasses.replace(state, speed=10).link_problem is None
    assert "half duplex" in dataclasses.replace(state, speed=100, duplex="half").link_problem
    assert "unknown speed, unknown duplex" in dataclasses.replace(state, speed=None, duplex=None).link_problem


def test_static_addresses_gateways_and_mtu_applied_and_read_back(lab):
    changes = netlab.apply_static(BOX, ["10.251.2.10/24", "fd52::10/64"], ["10.251.2.1", "fd52::1"], mtu=1400,
                                 netns=lab.client)
    assert changes == ["MTU 1500 -> 1400", "added 10.251.2.10/24", "added fd52::10/64", "default gateway 10.251.2.1",
                       "default gateway fd52::1"]
    assert netlab.apply_static(BOX, ["10.251.2.10/24", "fd52::10/64"], ["10.251.2.1", "fd52::1"], mtu=1400,
                              netns=lab.client) == []  # already so

    state = links.read_state(BOX, netns=lab.client)
    assert state.mtu == 1400
    ours = [a for a in state.addresses if not a.address.startswith("fe80:")]
    assert ours == [links.Address("10.251.2.10", 24, dynamic=False, lifetime=None),
                    links.Address("fd52::10", 64, dynamic=False, lifetime=None)]
    assert {"10.251.2.1", "fd52::1"} <= set(state.gateways)
    (link,) = ip_json(lab, "addr", "show", "dev", BOX)
    assert {(a["local"], a["prefixlen"], a["valid_life_time"]) for a in link["addr_info"] if a["scope"] == "global"} \
        == {("10.251.2.10", 24, 4294967295), ("fd52::10", 64, 4294967295)}
    assert [r["gateway"] for r in ip_json(lab, "route", "show", "default")] == ["10.251.2.1"]
    # NW-06: the installer's IPv6 gateway wins over the router advertisement's.
    (chosen,) = ip_json(lab, "-6", "route", "get", "2001:db8::1")
    assert chosen["gateway"] == "fd52::1"

    changes = netlab.apply_static(BOX, ["10.251.2.11/24"], ["10.251.2.254"], mtu=1500, netns=lab.client)
    assert changes == ["MTU 1400 -> 1500", "removed 10.251.2.10/24", "removed fd52::10/64", "added 10.251.2.11/24",
                       "default gateway 10.251.2.254", "removed default gateway fd52::1"]
    (link,) = ip_json(lab, "addr", "show", "dev", BOX)
    assert link["mtu"] == 1500
    assert [a["local"] for a in link["addr_info"] if a["scope"] == "global"] == ["10.251.2.11"]
    assert [r["gateway"] for r in ip_json(lab, "route", "show", "default")] == ["10.251.2.254"]
    assert "fd52::1" not in [r.get("gateway") for r in ip_json(lab, "-6", "route", "show", "default")]


def test_a_dhcp_lease_is_dynamic_and_static_programming_leaves_it_alone(lab):
    leased = lab.dhcp_client().wait_bound()
    assert netlab.apply_static(BOX, ["10.251.1.10/24"], ["10.251.1.254"], netns=lab.client) == \
        ["added 10.251.1.10/24", "default gateway 10.251.1.254"]

    state = wait_for(lambda: with_ra_route(links.read_state(BOX, netns=lab.client)), "dnsmasq's router advertisement")
    by_address = {a.address: a for a in state.addresses}
    lease = by_address[leased]
    assert (lease.prefixlen, lease.dynamic) == (24, True)
    assert 0 < lease.lifetime <= 120  # dnsmasq's 2 min lease
    assert by_address["10.251.1.10"] == links.Address("10.251.1.10", 24, dynamic=False, lifetime=None)
    # The lease's router, the installer's, and the IPv6 one from the RA (a link-local address).
    assert {SERVER_V4, "10.251.1.254"} <= set(state.gateways)
    (chosen,) = ip_json(lab, "route", "get", "203.0.113.1")
    assert chosen["gateway"] == "10.251.1.254"  # NW-06: the installer's wins

    assert netlab.apply_static(BOX, [], netns=lab.client) == ["removed 10.251.1.10/24",
                                                            "removed default gateway 10.251.1.254"]
    assert [a.address for a in links.read_state(BOX, netns=lab.client).addresses if "." in a.address] == [leased]
    (chosen,) = ip_json(lab, "route", "get", "203.0.113.1")
    assert chosen["gateway"] == SERVER_V4
