"""FL-09: a DHCP lease renewal refused aborts every DICOM association.

The box's DHCP client configures a leased address with the lease's lifetime and removes it when
the server refuses a renewal (DHCPNAK); when the lease runs out the kernel removes it. Netlink
announces every removal (RTM_DELADDR) with the address's flags, so the service needs neither the
client's private lease files nor its D-Bus API: a dynamic address (not IFA_F_PERMANENT) leaving
the managed interface while the service runs is a lost lease. A static address removed is the
installer's change, logged and nothing else. At shutdown the daemon stops the watch before its
drain, so the release of a lease as the box goes down is no refusal.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import struct
import threading
from typing import Callable, Iterator

from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from appliance.errors import ConfigError
from appliance.network import links
from appliance.wake import Wake

log = logging.getLogger("appliance.network")

RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
RTM_DELADDR = 21
_NLMSG_HEADER = struct.Struct("=IH")  # the start of struct nlmsghdr: length, type


class LeaseWatch:
    """A thread watching the managed interface (`network.interface`) for addresses removed;
    `abort_all()` aborts every association and says how many there were."""

    def __init__(self, interface: str, abort_all: Callable[[], int]):
        self.configured = interface
        self.abort_all = abort_all
        # Held while acting on a removal, so that stop() returns only after an abort under way;
        # it does not wait for the thread. Also held to wake the thread and to close its wake-up
        # pair, never both at once.
        self._lock = threading.Lock()
        self._stopped = False
        self._wake = Wake()
        self._thread = threading.Thread(target=self._run, name="lease-watch", daemon=True)

    def start(self) -> "LeaseWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Once this returns, no address removal aborts anything."""
        with self._lock:
            self._stopped = True
            if not self._wake.closed:  # else the thread has ended
                self._wake.ring()

    def _run(self) -> None:
        try:
            # Subscribed before the interface is looked up, so no removal falls in between.
            with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as sock:
                sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
                self._watch(sock)
        except Exception as exc:  # netlink refused (no AF_NETLINK) or failing: log it, never end DICOM service
            log.error("DHCP lease watch ended, netlink failed (%s: %s): a DHCP lease refused will not abort the "
                      "DICOM associations (FL-09); DICOM service goes on", type(exc).__name__, exc)
        finally:
            with self._lock:
                self._wake.close()

    def _watch(self, sock: socket.socket) -> None:
        try:
            ifname = links.find_interface(self.configured)
            index = socket.if_nametoindex(ifname)
        except ConfigError as exc:  # e.g. a developer's machine: nothing to watch
            log.info("DHCP lease watch off: %s", exc)
            return
        log.info("watching %s for DHCP leases lost (FL-09)", ifname)
        while (data := self._receive(sock)) is not None:
            for address in removed(data, index):
                self._on_removed(ifname, address)

    def _receive(self, sock: socket.socket) -> bytes | None:
        """The next datagram of netlink messages; None once stop() was called."""
        while True:
            select.select([sock, self._wake], [], [])
            if self._stopped:
                return None
            try:
                return sock.recv(65536)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                log.warning("netlink address events were lost (receive queue full); a DHCP lease lost just now "
                            "may have gone unnoticed")

    def _on_removed(self, ifname: str, address: links.Address) -> None:
        with self._lock:
            if self._stopped:
                return
            if not address.dynamic:
                log.info("static address %s removed from %s: not a DHCP lease, associations go on", address.cidr,
                         ifname)
                return
            aborted = self.abort_all()
        log.error("DHCP lease lost on %s: %s removed (renewal refused or lease expired); %d DICOM associations "
                  "aborted (FL-09)", ifname, address.cidr, aborted)


def removed(data: bytes, index: int) -> Iterator[links.Address]:
    """The addresses of interface `index` that the RTM_DELADDR messages in `data` remove."""
    offset = 0
    while offset + _NLMSG_HEADER.size <= len(data):
        length, kind = _NLMSG_HEADER.unpack_from(data, offset)
        if length < _NLMSG_HEADER.size:
            return  # malformed: never loop on it
        if kind == RTM_DELADDR:
            msg = ifaddrmsg(data[offset:offset + length])
            msg.decode()
            if msg["index"] == index:
                yield links.address_of(msg)
        offset += (length + 3) & ~3  # NLMSG_ALIGN
