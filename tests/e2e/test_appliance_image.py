"""The appliance image, built by `python3 -m image.build` and booted under QEMU, used from the
host as a hospital network would use it (SE-06, VE-01, VE-02, TL-07, LG-10).

The image is built once for the module (the Debian tree comes from the tests' cache, built on
first use: about 2 min; the image itself about 1 min) and boots in about a minute under TCG.
The tests run in order on the one box: power-on and echo, what runs inside, store/find/move,
status on the console, then a reboot. Each failure prints `systemctl --failed` and the
service's journal from the guest; each boot's whole serial console is in a console-N.log,
whose path the test prints.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

import datasets
import rootfs
from guest import PEER_ADDRESS, Guest
from helpers import REPO, dcmtk, free_port, wait_for
from image.build import DEFAULT_PASSWORD

pytestmark = pytest.mark.debian_tree

STORE_TITLE, QUERY_TITLE = "EX_STORE_SCP", "EX_QUERY_SCP"  # the image's first-boot defaults
STORE_PORT, QUERY_PORT = 4000, 5000
PEER_TITLE = "HOST_SCP"  # DCMTK storescp on the host, the C-MOVE destination
NEW_PASSWORD = "e2e-Changed-1"
# QEMU's user network: the address its DHCP gives the guest, where it forwards ports, and its
# gateway; the console makes the first two static.
GUEST_ADDRESS, GUEST_GATEWAY = "10.0.2.15", "10.0.2.2"
HOSTNAME = "rad-archive-e2e"
PATIENT_ID = "E2E-1"
INSTANCES = 3
IMAGE_SIZE, DISK_SIZE = 4 << 30, 5 << 30  # the built file system (image.build's default), the disk
BUILD_TIMEOUT = 1800  # s; a cold build (debootstrap) takes about 3 min
BOOT_TIMEOUT = 600  # s; a boot to the first echo takes about a minute, TCG varies with host load


@dataclass
class Box:
    boot: Callable[[Path], Guest]  # a QEMU run on the box's disk, its console to the path given
    consoles: Path
    store_port: int  # host loopback ports forwarded to the guest's
    query_port: int
    peer_port: int
    guest: Guest | None = None
    logged_in: bool = False

    def power_on(self) -> None:
        console = self.consoles / f"console-{len(list(self.consoles.iterdir())) + 1}.log"
        print(f"serial console: {console}")
        self.guest = self.boot(console)
        self.logged_in = False

    @contextlib.contextmanager
    def diagnosed(self):
        """On failure, print what the guest says about its units and the service."""
        try:
            yield
        except BaseException:
            if self.logged_in and self.guest.process.poll() is None:
                for command in ("systemctl --failed --no-legend", "journalctl -b -u appliance --no-pager -n 80"):
                    with contextlib.suppress(AssertionError):
                        print(f"--- guest: {command}\n{self.guest.run(command, timeout=60)[1]}")
            raise


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("image")
    started = time.monotonic()
    built = subprocess.run([sys.executable, "-m", "image.build", "--output", str(output),
                            "--cache", str(rootfs.cache_dir())],
                           cwd=REPO, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    print(f"{built.stdout}image built in {time.monotonic() - started:.0f} s")
    return output


@pytest.fixture(scope="module")
def box(image_dir, tmp_path_factory):
    store_port, query_port, peer_port = free_port(), free_port(), free_port()
    consoles = tmp_path_factory.mktemp("console")
    os.truncate(image_dir / "appliance.raw", DISK_SIZE)  # a disk larger than the image, as on site
    box = Box(functools.partial(Guest, image_dir, image_dir / "appliance.raw",
                                {store_port: STORE_PORT, query_port: QUERY_PORT}, peer_port),
              consoles, store_port, query_port, peer_port)
    box.power_on()
    try:
        yield box
    finally:
        box.guest.stop()


def echo(port: int, title: str) -> subprocess.CompletedProcess:
    return dcmtk("echoscu", "-aet", "E2E_SCU", "-aec", title, "-to", "5", "-ta", "5", "-td", "10",
                 "127.0.0.1", str(port), timeout=60)


def first_echo(port: int, title: str, since: float) -> float:
    """Seconds from `since` to the first successful C-ECHO, trying every half second (each try
    is an echoscu process: polling faster takes CPU the emulated guest needs)."""
    wait_for(lambda: echo(port, title).returncode == 0, f"a C-ECHO answered by {title} after power-on",
             timeout=since + BOOT_TIMEOUT - time.monotonic(), interval=0.5)
    return time.monotonic() - since


def find_studies(box: Box) -> list[str]:
    """Study Instance UIDs of PATIENT_ID's studies, by DCMTK findscu (Study Root). The UIDs are
    read from the identifiers findscu writes, not from its log, which shows an odd-length UID's
    NUL padding as a space."""
    with tempfile.TemporaryDirectory() as out_dir:
        found = dcmtk("findscu", "-v", "-S", "-aet", "E2E_SCU", "-aec", QUERY_TITLE, "-X", "-od", out_dir,
                      "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID={PATIENT_ID}", "-k", "StudyInstanceUID",
                      "127.0.0.1", str(box.query_port))
        assert found.returncode == 0, found.stdout + found.stderr
        return [dcmread(path).StudyInstanceUID for path in sorted(Path(out_dir).glob("rsp*.dcm"))]


def test_both_scp_aes_answer_c_echo_after_power_on(box):  # VE-01, VE-02
    with box.diagnosed():
        store = first_echo(box.store_port, STORE_TITLE, box.guest.started)
        query = first_echo(box.query_port, QUERY_TITLE, box.guest.started)
        print(f"power-on to first C-ECHO: STORAGE-SCP {store:.1f} s, QUERY-RETRIEVE-SCP {query:.1f} s")
        for port, title in ((box.store_port, STORE_TITLE), (box.query_port, QUERY_TITLE)):
            answered = echo(port, title)
            assert answered.returncode == 0, answered.stdout + answered.stderr
        box.guest.log_in(DEFAULT_PASSWORD, new_password=NEW_PASSWORD)  # the first login must change it
        box.logged_in = True
        # Where the boot's time went, for docs/performance.md.
        print(box.guest.run("systemd-analyze; systemd-analyze critical-chain appliance.service")[1])


def test_the_service_runs_as_its_own_user_with_only_dicom_ports_open(box):  # SE-06
    with box.diagnosed():
        assert box.guest.run("systemctl is-system-running") == (0, "running\n")
        status, user = box.guest.run("ps -o user= -p $(systemctl show -P MainPID appliance)")
        assert (status, user.strip()) == (0, "appliance")
        status, listening = box.guest.run("ss -Htln")
        ports = {re.search(r"\S+:(\d+)\s", line).group(1) for line in listening.splitlines()
                 if not re.search(r"\s(127\.\d+\.\d+\.\d+(%lo)?|\[::1\]):\d+\s", line)}
        assert (status, ports) == (0, {str(STORE_PORT), str(QUERY_PORT)}), listening
        # The first boot grew the file system to the disk.
        status, size = box.guest.run("df -B1 --output=size / | tail -1")
        assert status == 0 and int(size) > IMAGE_SIZE, size
        # The first boot made the configuration file from the image's defaults.
        assert box.guest.run("cmp /etc/appliance/appliance.toml /usr/share/appliance/appliance.toml")[0] == 0
        # The service log reaches the journal, which is kept on disk within its bound (LG-10).
        status, journal = box.guest.run("journalctl -b -u appliance --no-pager -o cat")
        assert status == 0 and "STORAGE-SCP" in journal, journal
        status, limits = box.guest.run("systemd-analyze cat-config systemd/journald.conf")
        assert "SystemMaxUse=256M" in limits and "Storage=persistent" in limits, limits
        assert box.guest.run("test -d /var/log/journal")[0] == 0
        # The socket buffer caps the service's requests need were applied at boot (CF-08).
        assert box.guest.run("sysctl -n net.core.rmem_max net.core.wmem_max") == (0, "4194304\n4194304\n")


def test_a_study_is_stored_found_and_moved_to_a_host_peer(box, tmp_path):
    with box.diagnosed():
        status, said = box.guest.run(f"service-tool remote add {PEER_TITLE} --host {PEER_ADDRESS} "
                                     f"--port {box.peer_port} --may move")
        assert status == 0, said
        study = generate_uid()
        files = [datasets.write(datasets.image(patient_id=PATIENT_ID, study_uid=study, InstanceNumber=str(n)),
                                tmp_path / f"{n}.dcm") for n in range(INSTANCES)]
        sent = dcmtk("storescu", "-aet", "E2E_SCU", "-aec", STORE_TITLE, "127.0.0.1", str(box.store_port),
                     *map(str, files))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert find_studies(box) == [study]
        received = tmp_path / "received"
        received.mkdir()
        peer = subprocess.Popen(["storescp", "-aet", PEER_TITLE, "-od", str(received), str(box.peer_port)],
                                env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            moved = dcmtk("movescu", "-v", "-S", "-aet", "E2E_SCU", "-aec", QUERY_TITLE, "-aem", PEER_TITLE,
                          "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                          "127.0.0.1", str(box.query_port), timeout=300)
        finally:
            peer.terminate()
            peer.wait(30)
        assert moved.returncode == 0, moved.stdout + moved.stderr
        assert "Received Final Move Response (Success)" in moved.stderr, moved.stderr
        assert len(list(received.iterdir())) == INSTANCES


def test_service_tool_status_on_the_console(box):  # TL-07
    with box.diagnosed():
        status, report = box.guest.run("service-tool status")
        assert status == 0, report
        assert "service: running" in report, report
        assert re.search(rf"\b{INSTANCES} instances?\b", report), report


def test_the_field_engineers_echo_reaches_both_scp_aes(box):  # VE-01, VE-02 from the console
    with box.diagnosed():
        status, said = box.guest.run("service-tool echo --local")
        assert status == 0, said
        assert len(re.findall(r"C-ECHO +status 0x0000", said)) == 2, said


def test_a_static_address_and_name_set_on_the_console(box):  # NW-03, NW-05
    with box.diagnosed():
        status, said = box.guest.run(f"service-tool network set --dhcp off --address {GUEST_ADDRESS}/24 "
                                     f"--gateway4 {GUEST_GATEWAY} --hostname {HOSTNAME}")
        assert status == 0, said
        status, addresses = box.guest.run("ip -4 -o address show scope global")
        assert status == 0 and f"inet {GUEST_ADDRESS}/24" in addresses and "dynamic" not in addresses, addresses
        assert box.guest.run("hostname") == (0, f"{HOSTNAME}\n")
        answered = echo(box.query_port, QUERY_TITLE)  # QEMU forwards to the same address
        assert answered.returncode == 0, answered.stdout + answered.stderr


def test_a_killed_service_is_restarted_and_serves_again(box):
    with box.diagnosed():
        status, pid = box.guest.run("systemctl show -P MainPID appliance")
        assert status == 0 and int(pid) > 0, pid
        killed = time.monotonic()
        assert box.guest.run(f"kill -KILL {int(pid)}")[0] == 0
        elapsed = first_echo(box.store_port, STORE_TITLE, killed)
        print(f"SIGKILL to the next C-ECHO: {elapsed:.1f} s (RestartSec=5)")
        status, shown = box.guest.run("systemctl show -p MainPID -p NRestarts appliance")
        now = dict(line.split("=", 1) for line in shown.split())
        assert status == 0 and now["MainPID"] != pid.strip() and now["NRestarts"] == "1", shown
        assert len(find_studies(box)) == 1


def test_the_study_is_still_there_after_a_reboot(box):
    with box.diagnosed():
        box.guest.type("systemctl reboot\r")
        box.logged_in = False
        # A clean shutdown: the service drains and checkpoints its index on SIGTERM.
        box.guest.expect(r"Stopped \S*appliance\.service", 120)
        box.guest.wait_for_power_off(120)
        box.guest.stop()
        box.power_on()
        elapsed = first_echo(box.query_port, QUERY_TITLE, box.guest.started)
        print(f"power-on to first C-ECHO after the reboot: {elapsed:.1f} s")
        assert len(find_studies(box)) == 1
        box.guest.log_in(NEW_PASSWORD)  # the changed password, asked for no more
        box.logged_in = True
        status, report = box.guest.run("service-tool status")
        assert status == 0 and re.search(rf"\b{INSTANCES} instances?\b", report), report
        # The console's network settings held through the reboot.
        status, addresses = box.guest.run("ip -4 -o address show scope global")
        assert status == 0 and f"inet {GUEST_ADDRESS}/24" in addresses and "dynamic" not in addresses, addresses
        assert box.guest.run("hostname") == (0, f"{HOSTNAME}\n")
