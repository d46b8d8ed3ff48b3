"""`service-tool update install|status|rollback` (issue 21): firmware-style A/B updates with RAUC.

The box has two root slots (A and B) and a data partition (/data: archive, configuration,
journal, RAUC's and this module's records), which no update touches. `install FILE` has RAUC
check the bundle's signature against the image's keyring (/etc/rauc/keyring.pem) and write it
into the slot not booted; RAUC then calls this module's boot loader backend (`update backend`,
system.conf's bootloader-custom-backend), which makes that slot primary on trial: its kernel
copied to the EFI system partition, the box's settings copied into it, its loader entry given
TRIES boots (service_tool/slots.py). `update health` (appliance-health.service, every boot)
marks the booted slot good once the service is READY and both SCP AEs answer C-ECHO; on a slot
on trial that fails it reboots, and after TRIES failed boots systemd-boot boots the other slot.
`status` reads the entries and the records in /data/update/history.jsonl.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from appliance.durable import fsync_dir, fsync_file
from appliance.store.db import MIGRATING
from service_tool import slots

ESP = Path(os.environ.get("APPLIANCE_ESP", "/efi"))
RECORDS = Path(os.environ.get("APPLIANCE_UPDATE_RECORDS", "/data/update"))
VERSION_FILE = Path("/usr/lib/appliance/version")
HEALTH_TIMEOUT = 180  # s from the health check's start for appliance.service to be READY
MIGRATION_TIMEOUT = 4 * 3600  # s the check waits for a start that is migrating the index
EXIT_FAILED = 1
# The box's own settings, made on the console after its installation, copied from the running
# slot into the slot made primary (the configuration, archive and journal are on /data).
CARRIED = ("etc/hostname", "etc/hosts", "etc/localtime", "etc/timezone", "etc/machine-id", "etc/netplan",
           "etc/systemd/system/appliance.service.d")


def register(groups) -> None:
    command = groups.add_parser(
        "update", help="install a signed update bundle, show the slots, roll back (A/B, RAUC)",
        description="Firmware-style updates: the box runs from one of two root slots (A, B); an update "
                    "bundle (.raucb, signed) is written into the other one and booted on trial; it is kept "
                    "only when the service comes up and answers C-ECHO, else the box returns to the previous "
                    "slot by itself. The archive, configuration and journal are on the data partition, which "
                    "no update touches.")
    commands = command.add_subparsers(dest="update_command", metavar="ACTION", required=True)
    install = commands.add_parser(
        "install", help="verify a bundle's signature and write it into the inactive slot",
        description="Verify FILE's signature against the box's keyring, then write it into the slot not "
                    "booted and make that slot the next boot's, on trial. Exit 0 when installed (reboot to "
                    "start it), 1 when refused or failed (nothing is booted differently).")
    install.add_argument("file", type=Path, metavar="FILE", help="the .raucb bundle (a path, e.g. on a USB stick "
                                                                  "mounted at /mnt)")
    install.add_argument("--reboot", action="store_true", help="reboot once installed")
    install.set_defaults(run=run_install)
    status = commands.add_parser("status", help="booted slot, both slots' versions and states, last update's outcome")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=run_status)
    rollback = commands.add_parser(
        "rollback", help="make the other slot the next boot's (on trial, like an update)",
        description="Make the slot not booted the next boot's; it must hold a system (an earlier update or "
                    "the factory image). Its health is checked on that boot as after an update.")
    rollback.add_argument("--reboot", action="store_true", help="reboot at once")
    rollback.set_defaults(run=run_rollback)
    health = commands.add_parser("health", help="(appliance-health.service) mark the booted slot good, or fall back")
    health.add_argument("--timeout", type=float, default=HEALTH_TIMEOUT)
    health.set_defaults(run=run_health)
    backend = commands.add_parser("backend", help="(RAUC) the custom boot loader backend")
    backend.add_argument("action", choices=("get-primary", "set-primary", "get-state", "set-state"))
    backend.add_argument("slot", nargs="?")
    backend.add_argument("state", nargs="?", choices=("good", "bad"))
    backend.set_defaults(run=run_backend)


# --- records ---------------------------------------------------------------------------------

def record(event: str, **fields) -> None:
    """One line appended to /data/update/history.jsonl, on the disk before returning."""
    RECORDS.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": event, **fields})
    with open(RECORDS / "history.jsonl", "a") as file:
        file.write(line + "\n")
        file.flush()
        os.fsync(file.fileno())


def history() -> list[dict]:
    path = RECORDS / "history.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def booted_slot() -> str | None:
    for word in Path("/proc/cmdline").read_text().split():
        if word.startswith("rauc.slot="):
            return word.removeprefix("rauc.slot=")
    return None


def own_version() -> str:
    return VERSION_FILE.read_text().strip() if VERSION_FILE.exists() else "unknown"


def slot_versions(events: list[dict]) -> dict[str, str]:
    """Each slot's version as last recorded (made primary, or booted and checked)."""
    versions: dict[str, str] = {}
    for event in events:
        if event.get("slot") and event.get("version") and event["event"] in ("activated", "health"):
            versions[event["slot"]] = event["version"]
    return versions


