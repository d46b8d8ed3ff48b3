"""The appliance image, built by `python3 -m image.build` and booted under QEMU, used from the
host as a hospital network would use it (SE-06, VE-01, VE-02, TL-07, LG-10).

The image is built once for tests/e2e and boots in about a minute under TCG (conftest.py).
The tests run in order on the one box: power-on and echo, what runs inside, store/find/move,
status on the console, a reload of a broken file, then a reboot; test_power_cut.py goes on
with the same box afterwards.
Each failure prints `systemctl --failed` and the service's journal from the guest; each boot's
whole serial console is in a console-N.log, whose path the test prints.
"""

from __future__ import annotations

import re
import time

import pytest
from pydicom.uid import generate_uid

import datasets
from helpers import dcmtk

from .image_box import (DATA_DIR, DATA_SIZE, QUERY_PORT, QUERY_TITLE, SCU_TITLE, STORE_PORT, STORE_TITLE, Box, echo,
                        find, first_echo, host_peer, move_study)

pytestmark = pytest.mark.debian_tree

# QEMU's user network: the address its DHCP gives the guest, where it forwards ports, and its
# gateway; the console makes the first two static.
GUEST_ADDRESS, GUEST_GATEWAY = "10.0.2.15", "10.0.2.2"
HOSTNAME = "rad-archive-e2e"
PATIENT_ID = "E2E-1"
INSTANCES = 3


def find_studies(box: Box) -> list[str]:
    """Study Instance UIDs of PATIENT_ID's studies, by DCMTK findscu (Study Root)."""
    return [found.StudyInstanceUID for found in
            find(box, "QueryRetrieveLevel=STUDY", f"PatientID={PATIENT_ID}", "StudyInstanceUID")]


def test_both_scp_aes_answer_c_echo_after_power_on(box):  # VE-01, VE-02
    with box.diagnosed():
        store = first_echo(box.store_port, STORE_TITLE, box.guest.started)
        query = first_echo(box.query_port, QUERY_TITLE, box.guest.started)
        print(f"power-on to first C-ECHO: STORAGE-SCP {store:.1f} s, QUERY-RETRIEVE-SCP {query:.1f} s")
        for port, title in ((box.store_port, STORE_TITLE), (box.query_port, QUERY_TITLE)):
            answered = echo(port, title)
            assert answered.returncode == 0, answered.stdout + answered.stderr
        assert box.password_expired
        box.log_in()  # the first login must change the password
        # Where the boot's time went, for docs/performance.md.
        print(box.guest.run("systemctl is-system-running --wait >/dev/null; systemd-analyze; "
                            "systemd-analyze critical-chain appliance.service appliance-health.service")[1])


def test_the_service_runs_as_its_own_user_with_only_dicom_ports_open(box):  # SE-06
    with box.diagnosed():
        # --wait: the update health check (appliance-health.service) may still be running.
        assert box.guest.run("systemctl is-system-running --wait") == (0, "running\n")
        status, user = box.guest.run("ps -o user= -p $(systemctl show -P MainPID appliance)")
        assert (status, user.strip()) == (0, "appliance")
        status, listening = box.guest.run("ss -Htln")
        ports = {re.search(r"\S+:(\d+)\s", line).group(1) for line in listening.splitlines()
                 if not re.search(r"\s(127\.\d+\.\d+\.\d+(%lo)?|\[::1\]):\d+\s", line)}
        assert (status, ports) == (0, {str(STORE_PORT), str(QUERY_PORT)}), listening
        # The archive is on the data partition, which the first boot grew to the disk's end;
        # the root file system is slot A's (issue 21).
        status, size = box.guest.run(f"df -B1 --output=size {DATA_DIR} | tail -1")
        assert status == 0 and int(size) > DATA_SIZE * 4, size
        # A panic (or an initramfs that cannot mount the slot) reboots, so a slot that cannot
        # boot spends its tries (service_tool/slots.py).
        status, mounts = box.guest.run("findmnt -no PARTLABEL /; findmnt -no PARTLABEL /data; "
                                       "cat /proc/sys/kernel/panic")
        assert (status, mounts.split()) == (0, ["root-a", "data", "10"]), mounts
        # systemd keeps the board's watchdog alive: a hung kernel or PID 1 resets the box.
        status, watchdog = box.guest.run("cat /sys/class/watchdog/watchdog0/identity "
                                         "/sys/class/watchdog/watchdog0/state")
        assert (status, watchdog) == (0, "i6300ESB timer\nactive\n"), watchdog
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
        box.add_peer()  # by service-tool on the console
        study = generate_uid()
        files = [datasets.write(datasets.image(patient_id=PATIENT_ID, study_uid=study, InstanceNumber=str(n)),
                                tmp_path / f"{n}.dcm") for n in range(INSTANCES)]
        sent = dcmtk("storescu", "-aet", SCU_TITLE, "-aec", STORE_TITLE, "127.0.0.1", str(box.store_port),
                     *map(str, files))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert find_studies(box) == [study]
        received = tmp_path / "received"
        received.mkdir()
        with host_peer(box.peer_port, received):
            move_study(box, study)
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


def test_a_reload_of_a_broken_file_fails_at_once_and_the_tool_still_diagnoses(box):  # TL-04, TL-07; issue 22
    config = "/etc/appliance/appliance.toml"
    with box.diagnosed():
        status, pid = box.guest.run("systemctl show -P MainPID appliance")
        assert box.guest.run(f"cp {config} /root/appliance.toml.good && echo 'garbage = [' >> {config}")[0] == 0
        status, said = box.guest.run("systemctl reload appliance")
        assert status != 0, said  # ExecReload validated the file first, and sent no SIGHUP
        status, journal = box.guest.run("journalctl -b -u appliance --no-pager -o cat -n 20")
        assert f"configuration invalid: (file): {config} is not valid TOML" in journal, journal
        assert box.guest.run("systemctl show -P MainPID appliance") == (0, pid)
        status, report = box.guest.run("service-tool status")
        assert status == 0 and "service: running" in report, report
        assert f"WARNING: {config} does not load" in report, report
        assert box.guest.run(f"cp /root/appliance.toml.good {config} && systemctl reload appliance")[0] == 0


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
        box.log_in()  # the changed password, asked for no more
        status, report = box.guest.run("service-tool status")
        assert status == 0 and re.search(rf"\b{INSTANCES} instances?\b", report), report
        # The console's network settings held through the reboot.
        status, addresses = box.guest.run("ip -4 -o address show scope global")
        assert status == 0 and f"inet {GUEST_ADDRESS}/24" in addresses and "dynamic" not in addresses, addresses
        assert box.guest.run("hostname") == (0, f"{HOSTNAME}\n")
