"""The box's two root slots as systemd-boot sees them: one loader entry per slot on the EFI
system partition, with boot counting in the file name (issue 21).

    loader/entries/appliance-<priority>-<slot>[+<left>[-<done>]].conf

systemd-boot sorts entries whose counter reached +0 ("bad") last and the others by name, the
highest priority number first; loader.conf's `default appliance-*` picks the first. So the
primary slot is the one with the highest priority that is not bad. An entry with a counter is
on trial: each boot of it counts one try down (systemd-boot renames the file before starting
the kernel), and the health check (`service-tool update health`) removes the counter once the
service answers; an entry at +0 is skipped, and the other slot boots instead. Each slot's kernel
and initramfs are on the ESP too, in /<slot>/, copied from the slot's /boot when it is made
primary.

Used by the image build (the first entry) and by `service-tool update` on the box; pure file
operations on an ESP directory, so the unit tests run them on a temporary one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from appliance.durable import fsync_dir, fsync_file

SLOTS = ("a", "b")
TRIES = 2  # boots an updated slot gets to pass the health check before the other slot is booted
ENTRIES = Path("loader/entries")
_NAME = re.compile(r"^appliance-(\d+)-([ab])(?:\+(\d+)(?:-(\d+))?)?\.conf$")
LOADER_CONF = "timeout 0\ndefault appliance-*\neditor no\nconsole-mode keep\n"
CONSOLE = "console=tty0 console=ttyS0,115200"


@dataclass(frozen=True)
class Entry:
    path: Path
    priority: int
    slot: str
    left: int | None  # tries left; None: no counter (good)
    done: int

    @property
    def bad(self) -> bool:
        return self.left == 0

    @property
    def on_trial(self) -> bool:
        return self.left is not None and self.left > 0

    @property
    def state(self) -> str:
        return "bad" if self.bad else "on trial" if self.on_trial else "good"


def kernel_command_line(slot: str) -> str:
    """The slot's root, mounted writable by the initramfs (the image's fstab has no / line: both
    slots share it); rauc.slot tells RAUC which slot is booted. panic=10: a kernel panic, or an
    initramfs that cannot mount the root (it panics instead of waiting at its shell when panic=
    is set), reboots after 10 s, so a slot on trial that cannot boot spends its tries and the
    other slot boots, instead of the box hanging with nobody at its console."""
    return f"root=PARTLABEL=root-{slot} rw rauc.slot={slot} panic=10 {CONSOLE}"


def entry_text(slot: str, version: str) -> str:
    return (f"title DICOM archive appliance {version} (slot {slot.upper()})\n"
            f"version {version}\n"
            f"linux /{slot}/vmlinuz\n"
            f"initrd /{slot}/initrd.img\n"
            f"options {kernel_command_line(slot)}\n")


def entries(esp: Path) -> list[Entry]:
    """The slots' entries, in systemd-boot's order: not bad first, then the highest priority."""
    found = []
    directory = esp / ENTRIES
    for path in directory.iterdir() if directory.is_dir() else ():
        if match := _NAME.match(path.name):
            priority, slot, left, done = match.groups()
            found.append(Entry(path, int(priority), slot, None if left is None else int(left), int(done or 0)))
    return sorted(found, key=lambda entry: (entry.bad, -entry.priority))


def entry(esp: Path, slot: str) -> Entry | None:
    return next((found for found in entries(esp) if found.slot == slot), None)


def primary(esp: Path) -> str | None:
    """The slot systemd-boot boots next."""
    usable = [found for found in entries(esp) if not found.bad]
    return usable[0].slot if usable else None


def _rename(old: Path, new_name: str) -> None:
    if old.name != new_name:
        os.rename(old, old.with_name(new_name))
        fsync_dir(old.parent)


def mark_good(esp: Path, slot: str) -> bool:
    """The counter removed from `slot`'s entry; False when it has no entry."""
    found = entry(esp, slot)
    if found is None:
        return False
    _rename(found.path, f"appliance-{found.priority}-{slot}.conf")
    return True


def mark_bad(esp: Path, slot: str) -> bool:
    """`slot`'s entry at +0: systemd-boot boots it no more (RAUC does this before it writes the slot)."""
    found = entry(esp, slot)
    if found is None:
        return False
    _rename(found.path, f"appliance-{found.priority}-{slot}+0-{found.done}.conf")
    return True


def make_primary(esp: Path, slot: str, version: str, tries: int | None = TRIES) -> Path:
    """`slot`'s entry written with a priority above every other and, unless `tries` is None,
    `tries` boots to pass the health check. The kernel must be in /<slot>/ already."""
    others = [found for found in entries(esp)]
    priority = max((found.priority for found in others), default=0) + 1
    counter = "" if tries is None else f"+{tries}"
    directory = esp / ENTRIES
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"appliance-{priority}-{slot}{counter}.conf"
    temporary = directory / f".{slot}.tmp"
    temporary.write_text(entry_text(slot, version))
    fsync_file(temporary)
    os.rename(temporary, path)
    for found in others:
        if found.slot == slot:
            found.path.unlink()
    fsync_dir(directory)
    return path