# --- the boot loader backend (RAUC) ------------------------------------------------------------

def run_backend(args) -> int:
    action, slot = args.action, args.slot
    if action == "get-primary":
        found = slots.primary(ESP)
        if found is None:
            print("no usable loader entry", file=sys.stderr)
            return EXIT_FAILED
        print(found)
        return 0
    if slot not in slots.SLOTS:
        print(f"unknown slot {slot!r}", file=sys.stderr)
        return EXIT_FAILED
    if action == "get-state":
        found = slots.entry(ESP, slot)
        print("good" if found is not None and not found.bad else "bad")
        return 0
    if action == "set-state":
        if args.state == "good":
            slots.mark_good(ESP, slot)
        else:
            slots.mark_bad(ESP, slot)
        return 0
    activate(slot)  # set-primary
    return 0


def activate(slot: str) -> str:
    """`slot` made the next boot's, on trial: its kernel and initramfs to the ESP, the running
    box's settings into it, its entry first with slots.TRIES boots. Its version."""
    device = Path(f"/dev/disk/by-partlabel/root-{slot}")
    with tempfile.TemporaryDirectory(prefix=f"slot-{slot}-") as mountpoint:
        subprocess.run(["mount", str(device), mountpoint], check=True, capture_output=True, text=True)
        try:
            root = Path(mountpoint)
            version_file = root / VERSION_FILE.relative_to("/")
            version = version_file.read_text().strip() if version_file.exists() else "unknown"
            copy_boot_files(root, ESP / slot)
            if slot != booted_slot():
                carry_settings(Path("/"), root)
        finally:
            subprocess.run(["umount", mountpoint], check=True, capture_output=True, text=True)
    slots.make_primary(ESP, slot, version)
    record("activated", slot=slot, version=version, tries=slots.TRIES)
    return version


def copy_boot_files(root: Path, target: Path) -> None:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise RuntimeError(f"no kernel in {root}/boot")
    release = kernels[-1].name.removeprefix("vmlinuz-")
    target.mkdir(parents=True, exist_ok=True)
    for source, name in ((kernels[-1], "vmlinuz"), (root / "boot" / f"initrd.img-{release}", "initrd.img")):
        temporary = target / f".{name}.tmp"
        shutil.copyfile(source, temporary)
        fsync_file(temporary)
        os.rename(temporary, target / name)
    fsync_dir(target)


def carry_settings(source: Path, target: Path) -> None:
    """The console's settings (CARRIED, root's password) from the running system into a slot."""
    for relative in CARRIED:
        there, here = target / relative, source / relative
        if not (here.exists() or here.is_symlink()):
            continue
        if there.is_dir() and not there.is_symlink():
            shutil.rmtree(there)
        elif there.exists() or there.is_symlink():
            there.unlink()
        there.parent.mkdir(parents=True, exist_ok=True)
        if here.is_symlink():
            there.symlink_to(os.readlink(here))
        elif here.is_dir():
            shutil.copytree(here, there, symlinks=True)
        else:
            shutil.copy2(here, there)
    root_line = next((line for line in (source / "etc/shadow").read_text().splitlines()
                      if line.startswith("root:")), None)
    if root_line is not None:
        shadow = target / "etc/shadow"
        lines = [root_line if line.startswith("root:") else line for line in shadow.read_text().splitlines()]
        shadow.write_text("\n".join(lines) + "\n")


