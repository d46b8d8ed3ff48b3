"""The box as a container: the cached rootfs booted with systemd-nspawn --boot (systemd as
its PID 1, with the real networkd, resolved, timesyncd, hostnamed and D-Bus) inside a network
namespace the test made, wired by a veth pair to a server namespace where dnsmasq serves
DHCPv4, DHCPv6 and router advertisements with DNS and NTP options.

The host reaches the container's system bus through /proc/<its PID 1>/root. Nothing leaves
the two namespaces; both, the overlay and the container are gone after the `with` block.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import rootfs
from helpers import wait_for

INTERFACE = "eth0"  # the box's NIC, as the container sees it
SERVER4, SERVER6 = "10.251.1.1", "fd51::1"
DHCP_DNS = ("10.251.1.53", "fd51::53")  # what dnsmasq hands out; nothing listens there
DHCP_NTP = ("10.251.1.123", "fd51::123")
BOOT_TIMEOUT = 60.0  # s; a boot takes about 1 s
STOP_TIMEOUT = 30.0  # s; a clean halt takes about 2 s
_serial = itertools.count(1)


@dataclass(frozen=True)
class Lab:
    box_netns: str  # where the container boots
    server_netns: str
    leases: Path  # dnsmasq's lease file: address, MAC and the host name each client sent
    log: Path


@dataclass(frozen=True)
class Container:
    pid: int  # the container's PID 1 as the host sees it
    root: Path  # its root filesystem, writable from the host

    @property
    def bus_address(self) -> str:
        return f"unix:path=/proc/{self.pid}/root/run/dbus/system_bus_socket"

    def run(self, *command: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """`command` inside the container (all its namespaces)."""
        return subprocess.run(["nsenter", f"--target={self.pid}", "--all", *command],
                              capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def lab(work: Path):
    """Two namespaces joined by a veth pair (INTERFACE on the box's side) and dnsmasq on the
    server's side; yields a Lab."""
    name = f"appl{os.getpid()}n{next(_serial)}"
    lab = Lab(f"{name}-box", f"{name}-srv", work / "dnsmasq.leases", work / "dnsmasq.log")
    made: list[str] = []
    dnsmasq = None
    try:
        for netns in (lab.box_netns, lab.server_netns):
            rootfs.run(["ip", "netns", "add", netns], 10)
            made.append(netns)
        rootfs.run(["ip", "link", "add", INTERFACE, "netns", lab.box_netns, "type", "veth",
                    "peer", "name", "srv0", "netns", lab.server_netns], 10)
        for command in (["addr", "add", f"{SERVER4}/24", "dev", "srv0"],
                        ["addr", "add", f"{SERVER6}/64", "dev", "srv0", "nodad"],
                        ["link", "set", "srv0", "up"]):
            rootfs.run(["ip", "-n", lab.server_netns, *command], 10)
        dnsmasq = subprocess.Popen(
            ["ip", "netns", "exec", lab.server_netns, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
             "--port=0", "--no-ping", "--dhcp-authoritative", "--interface=srv0", "--bind-interfaces",
             f"--dhcp-leasefile={lab.leases}", f"--pid-file={work / 'dnsmasq.pid'}", "--log-dhcp",
             f"--log-facility={lab.log}", "--enable-ra",
             "--dhcp-range=10.251.1.100,10.251.1.199,255.255.255.0,2m",  # 2 min: dnsmasq's shortest
             "--dhcp-range=fd51::100,fd51::1ff,64,2m",
             f"--dhcp-option=option:router,{SERVER4}",
             f"--dhcp-option=option:dns-server,{DHCP_DNS[0]}",
             f"--dhcp-option=option:ntp-server,{DHCP_NTP[0]}",
             f"--dhcp-option=option6:dns-server,[{DHCP_DNS[1]}]",
             f"--dhcp-option=option6:sntp-server,[{DHCP_NTP[1]}]"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: dnsmasq.poll() is not None or "bound exclusively" in _text(lab.log), "dnsmasq to start")
        assert dnsmasq.poll() is None, f"dnsmasq exited {dnsmasq.returncode}: {_tail(lab.log)}"
        yield lab
    finally:
        if dnsmasq:
            _stop(dnsmasq)
        for netns in made:  # deleting the box's side takes the veth pair with it
            rootfs.run(["ip", "netns", "del", netns], 10)


@contextlib.contextmanager
def booted(lower: Path, lab: Lab, work: Path, files: dict[str, str]):
    """`lower` booted in lab.box_netns from a private overlay with `files` (path relative to
    the root -> content) added first; yields a running Container and halts it afterwards.
    What it printed (systemd and its journal) is in work/console.log."""
    with rootfs.writable_copy(lower, work) as root:
        rootfs.write_files(root, files)
        name = lab.box_netns.removesuffix("-box")
        console = work / "console.log"
        with open(console, "wb") as output:
            nspawn = subprocess.Popen(
                # No machined or host systemd here: --register=no --keep-unit. The namespace
                # does not grant CAP_NET_ADMIN, which networkd needs. Time zone and resolv.conf
                # stay the box's own.
                ["systemd-nspawn", "--directory", str(root), "--machine", name, "--boot", "--register=no",
                 "--keep-unit", "--capability=CAP_NET_ADMIN,CAP_NET_RAW",
                 f"--network-namespace-path=/run/netns/{lab.box_netns}", "--console=pipe",
                 "--timezone=off", "--resolv-conf=off", "--link-journal=no"],
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
        pid = None
        try:
            pid = wait_for(lambda: _exited(nspawn, console) or _init_of(nspawn.pid), "the container's PID 1")
            container = Container(pid, root)
            state = wait_for(lambda: _exited(nspawn, console) or _settled(container), "the container to boot",
                             BOOT_TIMEOUT)
            assert state in ("running", "degraded"), f"is-system-running: {state}\n{_tail(console)}"
            yield container
        finally:
            _stop(nspawn, pid)  # nspawn halts the container cleanly on SIGTERM
        assert nspawn.returncode == 0, f"systemd-nspawn exited {nspawn.returncode}:\n{_tail(console)}"


def _settled(container: Container) -> str | None:
    """The container's system state once boot is over (None while it is still starting)."""
    state = container.run("systemctl", "is-system-running").stdout.strip()
    return None if state in ("", "offline", "initializing", "starting") else state


def _init_of(parent: int) -> int | None:
    """The child of `parent` that is PID 1 in its own PID namespace."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = dict(line.split(":\t", 1) for line in (entry / "status").read_text().splitlines())
            except (OSError, ValueError):
                continue  # gone meanwhile
            if status.get("PPid") == str(parent) and status.get("NSpid", "").split()[-1:] == ["1"]:
                return int(entry.name)
    return None


def _exited(process: subprocess.Popen, console: Path) -> None:
    if process.poll() is not None:
        raise AssertionError(f"systemd-nspawn exited {process.returncode}:\n{_tail(console)}")


def _stop(process: subprocess.Popen, init: int | None = None) -> None:
    """SIGTERM to `process`; after STOP_TIMEOUT, SIGKILL to it and to `init`, the PID 1 of a
    container it started (which takes everything in the container's PID namespace along)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            if init:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(init, signal.SIGKILL)
            process.kill()
            process.wait(STOP_TIMEOUT)


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _tail(path: Path) -> str:
    """The end of a log, for a failure message."""
    return _text(path)[-3000:]
