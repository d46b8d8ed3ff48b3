"""Firmware-style updates on the booted image (issue 21): signed RAUC bundles from a USB stick
into the inactive slot, boot counting and the health check, the automatic fall-back.

It goes on with conftest.py's box (image version IMAGE_VERSION, slot A) after the other
modules: 20 instances are stored; a USB stick is plugged into the running box, holding three
bundles (built here from the same checkout: a higher version, one whose service cannot
start, and the first re-signed with a key the box does not trust). Then, in order:
- the re-signed bundle is refused, and slot B is still empty;
- the higher version is installed into slot B, boots, answers and finds the 20 instances, and
  the health check keeps it;
- `update rollback` boots slot A (the image's version) again, which finds the 20 instances;
- the broken one is installed into slot B and booted: its service refuses its configuration,
  the health check reboots it until its tries are spent, and systemd-boot goes back to slot A,
  which answers and finds the 20 instances; `update status` names the failed attempt.
Each install and boot is timed (docs/performance.md).
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

import datasets
from helpers import dcmtk, wait_for

from .conftest import build, signing_pair
from .image_box import (BOOT_TIMEOUT, IMAGE_VERSION, QUERY_PORT, QUERY_TITLE, SCU_TITLE, STORE_TITLE, Box,
                        echo, find, first_echo)

pytestmark = pytest.mark.debian_tree

PATIENT_ID = "E2E-UPDATE"
INSTANCES = 20
NEW_VERSION, BROKEN_VERSION = "2.0.0", "3.0.0"
MOUNT = "/mnt"
# The broken version: its service reads a configuration default that does not parse, and exits 2
# (a refused configuration, which systemd does not restart).
BROKEN_FILES = {
    "usr/share/appliance/broken.toml": "garbage = [\n",
    "usr/lib/systemd/system/appliance.service.d/90-broken.conf":
        "[Service]\nExecStart=\nExecStart=/opt/appliance/venv/bin/appliance serve "
        "--config /usr/share/appliance/broken.toml\n",
}
MAX_BOOTS = 5  # power-ons the broken update may take before slot B answers again


@pytest.fixture(scope="module")
def stick(tmp_path_factory, signing) -> dict[str, str]:
    """A stick image (ext4, label UPDATES) with the three bundles; their names on it."""
    work = tmp_path_factory.mktemp("bundles")
    content = work / "stick"
    overlay = work / "broken"
    for relative, text in BROKEN_FILES.items():
        (overlay / relative).parent.mkdir(parents=True, exist_ok=True)
        (overlay / relative).write_text(text)
    build(content, signing, ("--no-image", "--bundle", "--version", NEW_VERSION),
          ("--no-image", "--bundle", "--version", BROKEN_VERSION, "--overlay", str(overlay)))
    intruder_cert, intruder_key = signing_pair(work, "intruder")
    resigned = subprocess.run(["rauc", "resign", f"--keyring={signing[0]}", f"--signing-keyring={intruder_cert}",
                               f"--cert={intruder_cert}",
                               f"--key={intruder_key}", str(content / f"appliance-{NEW_VERSION}.raucb"),
                               str(content / "untrusted.raucb")], capture_output=True, text=True, timeout=600)
    assert resigned.returncode == 0, resigned.stderr
    for bundle in sorted(content.glob("*.raucb")):
        print(f"bundle {bundle.name}: {bundle.stat().st_size / 1e6:.0f} MB")
    image = work / "stick.img"
    subprocess.run(["truncate", "--size", "2G", str(image)], check=True)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "UPDATES", "-d", str(content), str(image)],
                          capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr
    box_stick = {"new": f"appliance-{NEW_VERSION}.raucb", "broken": f"appliance-{BROKEN_VERSION}.raucb",
                 "untrusted": "untrusted.raucb", "image": str(image)}
    return box_stick


def ensure_logged_in(box: Box) -> None:
    if not box.logged_in:
        box.log_in()


def instances_found(box: Box) -> int:
    """PATIENT_ID's instances by C-FIND (Study Root: study, series, then image level)."""
    count = 0
    for study in find(box, "QueryRetrieveLevel=STUDY", f"PatientID={PATIENT_ID}", "StudyInstanceUID"):
        for series in find(box, "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study.StudyInstanceUID}",
                           "SeriesInstanceUID"):
            count += len(find(box, "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study.StudyInstanceUID}",
                              f"SeriesInstanceUID={series.SeriesInstanceUID}", "SOPInstanceUID"))
    return count


def status(box: Box) -> str:
    code, said = box.guest.run("service-tool update status")
    assert code == 0, said
    print(said)
    return said


def install(box: Box, name: str) -> tuple[int, str, float]:
    code, said = box.guest.run(f"mountpoint -q {MOUNT} || mount -o ro /dev/disk/by-label/UPDATES {MOUNT}")
    assert code == 0, said  # the stick, mounted again after a reboot
    started = time.monotonic()
    code, said = box.guest.run(f"service-tool update install {MOUNT}/{name}", timeout=900)
    elapsed = time.monotonic() - started
    print(f"update install {name}: exit {code} in {elapsed:.1f} s\n{said}")
    return code, said, elapsed


