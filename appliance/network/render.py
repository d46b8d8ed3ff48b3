"""`[network]` as the box's persistent configuration, as text (`system_files.py` writes it).

netplan 0.106 renders the interface for systemd-networkd; what it cannot express goes into a
networkd drop-in for the file it generates and into a timesyncd drop-in. The machine name,
the hosts mapping and the time zone are plain files. Persisting the installer's values as
configuration is what keeps them across networkd reloads and reboots; runtime D-Bus settings
are lost on either (platform findings §2).

Installer values override DHCP's parameter by parameter (NW-06): each one set switches off
only its DHCP/RA counterpart.
"""

from __future__ import annotations

import json

from appliance.config.model import Config

# netplan's ID for our interface: it names the generated 10-netplan-<ID>.network, which the
# networkd drop-in must match. Fixed, so a renamed NIC leaves no stale drop-in behind.
NETPLAN_ID = "appliance"

HEADER = "Written by the appliance from [network] in /etc/appliance/appliance.toml; change it with service-tool."
HOSTS_BEGIN = "# BEGIN appliance: network.hosts in /etc/appliance/appliance.toml (service-tool), do not edit"
HOSTS_END = "# END appliance"


def netplan_yaml(config: Config, interface: str) -> str:
    """netplan YAML for the one managed interface (NW-01); `interface` is its resolved name."""
    net = config.network
    ethernet: dict = {
        "match": {"name": interface},
        "dhcp4": net.dhcp,  # NW-03: DHCPv4, DHCPv6 and router advertisements together
        "dhcp6": net.dhcp,
        "accept-ra": net.dhcp,
        "ipv6-privacy": False,  # NW-11 (netplan writes nothing for false: see networkd_dropin)
        "link-local": ["ipv6"],  # NW-07: no IPv4 link-local address, even when DHCP fails
    }
    if net.dhcp:
        overrides = {
            "use-dns": not net.dns_servers,
            "use-domains": not net.search_domains,  # networkd's default ignores DHCP's domain (NW-04)
            "use-ntp": not net.ntp_servers,
            "use-hostname": not net.hostname,
            "use-mtu": not net.mtu,
            "send-hostname": True,  # NW-05
        }
        if net.hostname:
            overrides["hostname"] = net.hostname
        # networkd has one [DHCP] section for both families, so netplan insists they agree.
        ethernet["dhcp4-overrides"] = ethernet["dhcp6-overrides"] = overrides
    else:
        ethernet["addresses"] = list(net.addresses)
    routes = []
    for gateway in filter(None, (net.gateway4, net.gateway6)):
        route: dict = {"to": "default", "via": gateway}
        if net.dhcp:
            # The subnet is DHCP's; on-link lets networkd add the route before the lease is there.
            route["on-link"] = True
        routes.append(route)
    if routes:
        ethernet["routes"] = routes
    nameservers = {"addresses": list(net.dns_servers), "search": list(net.search_domains)}
    if any(nameservers.values()):
        ethernet["nameservers"] = {key: value for key, value in nameservers.items() if value}
    if net.mtu:
        ethernet["mtu"] = net.mtu
    document = {"network": {"version": 2, "renderer": "networkd", "ethernets": {NETPLAN_ID: ethernet}}}
    return "\n".join([f"# {HEADER}", *_yaml(document)]) + "\n"


def _yaml(mapping: dict, indent: int = 0) -> list[str]:
    """Block mappings; every other value in JSON, which is YAML's flow style."""
    lines = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            lines += [" " * indent + f"{key}:", *_yaml(value, indent + 2)]
        else:
            lines.append(" " * indent + f"{key}: {json.dumps(value)}")
    return lines


def networkd_dropin(config: Config) -> str:
    """A drop-in for netplan's 10-netplan-<ID>.network: the settings netplan 0.106 has no key for."""
    net = config.network
    lines = [f"# {HEADER}", "[Network]", "IPv6PrivacyExtensions=no"]  # NW-11: no temporary addresses
    if net.dhcp:
        # A static gateway replaces DHCP's and the router advertisements' default route only,
        # not DHCP's static routes (NW-04 lists them apart); netplan's use-routes drops both.
        lines += ["", "[DHCPv4]", f"UseGateway={_yes(not net.gateway4)}"]
        lines += ["", "[IPv6AcceptRA]",  # netplan's dhcp6-overrides leave RAs alone
                  f"UseDNS={_yes(not net.dns_servers)}",
                  f"UseDomains={_yes(not net.search_domains)}",
                  f"UseGateway={_yes(not net.gateway6)}",
                  f"UseMTU={_yes(not net.mtu)}"]
    return "\n".join(lines) + "\n"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def timesyncd_dropin(config: Config) -> str:
    """NTP servers (NW-08); netplan has no NTP key. Links' servers from DHCP come on top unless
    installer servers switched them off (use-ntp)."""
    servers = " ".join(config.network.ntp_servers)
    # NW-04: no servers means none, not Debian's compiled-in pool.
    return f"# {HEADER}\n[Time]\nNTP={servers}\nFallbackNTP=\n"


def hostname_file(config: Config) -> str:
    """/etc/hostname (NW-12); only written when the installer set a machine name."""
    return f"{config.network.hostname}\n"


def hosts_file(current: str, config: Config) -> str:
    """/etc/hosts with our managed block (NW-10) replaced; other lines stay as they are."""
    kept, inside = [], False
    for line in current.splitlines():
        if line == HOSTS_BEGIN:
            inside = True
        elif inside and line == HOSTS_END:
            inside = False
        elif not inside:
            kept.append(line)
    mappings = config.network.hosts
    if mappings:
        kept += [HOSTS_BEGIN, *(f"{m.address}\t{m.name}" for m in mappings), HOSTS_END]
    return "".join(line + "\n" for line in kept)


def timezone_file(config: Config) -> str:
    """Debian's /etc/timezone."""
    return f"{config.network.time_zone}\n"


def localtime_target(config: Config) -> str:
    """Where /etc/localtime points; relative, as timedated writes it, so it holds under any root."""
    return f"../usr/share/zoneinfo/{config.network.time_zone}"
