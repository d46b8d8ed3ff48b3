"""Hooks for `pyroute2-dhcp-client` in the lab's box namespace: they configure a lease as
systemd-networkd does on the box, the address with the lease's lifetime (so not
IFA_F_PERMANENT) and a default route through the lease's router, and remove both when the lease
ends (refused, expired or released)."""

from __future__ import annotations

import errno

from pyroute2.dhcp.hooks import Trigger, hook
from pyroute2.dhcp.leases import Lease
from pyroute2.iproute.linux import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

RTPROT_DHCP = 16  # systemd-networkd's marks on the default route of a lease
NETWORKD_METRIC = 1024


@hook(Trigger.BOUND, Trigger.RENEWED, Trigger.REBOUND)
async def configure(lease: Lease) -> None:
    async with AsyncIPRoute() as ipr:
        (index,) = await ipr.link_lookup(ifname=lease.interface)
        await ipr.addr("replace", index=index, address=lease.ip, prefixlen=lease.prefixlen,
                       valid_lft=lease.lease_time, preferred_lft=lease.lease_time)
        await ipr.route("replace", dst="0.0.0.0/0", gateway=lease.default_gateway, oif=index, proto=RTPROT_DHCP,
                        priority=NETWORKD_METRIC)


@hook(Trigger.UNBOUND, Trigger.EXPIRED)
async def unconfigure(lease: Lease) -> None:
    async with AsyncIPRoute() as ipr:
        (index,) = await ipr.link_lookup(ifname=lease.interface)
        try:
            # The default route goes with the address: the kernel drops it with the subnet.
            await ipr.addr("del", index=index, address=lease.ip, prefixlen=lease.prefixlen)
        except NetlinkError as exc:
            if exc.code != errno.EADDRNOTAVAIL:  # the kernel removed it when its lifetime ran out
                raise
