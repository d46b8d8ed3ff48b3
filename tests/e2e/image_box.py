"""The booted appliance image as the e2e tests drive it: the box (QEMU on the image's disk, its
serial console, its login), and DCMTK's tools on the host speaking to its DICOM ports.

conftest.py builds the image and boots the box once for tests/e2e; the modules use it in turn
(test_appliance_image.py first, then test_power_cut.py: pytest takes the files in name order).
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from helpers import dcmtk, storescp, wait_for
from image.build import DEFAULT_PASSWORD

from .guest import PEER_ADDRESS, Guest

STORE_TITLE, QUERY_TITLE = "EX_STORE_SCP", "EX_QUERY_SCP"  # the image's first-boot defaults
STORE_PORT, QUERY_PORT = 4000, 5000
PEER_TITLE = "HOST_SCP"  # DCMTK storescp on the host, the C-MOVE destination
SCU_TITLE = "E2E_SCU"  # the host's tools
NEW_PASSWORD = "e2e-Changed-1"
DATA_DIR = "/var/lib/appliance"  # on the box (system/appliance.toml)
DATA_SIZE, DISK_SIZE = 256 << 20, 5 << 30  # the image's data partition (image.build's PARTITIONS), the disk
IMAGE_VERSION = "1.0.0"  # the version the e2e image is built as; its update bundles are higher
BUILD_TIMEOUT = 1800  # s; a cold build (debootstrap) takes about 3 min
BOOT_TIMEOUT = 600  # s; a boot to the first echo takes about a minute, TCG varies with host load


@dataclass
class Box:
    boot: Callable[[Path], Guest]  # a QEMU run on the box's disk, its console to the path given
    consoles: Path
    store_port: int  # host loopback ports forwarded to the guest's
    query_port: int
    peer_port: int  # host loopback port the guest's PEER_ADDRESS:peer_port leads to
    guest: Guest | None = None
    logged_in: bool = False
    password: str = DEFAULT_PASSWORD
    password_expired: bool = True  # the image's root password must be changed at the first login
    peer_added: bool = False  # PEER_TITLE is in the box's remote AE table
    stick: Path | None = None  # a disk image plugged in as a USB stick at the next power-on

    def power_on(self) -> None:
        console = self.consoles / f"console-{len(list(self.consoles.glob('console-*.log'))) + 1}.log"
        print(f"serial console: {console}")
        self.guest = self.boot(console, stick=self.stick)
        self.logged_in = False

    def plug_in(self, stick: Path) -> None:
        """`stick` plugged into the running box's USB port; it stays in across power-ons."""
        self.guest.plug_in(stick)
        self.stick = stick

    def power_cut(self) -> None:
        """SIGKILL to QEMU: to the guest, a power cut. Its page cache is lost; what it had
        written to the virtual disk is in the disk file (QEMU's writes are the host's), as a
        disk keeps what it completed."""
        self.guest.process.kill()
        self.logged_in = False
        self.guest.stop()

    def running(self) -> bool:
        return self.guest is not None and self.guest.process.poll() is None

    def log_in(self) -> None:
        """Root on the serial console, a plain shell for `guest.run`; the first login on the
        box's disk must change the image's expired password."""
        if self.password_expired:
            self.guest.log_in(self.password, new_password=NEW_PASSWORD)
            self.password, self.password_expired = NEW_PASSWORD, False
        else:
            self.guest.log_in(self.password)
        self.logged_in = True

    def add_peer(self) -> None:
        """The host's storescp (`host_peer`) in the remote AE table as PEER_TITLE, by
        service-tool on the console (once per disk)."""
        if not self.peer_added:
            status, said = self.guest.run(f"service-tool remote add {PEER_TITLE} --host {PEER_ADDRESS} "
                                          f"--port {self.peer_port} --may move")
            assert status == 0, said
            self.peer_added = True

    @contextlib.contextmanager
    def diagnosed(self, *commands: str):
        """On failure, print what the guest says about its units and the service (and the
        output of `commands`)."""
        try:
            yield
        except BaseException:
            if self.logged_in and self.running():
                for command in ("systemctl --failed --no-legend", "journalctl -b -u appliance --no-pager -n 80",
                                *commands):
                    with contextlib.suppress(AssertionError):
                        print(f"--- guest: {command}\n{self.guest.run(command, timeout=60)[1]}")
            raise


def echo(port: int, title: str) -> subprocess.CompletedProcess:
    return dcmtk("echoscu", "-aet", SCU_TITLE, "-aec", title, "-to", "5", "-ta", "5", "-td", "10",
                 "127.0.0.1", str(port), timeout=60)


def first_echo(port: int, title: str, since: float) -> float:
    """Seconds from `since` to the first successful C-ECHO, trying every half second (each try
    is an echoscu process: polling faster takes CPU the emulated guest needs)."""
    wait_for(lambda: echo(port, title).returncode == 0, f"a C-ECHO answered by {title} after power-on",
             timeout=since + BOOT_TIMEOUT - time.monotonic(), interval=0.5)
    return time.monotonic() - since


def find(box: Box, *keys: str, timeout: float = 120) -> list[Dataset]:
    """The identifiers of the pending responses to a C-FIND (Study Root) by DCMTK findscu with
    `keys` ("Keyword=value", or "Keyword" to have it returned), read from the files findscu
    writes, not from its log, which shows an odd-length UID's NUL padding as a space."""
    with tempfile.TemporaryDirectory() as out_dir:
        found = dcmtk("findscu", "-v", "-S", "-aet", SCU_TITLE, "-aec", QUERY_TITLE, "-X", "-od", out_dir,
                      *(arg for key in keys for arg in ("-k", key)), "127.0.0.1", str(box.query_port),
                      timeout=timeout)
        assert found.returncode == 0, found.stdout + found.stderr
        return [dcmread(path) for path in sorted(Path(out_dir).glob("rsp*.dcm"))]


def move_study(box: Box, study: str, timeout: float = 300) -> None:
    """C-MOVE of `study` (Study Root) to PEER_TITLE by DCMTK movescu; it must end in Success."""
    moved = dcmtk("movescu", "-v", "-S", "-aet", SCU_TITLE, "-aec", QUERY_TITLE, "-aem", PEER_TITLE,
                  "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                  "127.0.0.1", str(box.query_port), timeout=timeout)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert "Received Final Move Response (Success)" in moved.stderr, moved.stderr


def host_peer(port: int, directory: Path):
    """DCMTK storescp as PEER_TITLE on host loopback `port`, writing what it receives into
    `directory`; stopped on leaving, whatever happened."""
    return storescp(port, PEER_TITLE, directory, timeout=30)