# --- install, rollback -------------------------------------------------------------------------

def run_install(args) -> int:
    bundle = args.file.resolve()
    if not bundle.is_file():
        print(f"refused: {args.file} is not a file", file=sys.stderr)
        return EXIT_FAILED
    # Checked before RAUC is asked to write anything: signature (the keyring), compatible.
    info = subprocess.run(["rauc", "info", "--output-format=json", str(bundle)], capture_output=True, text=True)
    if info.returncode != 0:
        print(f"refused: {bundle.name} does not verify against the box's keyring; nothing was written.\n"
              f"{info.stderr.strip()}", file=sys.stderr)
        record("refused", bundle=bundle.name, reason=info.stderr.strip()[-500:])
        return EXIT_FAILED
    version = json.loads(info.stdout).get("version", "?")
    booted = booted_slot()
    print(f"bundle {bundle.name}: version {version}, signature verified; installing into the slot not booted "
          f"(booted: {booted})", flush=True)
    started = time.monotonic()
    installed = subprocess.run(["rauc", "install", str(bundle)], capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if installed.returncode != 0:
        print(f"install failed after {elapsed:.0f} s:\n{installed.stdout[-2000:]}{installed.stderr[-2000:]}",
              file=sys.stderr)
        record("install-failed", bundle=bundle.name, version=version, reason=installed.stderr.strip()[-500:])
        return EXIT_FAILED
    target = slots.primary(ESP)
    record("installed", bundle=bundle.name, version=version, slot=target, seconds=round(elapsed, 1))
    print(f"installed version {version} into slot {str(target).upper()} in {elapsed:.0f} s; it boots next, "
          f"on trial ({slots.TRIES} boots to pass the health check, else slot {str(booted).upper()} again)")
    if args.reboot:
        subprocess.run(["systemctl", "reboot"], check=False)
    else:
        print("reboot to start it: systemctl reboot")
    return 0


def run_rollback(args) -> int:
    booted = booted_slot()
    other = next(slot for slot in slots.SLOTS if slot != booted)
    if slots.entry(ESP, other) is None or not (ESP / other / "vmlinuz").exists():
        print(f"refused: slot {other.upper()} holds no system to boot", file=sys.stderr)
        return EXIT_FAILED
    version = activate(other)
    record("rollback", slot=other, version=version, booted=booted)
    print(f"slot {other.upper()} (version {version}) boots next, on trial; reboot to start it: systemctl reboot")
    if args.reboot:
        subprocess.run(["systemctl", "reboot"], check=False)
    return 0


# --- health --------------------------------------------------------------------------------------

def service_property(name: str) -> str:
    return subprocess.run(["systemctl", "show", "-P", name, "appliance.service"],
                          capture_output=True, text=True).stdout.strip()


def check_health(timeout: float) -> str | None:
    """None when appliance.service is READY and both SCP AEs answer C-ECHO; else why not."""
    if (reason := wait_until_ready(timeout)) is not None:
        return reason
    echoed = subprocess.run([sys.executable, "-m", "service_tool.cli", "echo", "--local"],
                            capture_output=True, text=True, timeout=120)
    if echoed.returncode != 0:
        return f"C-ECHO of the box's own AEs failed: {(echoed.stdout + echoed.stderr).strip()[-300:]}"
    return None


def wait_until_ready(timeout: float) -> str | None:
    """None once appliance.service is READY (active) within `timeout`; else why not. A start
    that says it is migrating the index (the first boot of a newer version on a large archive)
    is waited for up to MIGRATION_TIMEOUT instead."""
    started = time.monotonic()
    deadline = started + timeout
    state = service_property("ActiveState")
    while state != "active":
        if state == "failed":
            said = subprocess.run(["systemctl", "show", "-P", "Result,ExecMainStatus", "appliance.service"],
                                  capture_output=True, text=True).stdout.split()
            return f"appliance.service failed ({' '.join(said)})"
        now = time.monotonic()
        if service_property("StatusText").startswith(MIGRATING) and now < started + MIGRATION_TIMEOUT:
            deadline = max(deadline, now + timeout)
        if now > deadline:
            return f"appliance.service not READY within {now - started:.0f} s (state {state})"
        time.sleep(1)
        state = service_property("ActiveState")
    return None


def run_health(args) -> int:
    slot, version = booted_slot(), own_version()
    before = slots.entry(ESP, slot) if slot else None
    reason = check_health(args.timeout)
    left = None if before is None else before.left
    record("health", slot=slot, version=version, ok=reason is None, reason=reason, left=left)
    if reason is None:
        if slot:
            slots.mark_good(ESP, slot)
        print(f"slot {str(slot).upper()} (version {version}) healthy: marked good")
        return 0
    print(f"slot {str(slot).upper()} (version {version}) unhealthy: {reason}", file=sys.stderr)
    if before is not None and before.left is not None:
        # On trial after an update: reboot; systemd-boot tries it again while tries are left,
        # then boots the other slot.
        print(f"on trial ({before.left} tries left): rebooting", file=sys.stderr, flush=True)
        subprocess.run(["systemctl", "reboot", "--no-block"], check=False)
    return EXIT_FAILED


# --- status ----------------------------------------------------------------------------------------

def describe() -> dict:
    events = history()
    booted = booted_slot()
    versions = slot_versions(events)
    if booted:
        versions[booted] = own_version()
    primary = slots.primary(ESP)
    report = {"booted": booted, "primary": primary, "slots": {}}
    for slot in slots.SLOTS:
        found = slots.entry(ESP, slot)
        report["slots"][slot] = {
            "version": versions.get(slot, "none" if found is None else "unknown"),
            "state": "empty" if found is None else found.state,
            "tries_left": None if found is None else found.left,
        }
    report["last_update"] = last_update(events, booted)
    return report


def last_update(events: list[dict], booted: str | None) -> dict | None:
    """The last install or rollback and what became of it."""
    index = next((i for i in range(len(events) - 1, -1, -1) if events[i]["event"] in ("installed", "rollback")), None)
    if index is None:
        return None
    update = events[index]
    slot = update.get("slot")
    checks = [event for event in events[index + 1:] if event["event"] == "health" and event.get("slot") == slot]
    failures = [event for event in checks if not event["ok"]]
    found = slots.entry(ESP, slot) if slot else None
    if any(event["ok"] for event in checks):
        outcome = "succeeded: the health check passed"
    elif found is not None and found.bad:
        reason = failures[-1]["reason"] if failures else "its boots did not reach the health check"
        outcome = (f"failed after {len(failures) or found.done} boot(s), back on slot {str(booted).upper()}: "
                   f"{reason}")
    elif failures:
        outcome = f"on trial, {found.left if found else '?'} tries left; last check: {failures[-1]['reason']}"
    else:
        outcome = "pending: reboot to start it"
    return {"event": update["event"], "time": update["time"], "slot": slot, "version": update.get("version"),
            "outcome": outcome}


def run_status(args) -> int:
    report = describe()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"booted slot: {str(report['booted']).upper()}   next boot: {str(report['primary']).upper()}")
    for slot, shown in report["slots"].items():
        tries = f", {shown['tries_left']} tries left" if shown["state"] == "on trial" else ""
        print(f"slot {slot.upper()}: version {shown['version']}, {shown['state']}{tries}")
    update = report["last_update"]
    if update is None:
        print("last update: none")
    else:
        print(f"last update: {update['event']} of version {update['version']} into slot "
              f"{str(update['slot']).upper()} at {update['time']}: {update['outcome']}")
    return 0