def reboot_until_echo(box: Box, max_boots: int) -> int:
    """Powered on again each time the box reboots itself (QEMU runs with -no-reboot) until both
    AEs answer C-ECHO; the number of boots it took."""
    box.guest.type("systemctl reboot\r")
    box.logged_in = False
    box.guest.wait_for_power_off(180)
    box.guest.stop()
    started = time.monotonic()
    def answered_or_off() -> str | None:
        if echo(box.store_port, STORE_TITLE).returncode == 0:
            return "answered"
        return None if box.running() else "off"

    for boots in range(1, max_boots + 1):
        box.power_on()
        if wait_for(answered_or_off, f"a C-ECHO or a reboot after power-on {boots}", BOOT_TIMEOUT,
                    interval=0.5) == "answered":
            first_echo(box.query_port, QUERY_TITLE, box.guest.started)
            print(f"C-ECHO after {boots} boot(s), {time.monotonic() - started:.1f} s after the reboot; "
                  f"this boot's power-on to C-ECHO {time.monotonic() - box.guest.started:.1f} s")
            return boots
        box.guest.stop()
    raise AssertionError(f"no C-ECHO after {max_boots} boots")


def wait_for_health(box: Box) -> None:
    code, said = box.guest.run("systemctl start appliance-health.service; systemctl is-active appliance-health",
                               timeout=400)
    assert (code, said.strip()) == (0, "active"), said


def test_twenty_instances_then_the_update_stick_plugged_in(box, stick, tmp_path):
    with box.diagnosed():
        if not box.running():
            box.power_on()
        first_echo(box.store_port, STORE_TITLE, box.guest.started)
        study = generate_uid()
        files = [datasets.write(datasets.image(patient_id=PATIENT_ID, study_uid=study, InstanceNumber=str(n)),
                                tmp_path / f"{n}.dcm") for n in range(INSTANCES)]
        sent = dcmtk("storescu", "-aet", SCU_TITLE, "-aec", STORE_TITLE, "127.0.0.1", str(box.store_port),
                     *map(str, files))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert instances_found(box) == INSTANCES
        ensure_logged_in(box)
        box.plug_in(Path(stick["image"]))
        code, said = box.guest.run(f"udevadm wait --timeout=60 /dev/disk/by-label/UPDATES && "
                                   f"mount -o ro /dev/disk/by-label/UPDATES {MOUNT} && ls {MOUNT}")
        assert code == 0 and stick["new"] in said, said
        wait_for_health(box)
        report = status(box)
        assert re.search(r"booted slot: A", report) and re.search(r"slot B: version none, empty", report), report


def test_a_bundle_signed_by_an_untrusted_key_is_refused_before_anything_is_written(box, stick):
    with box.diagnosed():
        ensure_logged_in(box)
        code, entries_before = box.guest.run("ls /efi/loader/entries")
        code, said, _ = install(box, stick["untrusted"])
        assert code == 1 and "refused" in said, said
        # Slot B was never written: still zeros where a file system would start; the entries unchanged.
        assert box.guest.run("cmp -n 16777216 /dev/disk/by-partlabel/root-b /dev/zero")[0] == 0
        assert box.guest.run("ls /efi/loader/entries") == (0, entries_before)
        assert "slot B: version none, empty" in status(box)


def test_an_update_boots_the_new_version_which_finds_the_archive(box, stick):
    with box.diagnosed():
        ensure_logged_in(box)
        code, said, _ = install(box, stick["new"])
        assert code == 0, said
        report = status(box)
        assert "next boot: B" in report and "pending" in report, report
        assert reboot_until_echo(box, 1) == 1
        assert instances_found(box) == INSTANCES
        ensure_logged_in(box)
        assert box.guest.run("cat /usr/lib/appliance/version") == (0, f"{NEW_VERSION}\n")
        assert "rauc.slot=b" in box.guest.run("cat /proc/cmdline")[1]
        wait_for_health(box)
        report = status(box)
        assert f"slot B: version {NEW_VERSION}, good" in report and "succeeded" in report, report
        # The console's settings came along (the password just used), the configuration is /data's.
        assert box.guest.run("findmnt -no SOURCE /etc/appliance")[0] == 0


def test_a_rollback_boots_the_previous_version_which_finds_the_archive(box):
    with box.diagnosed():
        ensure_logged_in(box)
        code, said = box.guest.run("service-tool update rollback")
        assert code == 0 and f"slot A (version {IMAGE_VERSION}) boots next" in said, said
        assert "next boot: A" in status(box)
        assert reboot_until_echo(box, 1) == 1
        assert instances_found(box) == INSTANCES
        ensure_logged_in(box)
        assert box.guest.run("cat /usr/lib/appliance/version") == (0, f"{IMAGE_VERSION}\n")
        wait_for_health(box)
        report = status(box)
        assert f"slot A: version {IMAGE_VERSION}, good" in report, report
        assert f"slot B: version {NEW_VERSION}, good" in report, report
        assert re.search(rf"last update: rollback of version {re.escape(IMAGE_VERSION)} into slot A .*succeeded",
                         report), report


def test_an_update_whose_service_cannot_start_falls_back_by_itself(box, stick):
    with box.diagnosed():
        ensure_logged_in(box)
        code, said, _ = install(box, stick["broken"])
        assert code == 0 and "slot B" in said, said
        boots = reboot_until_echo(box, MAX_BOOTS)
        print(f"back on the previous slot after {boots} boots")
        assert boots >= 2  # the broken slot was tried, then the previous one booted
        assert instances_found(box) == INSTANCES
        ensure_logged_in(box)
        assert box.guest.run("cat /usr/lib/appliance/version") == (0, f"{IMAGE_VERSION}\n")
        assert "rauc.slot=a" in box.guest.run("cat /proc/cmdline")[1]
        report = status(box)
        assert f"slot B: version {BROKEN_VERSION}, bad" in report, report
        assert re.search(rf"last update: installed of version {BROKEN_VERSION} into slot B .*failed after \d+ "
                         r"boot\(s\), back on slot A: appliance.service failed", report), report
