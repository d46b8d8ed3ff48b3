"""[network] rendered for the box (NW-03..NW-13, TL-03, TL-04): the netplan YAML goes through the
real `netplan generate --root-dir` and the assertions are on the .network file networkd would
read; the other files are written under a scratch root, never the host's /etc.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from appliance.config import load_dict
from appliance.config.model import Config
from appliance.errors import ConfigError
from appliance.network import render
from appliance.network.netplan import NetplanError, generate_network
from appliance.network.system_files import (HOSTNAME, HOSTS, LOCALTIME, NETPLAN_YAML, NETWORKD_DROPIN,
                                            TIMESYNCD_DROPIN, TIMEZONE, write_system_files)
from helpers import REPO

NIC = "enp0s3"
EVERY_OVERRIDE = {"dns_servers": ["10.0.4.53", "2001:db8:4::53"], "search_domains": ["radiology.example"],
                  "ntp_servers": ["ntp.radiology.example", "10.0.4.123"], "hostname": "archive-1", "mtu": 1400,
                  "gateway4": "10.0.4.1", "gateway6": "fe80::1"}
STATIC = {"dhcp": False, "addresses": ["10.0.4.20/24", "2001:db8:4::20/64"], "gateway4": "10.0.4.1",
          "gateway6": "2001:db8:4::1", "dns_servers": ["10.0.4.53"], "search_domains": ["radiology.example"]}


def config(**network) -> Config:
    return load_dict({"network": network})


def sections(text: str) -> list[tuple[str, dict[str, list[str]]]]:
    """A systemd unit-style file as (section, {key: [values...]}) in file order."""
    found = []
    for line in text.splitlines():
        if line.startswith("["):
            found.append((line.strip("[]"), {}))
        elif "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found[-1][1].setdefault(key, []).append(value)
    return found


def section(text: str, name: str) -> dict[str, list[str]]:
    matches = [values for found, values in sections(text) if found == name]
    assert len(matches) == 1, f"{len(matches)} [{name}] sections in:\n{text}"
    return matches[0]


def networkd(cfg: Config) -> str:
    """The .network file netplan generates from our YAML."""
    return generate_network(render.netplan_yaml(cfg, NIC))


def routes(text: str) -> list[tuple[str, str, str]]:
    return [(v["Destination"][0], v["Gateway"][0], v.get("GatewayOnLink", ["no"])[0])
            for name, v in sections(text) if name == "Route"]


# --- the .network file netplan generates --------------------------------------------------------

def test_default_is_dhcp_on_both_families_without_ipv4_link_local():  # NW-03, NW-07
    text = networkd(config())
    assert section(text, "Match") == {"Name": [NIC]}
    network = section(text, "Network")
    assert network["DHCP"] == ["yes"] and network["IPv6AcceptRA"] == ["yes"]
    assert network["LinkLocalAddressing"] == ["ipv6"]
    assert not {"Address", "DNS", "Domains"} & network.keys()
    dhcp = section(text, "DHCP")
    # Nothing set by the installer: every DHCP value is used, DHCP's domain name too (NW-04).
    assert "false" not in sum(dhcp.values(), [])
    assert dhcp["UseDomains"] == ["true"]
    assert routes(text) == [] and "MTUBytes" not in text


def test_installer_values_override_dhcp_ones():  # NW-05, NW-06
    text = networkd(config(**EVERY_OVERRIDE))
    network = section(text, "Network")
    assert network["DHCP"] == ["yes"] and network["LinkLocalAddressing"] == ["ipv6"]
    assert network["DNS"] == ["10.0.4.53", "2001:db8:4::53"]
    assert network["Domains"] == ["radiology.example"]
    assert section(text, "Link")["MTUBytes"] == ["1400"]
    dhcp = section(text, "DHCP")
    for key in ("UseDNS", "UseDomains", "UseNTP", "UseHostname", "UseMTU"):
        assert dhcp[key] == ["false"], key
    assert dhcp["Hostname"] == ["archive-1"]  # NW-05: sent as the DHCP host name option
    assert "SendHostname" not in dhcp  # networkd's default: yes
    # The subnet comes from DHCP, so the static default routes are on-link.
    assert routes(text) == [("0.0.0.0/0", "10.0.4.1", "true"), ("::/0", "fe80::1", "true")]


@pytest.mark.parametrize("key, value, switched_off", [
    ("dns_servers", ["10.0.4.53"], "UseDNS"),
    ("search_domains", ["radiology.example"], "UseDomains"),
    ("ntp_servers", ["ntp.radiology.example"], "UseNTP"),
    ("hostname", "archive-1", "UseHostname"),
    ("mtu", 9000, "UseMTU"),
])
def test_each_installer_value_switches_off_only_its_dhcp_counterpart(key, value, switched_off):  # NW-06
    dhcp = section(networkd(config(**{key: value})), "DHCP")
    assert [k for k, v in dhcp.items() if v == ["false"]] == [switched_off]


def test_static_addresses_gateways_and_dns_without_dhcp():  # NW-03, NW-11
    text = networkd(config(**STATIC))
    network = section(text, "Network")
    assert "DHCP" not in network and network["IPv6AcceptRA"] == ["no"]
    assert network["LinkLocalAddressing"] == ["ipv6"]
    assert network["Address"] == ["10.0.4.20/24", "2001:db8:4::20/64"]
    assert network["DNS"] == ["10.0.4.53"] and network["Domains"] == ["radiology.example"]
    assert routes(text) == [("0.0.0.0/0", "10.0.4.1", "no"), ("::/0", "2001:db8:4::1", "no")]
    assert "DHCP" not in dict(sections(text))


def test_static_ipv6_only_with_a_link_local_router():
    text = networkd(config(dhcp=False, addresses=["2001:db8:4::20/64"], gateway6="fe80::1", mtu=1500))
    assert section(text, "Network")["Address"] == ["2001:db8:4::20/64"]
    assert routes(text) == [("::/0", "fe80::1", "no")]
    assert section(text, "Link")["MTUBytes"] == ["1500"]


VALID = [
    ("dhcp-default", {}),
    ("dhcp-everything", {**EVERY_OVERRIDE, "time_zone": "Europe/Berlin",
                         "hosts": [{"name": "pacs", "address": "10.0.4.40"}, {"name": "pacs", "address": "2001:db8::40"}]}),
    ("dhcp-gateway6-global", {"gateway6": "2001:db8:4::1"}),
    ("static", STATIC),
    ("static-v4-only", {"dhcp": False, "addresses": ["192.168.1.10/24"], "gateway4": "192.168.1.1"}),
    ("static-host-route", {"dhcp": False, "addresses": ["10.9.9.9/32", "2001:db8::9/128"]}),
    ("static-two-v4", {"dhcp": False, "addresses": ["10.0.4.20/24", "10.0.5.20/24"], "gateway4": "10.0.5.1"}),
    ("jumbo", {"mtu": 9000, "ntp_servers": ["2001:db8::123"]}),
    ("link-local-dns", {"dns_servers": ["fe80::53"], "search_domains": ["radiology.example."]}),
]


@pytest.mark.parametrize("network", [c[1] for c in VALID], ids=[c[0] for c in VALID])
def test_every_accepted_configuration_passes_netplan_generate(network):
    assert section(networkd(config(**network)), "Match") == {"Name": [NIC]}


def test_netplan_refusals_name_the_problem():
    yaml = render.netplan_yaml(config(), NIC)
    # networkd has one [DHCP] section, so the two families' overrides must agree (findings §4).
    broken = yaml.replace("use-dns: true", "use-dns: false", 1)
    with pytest.raises(NetplanError, match="use-dns has the same value in both dhcp4_overrides and dhcp6_overrides"):
        generate_network(broken)
    with pytest.raises(NetplanError, match=r"^90-appliance\.yaml:\d+:\d+: .*malformed address '10\.0\.4\.300/24'"):
        generate_network(yaml.replace('match:', 'addresses: ["10.0.4.300/24"]\n      match:'))


# --- the box's default netplan file -------------------------------------------------------------

def test_default_netplan_file_is_dhcp_on_any_ethernet_nic_like_the_default_config():
    default = (REPO / "system" / "netplan" / NETPLAN_YAML.name).read_text()
    text = generate_network(default)
    assert section(text, "Match") == {"Name": ["e[nt]*"]}  # enp0s3, eno1, ens18, eth0
    # What the installer gets by applying the default [network] to the NIC the pattern found.
    assert text == generate_network(render.netplan_yaml(Config(), "e[nt]*"))


# --- the files under a root ----------------------------------------------------------------------

HOSTS_BEFORE = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n10.1.1.1 site-entry  # installer's own\n"


def test_system_files_under_a_root(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / HOSTS).write_text(HOSTS_BEFORE)
    cfg = config(**EVERY_OVERRIDE, time_zone="Europe/Berlin",
                 hosts=[{"name": "pacs.radiology.example", "address": "10.0.4.40"},
                        {"name": "viewer", "address": "2001:db8:4::50"}])
    write_system_files(cfg, NIC, tmp_path)

    yaml = tmp_path / NETPLAN_YAML
    assert yaml.read_text() == render.netplan_yaml(cfg, NIC)
    assert stat.S_IMODE(yaml.stat().st_mode) == 0o600
    assert section((tmp_path / TIMESYNCD_DROPIN).read_text(), "Time") == {
        "NTP": ["ntp.radiology.example 10.0.4.123"], "FallbackNTP": [""]}
    assert (tmp_path / HOSTNAME).read_text() == "archive-1\n"
    assert (tmp_path / HOSTS).read_text() == HOSTS_BEFORE + (
        f"{render.HOSTS_BEGIN}\n10.0.4.40\tpacs.radiology.example\n2001:db8:4::50\tviewer\n{render.HOSTS_END}\n")
    assert (tmp_path / TIMEZONE).read_text() == "Europe/Berlin\n"
    assert os.readlink(tmp_path / LOCALTIME) == "../usr/share/zoneinfo/Europe/Berlin"
    # Read-only look at the host: from /etc the link reaches a real zone file.
    assert Path("/etc", os.readlink(tmp_path / LOCALTIME)).resolve().read_bytes()[:4] == b"TZif"
    assert not [p for p in tmp_path.rglob(".*.tmp")]


def cat_config(root: Path, name: str) -> str:
    """The configuration as the daemon reading `name` would see it under `root`, drop-ins included."""
    return subprocess.run(["systemd-analyze", f"--root={root}", "cat-config", name],
                          capture_output=True, text=True, check=True).stdout


def test_dropins_are_where_networkd_and_timesyncd_read_them(tmp_path):
    """The networkd drop-in's directory must match the file name netplan generates, or networkd
    would never see it."""
    write_system_files(config(**EVERY_OVERRIDE), NIC, tmp_path)
    subprocess.run(["/usr/sbin/netplan", "generate", "--root-dir", str(tmp_path)], check=True)
    merged = cat_config(tmp_path, f"systemd/network/10-netplan-{render.NETPLAN_ID}.network")
    assert f"# {tmp_path / NETWORKD_DROPIN}" in merged
    assert [v for name, v in sections(merged) if name == "Network"][-1] == {"IPv6PrivacyExtensions": ["no"]}  # NW-11
    # Router advertisements give DNS, domains, a router and an MTU too; installer values win (NW-06).
    assert section(merged, "IPv6AcceptRA") == {"UseDNS": ["no"], "UseDomains": ["no"], "UseGateway": ["no"],
                                               "UseMTU": ["no"]}
    assert section(merged, "DHCPv4") == {"UseGateway": ["no"]}  # DHCP's other routes stay
    timesyncd = cat_config(tmp_path, "systemd/timesyncd.conf")
    assert f"# {tmp_path / TIMESYNCD_DROPIN}" in timesyncd and "NTP=ntp.radiology.example 10.0.4.123" in timesyncd


def test_networkd_dropin_follows_the_mode():
    dhcp = render.networkd_dropin(config())
    assert section(dhcp, "IPv6AcceptRA") == {"UseDNS": ["yes"], "UseDomains": ["yes"], "UseGateway": ["yes"],
                                             "UseMTU": ["yes"]}
    assert section(dhcp, "DHCPv4") == {"UseGateway": ["yes"]}
    static = render.networkd_dropin(config(**STATIC))
    assert [name for name, _ in sections(static)] == ["Network"]
    assert section(static, "Network") == {"IPv6PrivacyExtensions": ["no"]}


def test_rewriting_replaces_the_managed_parts_and_keeps_the_rest(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / HOSTNAME).write_text("debian\n")
    (tmp_path / HOSTS).write_text(HOSTS_BEFORE)
    (tmp_path / HOSTS).chmod(0o644)
    write_system_files(config(hosts=[{"name": "pacs", "address": "10.0.4.40"}]), NIC, tmp_path)
    # An installer's line added below our block survives the next write.
    (tmp_path / HOSTS).write_text((tmp_path / HOSTS).read_text() + "10.2.2.2 later\n")
    write_system_files(config(hosts=[{"name": "viewer", "address": "10.0.4.50"}]), NIC, tmp_path)
    assert (tmp_path / HOSTS).read_text() == HOSTS_BEFORE + "10.2.2.2 later\n" + (
        f"{render.HOSTS_BEGIN}\n10.0.4.50\tviewer\n{render.HOSTS_END}\n")
    assert stat.S_IMODE((tmp_path / HOSTS).stat().st_mode) == 0o644
    write_system_files(config(), NIC, tmp_path)
    assert (tmp_path / HOSTS).read_text() == HOSTS_BEFORE + "10.2.2.2 later\n"
    # hostname = "" keeps the box's name; no NTP servers means none, not Debian's pool (NW-04).
    assert (tmp_path / HOSTNAME).read_text() == "debian\n"
    assert section((tmp_path / TIMESYNCD_DROPIN).read_text(), "Time") == {"NTP": [""], "FallbackNTP": [""]}
    assert os.readlink(tmp_path / LOCALTIME) == "../usr/share/zoneinfo/UTC"
    assert (tmp_path / TIMEZONE).read_text() == "UTC\n"


def test_a_yaml_netplan_refuses_is_never_written(tmp_path):
    with pytest.raises(NetplanError, match="Invalid name 'é0'"):
        write_system_files(config(), "é0", tmp_path)  # ASCII only for netplan, any byte for Linux
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError):
        write_system_files(config(), "", tmp_path)  # "" is for auto-detection, before rendering


# --- refused values (TL-04) ------------------------------------------------------------------------

INVALID = [
    ("address-bad", {"dhcp": False, "addresses": ["10.0.4.300/24"]}, "network.addresses"),
    ("address-no-prefix", {"dhcp": False, "addresses": ["10.0.4.20"]}, "network.addresses"),
    ("address-prefix-too-long", {"dhcp": False, "addresses": ["10.0.4.20/33"]}, "network.addresses"),
    ("address-link-local", {"dhcp": False, "addresses": ["169.254.10.20/16"]}, "network.addresses"),  # NW-07
    ("address-network", {"dhcp": False, "addresses": ["10.0.4.0/24"]}, "network.addresses"),
    ("address-broadcast", {"dhcp": False, "addresses": ["10.0.4.255/24"]}, "network.addresses"),
    ("address-twice", {"dhcp": False, "addresses": ["10.0.4.20/24", "10.0.4.20/16"]}, "network.addresses"),
    ("address-loopback", {"dhcp": False, "addresses": ["127.0.0.2/8"]}, "network.addresses"),
    ("static-without-address", {"dhcp": False}, "network.addresses"),
    ("dhcp-with-address", {"addresses": ["10.0.4.20/24"]}, "network.addresses"),
    ("gateway-link-local", {"gateway4": "169.254.0.1"}, "network.gateway4"),  # NW-07
    ("gateway4-is-v6", {"gateway4": "2001:db8::1"}, "network.gateway4"),
    ("gateway6-is-v4", {"gateway6": "10.0.4.1"}, "network.gateway6"),
    ("gateway-name", {"gateway4": "router.example"}, "network.gateway4"),
    ("gateway4-no-v4-address", {"dhcp": False, "addresses": ["2001:db8::20/64"], "gateway4": "10.0.4.1"},
     "network.gateway4"),
    ("gateway6-no-v6-address", {"dhcp": False, "addresses": ["10.0.4.20/24"], "gateway6": "2001:db8::1"},
     "network.gateway6"),
    ("gateway4-other-subnet", {"dhcp": False, "addresses": ["10.0.4.20/24"], "gateway4": "10.0.5.1"},
     "network.gateway4"),
    ("dns-name", {"dns_servers": ["dns.example"]}, "network.dns_servers"),
    ("dns-link-local", {"dns_servers": ["10.0.4.53", "169.254.169.254"]}, "network.dns_servers"),
    ("dns-not-list", {"dns_servers": "10.0.4.53"}, "network.dns_servers"),
    ("dns-zone-index", {"dns_servers": ["fe80::53%enp0s3"]}, "network.dns_servers"),  # netplan refuses it
    ("gateway6-zone-index", {"gateway6": "fe80::1%enp0s3"}, "network.gateway6"),
    ("search-bad", {"search_domains": ["radiology example"]}, "network.search_domains"),
    ("ntp-bad", {"ntp_servers": ["ntp_server"]}, "network.ntp_servers"),
    ("ntp-link-local", {"ntp_servers": ["169.254.1.1"]}, "network.ntp_servers"),
    ("ntp-mistyped-ip", {"ntp_servers": ["10.0.4.256"]}, "network.ntp_servers"),
    ("hostname-underscore", {"hostname": "archive_1"}, "network.hostname"),
    ("hostname-dotted", {"hostname": "archive.radiology.example"}, "network.hostname"),
    ("hostname-long", {"hostname": "a" * 64}, "network.hostname"),
    ("hostname-hyphen", {"hostname": "-archive"}, "network.hostname"),
    ("mtu-small", {"mtu": 1000}, "network.mtu"),
    ("mtu-negative", {"mtu": -1}, "network.mtu"),
    ("zone-typo", {"time_zone": "Europe/Berln"}, "network.time_zone"),
    ("zone-localtime", {"time_zone": "localtime"}, "network.time_zone"),
    ("zone-path", {"time_zone": "../../etc/passwd"}, "network.time_zone"),
    ("zone-empty", {"time_zone": ""}, "network.time_zone"),
    ("dhcp-string", {"dhcp": "no"}, "network.dhcp"),
    ("hosts-no-name", {"hosts": [{"address": "10.0.4.40"}]}, "network.hosts[0].name"),
    ("hosts-no-address", {"hosts": [{"name": "pacs"}]}, "network.hosts[0].address"),
    ("hosts-bad-address", {"hosts": [{"name": "pacs", "address": "pacs.example"}]}, "network.hosts[0].address"),
    ("hosts-bad-name", {"hosts": [{"name": "pacs server", "address": "10.0.4.40"}]}, "network.hosts[0].name"),
    ("hosts-link-local", {"hosts": [{"name": "pacs", "address": "169.254.4.40"}]}, "network.hosts[0].address"),
    ("hosts-ambiguous", {"hosts": [{"name": "pacs", "address": "10.0.4.40"}, {"name": "PACS", "address": "10.0.4.41"}]},
     "network.hosts[1].name"),
]


@pytest.mark.parametrize("network, key", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_network_value_is_refused_naming_the_key(network, key):
    with pytest.raises(ConfigError) as caught:
        config(**network)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key}: ")


def test_refusals_say_what_to_do():
    with pytest.raises(ConfigError, match="set dhcp = false"):
        config(addresses=["10.0.4.20/24"])
    with pytest.raises(ConfigError, match="NW-07"):
        config(dhcp=False, addresses=["169.254.10.20/16"])
    with pytest.raises(ConfigError, match="needs a prefix length"):
        config(dhcp=False, addresses=["10.0.4.20"])
