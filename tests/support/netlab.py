"""A network lab for the tests (platform findings §3): two network namespaces joined by a veth
pair. The server's runs dnsmasq (DHCPv4 with dnsmasq's shortest lease, stateful DHCPv6, router
advertisements; router, DNS, NTP and domain options); the client's holds the box's interface,
`box0`, and whatever a test runs as the box (a DHCP client, the daemon).

Traffic stays inside the two namespaces (10.251.1.0/24, fd51::/64). Names carry the pid and a
counter, so parallel runs do not collide. The `lab` fixture removes namespaces, veth and every
process it started, also when the test fails; tests import it: `from netlab import lab`.
"""

from __future__ import annotations

import ctypes
import ipaddress
import itertools
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Iterable

import pytest
from pyroute2 import IPRoute

from appliance.network import links
from helpers import REPO, wait_for

BOX = "box0"  # the box's interface, in the client namespace
SERVER_IF = "srv0"
SERVER_V4 = "10.251.1.1"
SERVER_V6 = "fd51::1"
DHCP_NTP = ("10.251.1.123", "fd51::123")  # what dnsmasq hands out as NTP servers; nothing answers there
POOLS = (("10.251.1.100", "10.251.1.149"), ("10.251.1.150", "10.251.1.199"))
LEASE = "2m"  # dnsmasq's minimum
DHCP_CLIENT = REPO / ".venv" / "bin" / "pyroute2-dhcp-client"
CLONE_NEWNET = 0x40000000
_labs = itertools.count(1)
_libc = ctypes.CDLL(None, use_errno=True)


