"""The box as a container: the cached rootfs booted with systemd-nspawn --boot (systemd as
its PID 1, with the real networkd, resolved, timesyncd, hostnamed and D-Bus) in the box
namespace of a tests/support/netlab.py lab, where dnsmasq on the other side of the veth pair serves
DHCPv4, DHCPv6 and router advertisements with DNS and NTP options.

The host reaches the container's system bus through /proc/<its PID 1>/root. Nothing leaves
the two namespaces; both, the overlay and the container are gone after the `with` block.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import netlab
import rootfs
from helpers import wait_for
from image import debian

INTERFACE = netlab.BOX  # the box's NIC, as the container sees it
SERVER4 = netlab.SERVER_V4
DHCP_DNS = (netlab.SERVER_V4, netlab.SERVER_V6)  # what dnsmasq hands out; nothing answers DNS there
DHCP_NTP = netlab.DHCP_NTP
BOOT_TIMEOUT = 60.0  # s; a boot takes about 1 s
STOP_TIMEOUT = 30.0  # s; a clean halt takes about 2 s


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
def booted(lower: Path, lab: netlab.Lab, work: Path, files: dict[str, str],
           install: Callable[[Path], None] | None = None):
    """`lower` booted in lab.client from a private overlay, made the test box with `files` (path
    relative to the root -> content) added and `install` run on its root; yields a running
    Container and halts it afterwards. What it printed (systemd and its journal) is in
    work/console.log."""
    with debian.writable_copy(lower, work) as root:
        rootfs.prepare(root, files)
        if install is not None:
            install(root)
        name = lab.client.removeprefix("nlab-")
        console = work / "console.log"
        with open(console, "wb") as output:
            nspawn = subprocess.Popen(
                # No machined or host systemd here: --register=no --keep-unit. The namespace
                # does not grant CAP_NET_ADMIN, which networkd needs. Time zone and resolv.conf
                # stay the box's own.
                ["systemd-nspawn", "--directory", str(root), "--machine", name, "--boot", "--register=no",
                 "--keep-unit", "--capability=CAP_NET_ADMIN,CAP_NET_RAW",
                 f"--network-namespace-path=/run/netns/{lab.client}", "--console=pipe",
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


def _tail(path: Path) -> str:
    """The end of a log, for a failure message."""
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""
