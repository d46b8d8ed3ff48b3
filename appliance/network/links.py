"""The managed interface at run time, through netlink (pyroute2): which one it is (NW-01), what
it has now, and its static addresses, default gateways and MTU.

Every function takes `netns`, a name under /run/netns (None: this process's namespace), so the
tests run the same code against the interface of a namespace they created.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic.ethtool import NlEthtool
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_PERMANENT

from appliance.errors import ConfigError

KEY = "network.interface"
ARPHRD_ETHER = 1
# A NIC's driver reports no link kind; a container's (systemd-nspawn, the tests' lab) is a veth.
# Bridges, bonds, VLANs, tun/tap, ifb and the like are software on top and never the box's NIC.
_NIC_KINDS = (None, "veth")
_FOREVER = 0xFFFFFFFF  # IFA_CACHEINFO lifetime "forever"
_UNKNOWN_SPEED = (0, 0xFFFFFFFF)  # ethtool: no link, or the driver cannot tell
_DUPLEX = {0: "half", 1: "full"}


@dataclass(frozen=True)
class Address:
    address: str
    prefixlen: int
    dynamic: bool  # a finite lifetime (DHCP, SLAAC): not IFA_F_PERMANENT; else static
    lifetime: int | None  # seconds of validity left; None = forever

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefixlen}"


@dataclass(frozen=True)
class LinkState:
    name: str
    index: int
    operstate: str  # "UP", "DOWN", "LOWERLAYERDOWN", ...
    mtu: int
    mac: str
    addresses: tuple[Address, ...]
    gateways: tuple[str, ...]  # next hops of the default routes (IPv4 and IPv6)
    speed: int | None  # Mbit/s; None when unknown (no carrier, or the driver cannot tell)
    duplex: str | None  # "full", "half"; None when unknown

    @property
    def link_problem(self) -> str | None:
        """NW-01: Ethernet 10BaseT or 100BaseT, full duplex; anything else is reported."""
        if self.speed in (10, 100) and self.duplex == "full":
            return None
        speed = f"{self.speed} Mbit/s" if self.speed else "unknown speed"
        return f"{speed}, {self.duplex or 'unknown'} duplex: the appliance is specified for " \
               f"10BaseT or 100BaseT, full duplex (NW-01)"


def find_interface(configured: str, netns: str | None = None) -> str:
    """The managed interface's name: `configured` if it exists, or for "" the one Ethernet
    interface there is. ConfigError naming network.interface if there is none or several."""
    with IPRoute(netns=netns) as ipr:
        found = ipr.get_links()
    names = [link.get("ifname") for link in found]
    if configured:
        if configured not in names:
            raise ConfigError(KEY, f"no interface {configured!r} on this host (it has {', '.join(names)})")
        return configured
    nics = sorted(link.get("ifname") for link in found if _is_nic(link))
    if len(nics) != 1:
        has = f"{len(nics)}: {', '.join(nics)}" if nics else "none"
        raise ConfigError(KEY, f'"" means the only Ethernet interface, but this host has {has}; name one')
    return nics[0]


def _is_nic(link) -> bool:
    info = link.get("IFLA_LINKINFO")
    kind = info.get("IFLA_INFO_KIND") if info else None
    return link["ifi_type"] == ARPHRD_ETHER and kind in _NIC_KINDS


def read_state(ifname: str, netns: str | None = None) -> LinkState:
    """What the interface has now: link, addresses, default routes, speed and duplex."""
    with IPRoute(netns=netns) as ipr:
        index = _index(ipr, ifname)
        (link,) = ipr.get_links(index)
        addresses = tuple(address_of(msg) for msg in ipr.get_addr(index=index))
        gateways = tuple(route.get("RTA_GATEWAY") for family in (socket.AF_INET, socket.AF_INET6)
                         for route in ipr.get_routes(family=family, oif=index, dst_len=0, table=254)
                         if route.get("RTA_GATEWAY"))
    speed, duplex = _link_mode(ifname, netns)
    return LinkState(name=ifname, index=index, operstate=link.get("IFLA_OPERSTATE"), mtu=link.get("IFLA_MTU"),
                     mac=link.get("IFLA_ADDRESS"), addresses=addresses, gateways=gateways, speed=speed,
                     duplex=duplex)


def address_of(msg) -> Address:
    """An RTM_NEWADDR or RTM_DELADDR message (pyroute2's ifaddrmsg) as an Address."""
    flags = msg.get("IFA_FLAGS") or msg["flags"]  # the attribute has all 32 bits, the header 8
    valid = (msg.get("IFA_CACHEINFO") or {}).get("ifa_valid", _FOREVER)
    # IFA_LOCAL is the interface's own IPv4 address (IFA_ADDRESS is the peer's on point-to-point).
    address = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
    return Address(address, msg["prefixlen"], dynamic=not flags & IFA_F_PERMANENT,
                   lifetime=None if valid == _FOREVER else valid)


def _link_mode(ifname: str, netns: str | None) -> tuple[int | None, str | None]:
    """Speed and duplex from the ethtool netlink family; (None, None) when the driver has none."""
    ethtool = NlEthtool(netns=netns)
    try:
        (mode,) = ethtool.get_linkmode(ifname)
    except NetlinkError:  # EOPNOTSUPP: no link settings (e.g. loopback)
        return None, None
    finally:
        ethtool.close()
    speed = mode.get("ETHTOOL_A_LINKMODES_SPEED")
    return (None if speed in _UNKNOWN_SPEED else speed), _DUPLEX.get(mode.get("ETHTOOL_A_LINKMODES_DUPLEX"))


def _index(ipr, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise ConfigError(KEY, f"no interface {ifname!r} on this host")
    return found[0]