class Lab:
    def __init__(self, root: Path):
        tag = f"{os.getpid()}-{next(_labs)}"
        self.server = f"nlab-{tag}-srv"
        self.client = f"nlab-{tag}-box"
        self.root = root
        self.pool = POOLS[0]
        self._namespaces: list[str] = []
        self._processes: list[subprocess.Popen] = []
        self._files: list = []  # the processes' log files
        self._dnsmasq: subprocess.Popen | None = None

    # --- set-up and teardown -----------------------------------------------------------------
    def up(self) -> "Lab":
        self.root.mkdir(parents=True, exist_ok=True)
        for ns in (self.server, self.client):
            run("ip", "netns", "add", ns)
            self._namespaces.append(ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
            self.call(ns, _quick_ipv6)
        run("ip", "link", "add", BOX, "netns", self.client, "type", "veth", "peer", "name", SERVER_IF,
            "netns", self.server)
        run("ip", "-n", self.server, "addr", "add", f"{SERVER_V4}/24", "dev", SERVER_IF)
        run("ip", "-n", self.server, "addr", "add", f"{SERVER_V6}/64", "dev", SERVER_IF)
        for ns, dev in ((self.server, SERVER_IF), (self.client, BOX)):
            run("ip", "-n", ns, "link", "set", dev, "up")
        self._start_dnsmasq()
        return self

    def down(self) -> None:
        for proc in reversed(self._processes):
            stop(proc, signal.SIGKILL)
        # A namespace lives on while a process is in it: the processes go first. Deleting one
        # end's namespace deletes the veth pair.
        for ns in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self._namespaces.clear()
        for file in self._files:
            file.close()

    def log_file(self, name: str):
        """`name` in the lab's directory, open for appending a process's output; closed at teardown."""
        file = open(self.root / name, "ab")
        self._files.append(file)
        return file

    # --- running things in a namespace ---------------------------------------------------------
    def run(self, netns: str, *cmd: str, timeout: float = 20) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", netns, *cmd, timeout=timeout)

    def popen(self, netns: str, *cmd: str, **kwargs) -> subprocess.Popen:
        """A process in `netns`, killed at teardown if still running."""
        proc = subprocess.Popen(["ip", "netns", "exec", netns, *cmd], **kwargs)
        self._processes.append(proc)
        return proc

    def call(self, netns: str, fn, *args, timeout: float = 30, **kwargs):
        """`fn(*args, **kwargs)` on a thread that entered `netns`: the sockets it opens, and those
        of the threads it starts (pynetdicom's), live there. Its result, or its exception re-raised."""
        outcome = {}

        def body():
            try:
                enter(netns)
                outcome["result"] = fn(*args, **kwargs)
            except BaseException as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=body, name=f"in {netns}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise AssertionError(f"{fn.__name__} did not return within {timeout} s in {netns}")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    # --- DHCP ----------------------------------------------------------------------------------
    def _start_dnsmasq(self) -> None:
        first, last = self.pool
        log = self.root / "dnsmasq.log"
        seen = log.stat().st_size if log.exists() else 0  # the log goes on across restarts
        self._dnsmasq = self.popen(
            self.server, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--no-resolv",
            "--no-hosts", f"--interface={SERVER_IF}", "--bind-interfaces", "--pid-file",
            f"--dhcp-leasefile={self.root / 'dnsmasq.leases'}", f"--log-facility={log}", "--log-dhcp",
            "--dhcp-authoritative",
            # No ping before an offer: BOUND in tens of milliseconds instead of 3 s.
            "--no-ping",
            f"--dhcp-range={first},{last},255.255.255.0,{LEASE}", f"--dhcp-range=fd51::100,fd51::1ff,64,{LEASE}",
            "--enable-ra", f"--dhcp-option=option:router,{SERVER_V4}", f"--dhcp-option=option:dns-server,{SERVER_V4}",
            f"--dhcp-option=option:ntp-server,{DHCP_NTP[0]}", "--dhcp-option=option:domain-name,lab.example",
            f"--dhcp-option=option6:dns-server,[{SERVER_V6}]", f"--dhcp-option=option6:sntp-server,[{DHCP_NTP[1]}]",
            stdout=subprocess.DEVNULL, stderr=self.log_file("dnsmasq.stderr"))
        # Its last line at start-up, logged once its DHCP sockets are bound.
        wait_for(lambda: "sockets bound exclusively" in self.dnsmasq_log()[seen:] or self._dnsmasq.poll() is not None,
                 "dnsmasq to start")
        if self._dnsmasq.poll() is not None:
            raise AssertionError(f"dnsmasq exited {self._dnsmasq.returncode}: "
                                 f"{(self.root / 'dnsmasq.stderr').read_text()}")

    def move_pool(self) -> None:
        """dnsmasq restarted with the other address range: the next renewal of a lease from the
        old one is refused (DHCPNAK)."""
        stop(self._dnsmasq, signal.SIGTERM)
        self.pool = POOLS[1] if self.pool == POOLS[0] else POOLS[0]
        self._start_dnsmasq()

    def dnsmasq_log(self) -> str:
        path = self.root / "dnsmasq.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def leases(self) -> str:
        """dnsmasq's lease file: expiry, MAC, address and the host name each client sent."""
        path = self.root / "dnsmasq.leases"
        return path.read_text() if path.exists() else ""

    def dhcp_client(self) -> "DhcpClient":
        return DhcpClient(self)

    def addresses(self) -> list[dict]:
        """The addresses on the box's interface, as pyroute2 reports them."""
        with IPRoute(netns=self.client) as ipr:
            return ipr.get_addr(index=ipr.link_lookup(ifname=BOX)[0])


class DhcpClient:
    """pyroute2's DHCPv4 client on the box's interface, with netlab_dhcp's hooks."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.log_path = lab.root / "dhcp-client.log"
        self.proc = lab.popen(
            lab.client, str(DHCP_CLIENT), BOX, "--hook", "netlab_dhcp.configure", "--hook", "netlab_dhcp.unconfigure",
            "--log-level", "DEBUG",  # what it did, should it not exit when asked (release)
            cwd=lab.root,  # its lease file
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent)},  # netlab_dhcp, beside this
            stdout=subprocess.DEVNULL, stderr=lab.log_file(self.log_path.name))

    def wait_bound(self, timeout: float = 15) -> str:
        """The leased IPv4 address, once the hook configured it: on the box's interface, with the
        default route through the server."""
        first, last = map(ipaddress.IPv4Address, self.lab.pool)

        def leased():
            if self.proc.poll() is not None:
                raise AssertionError(f"the DHCP client exited {self.proc.returncode}:\n{self.log()}")
            with IPRoute(netns=self.lab.client) as ipr:
                if not any(r.get("RTA_GATEWAY") == SERVER_V4 for r in ipr.get_default_routes(family=socket.AF_INET)):
                    return None
                found = [m.get("IFA_LOCAL") for m in ipr.get_addr(family=socket.AF_INET, label=BOX)]
            return next((a for a in found if first <= ipaddress.IPv4Address(a) <= last), None)

        return wait_for(leased, "a DHCP lease on the box", timeout)

    def renew(self) -> None:
        self.proc.send_signal(signal.SIGUSR1)

    def release(self, timeout: float = 15) -> None:
        """Exit cleanly: DHCPRELEASE, and the address removed by the UNBOUND hook."""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the DHCP client did not exit within {timeout} s of SIGINT:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def run(*cmd: str, timeout: float = 20) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def _quick_ipv6() -> None:
    """No duplicate address detection on a link of two, no delay before router solicitations:
    the box has its IPv6 default route from dnsmasq's advertisement in under a second, not 3 s.
    Set before the veth exists, so that both ends take these defaults."""
    for name in ("accept_dad", "router_solicitation_delay"):
        Path("/proc/sys/net/ipv6/conf/default", name).write_text("0")


def enter(netns: str) -> None:
    """Move the calling thread (only it: setns is per thread) into `netns`."""
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
    finally:
        os.close(fd)


def stop(proc: subprocess.Popen | None, signum: int, grace: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signum)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)


@pytest.fixture
def lab(tmp_path):
    """A Lab that is up, removed at teardown whatever happened."""
    created = Lab(tmp_path / "netlab")
    try:
        yield created.up()
    finally:
        created.down()


# --- static programming, for the tests' own addresses ------------------------------------------
RT_SCOPE_UNIVERSE = 0
RTPROT_STATIC = 4  # routes apply_static owns; the DHCP client's and the kernel's are left alone
# A static gateway wins over the one of a DHCP lease or a router advertisement, which the
# DHCP client and the kernel add with metric 1024 (NW-06).
STATIC_METRIC = 512


def apply_static(ifname: str, addresses: Iterable[str] = (), gateways: Iterable[str] = (), mtu: int | None = None,
                 netns: str | None = None) -> list[str]:
    """Give the box's interface this static configuration, as networkd would on the box (the
    product leaves it to networkd; the tests need addresses of their own): `addresses` (CIDR,
    IPv4 or IPv6) added, static addresses not listed removed; one default route per family
    through each of `gateways`; the MTU, unless None. Dynamic addresses and the routes of the
    DHCP client or of router advertisements are not touched. What was changed ([] if nothing)."""
    wanted = {ipaddress.ip_interface(a) for a in addresses}
    routes = {ipaddress.ip_address(g).version: g for g in gateways}
    changes = []
    with IPRoute(netns=netns) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        (link,) = ipr.get_links(index)
        if mtu is not None and link.get("IFLA_MTU") != mtu:
            ipr.link("set", index=index, mtu=mtu)
            changes.append(f"MTU {link.get('IFLA_MTU')} -> {mtu}")
        static = _static_addresses(ipr, index)
        for gone in sorted(static - wanted, key=str):
            ipr.addr("del", index=index, address=str(gone.ip), prefixlen=gone.network.prefixlen)
            changes.append(f"removed {gone}")
        for new in sorted(wanted - static, key=str):
            ipr.addr("add", index=index, address=str(new.ip), prefixlen=new.network.prefixlen)
            changes.append(f"added {new}")
        for version, family, default in ((4, socket.AF_INET, "0.0.0.0/0"), (6, socket.AF_INET6, "::/0")):
            changes += _set_gateway(ipr, index, family, default, routes.get(version))
    return changes


def _static_addresses(ipr, index: int) -> set:
    """The interface's static global addresses: the kernel's link-local ones are not ours."""
    found = set()
    for msg in ipr.get_addr(index=index):
        address = links.address_of(msg)
        if msg["scope"] == RT_SCOPE_UNIVERSE and not address.dynamic:
            found.add(ipaddress.ip_interface(address.cidr))
    return found


def _set_gateway(ipr, index: int, family: int, default: str, gateway: str | None) -> list[str]:
    ours = [r.get("RTA_GATEWAY") for r in ipr.get_routes(family=family, oif=index, dst_len=0, table=254)
            if r["proto"] == RTPROT_STATIC]
    if ours == ([gateway] if gateway else []):
        return []
    for old in ours:
        ipr.route("del", dst=default, gateway=old, oif=index, proto=RTPROT_STATIC, priority=STATIC_METRIC)
    if gateway is None:
        return [f"removed default gateway {', '.join(ours)}"]
    ipr.route("add", dst=default, gateway=gateway, oif=index, proto=RTPROT_STATIC, priority=STATIC_METRIC)
    return [f"default gateway {gateway}"]
