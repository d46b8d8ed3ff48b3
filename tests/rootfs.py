"""A Debian root filesystem with the box's network stack (systemd-networkd, -resolved,
-timesyncd, -hostnamed, -timedated, D-Bus), built once with debootstrap and cached.

Three separate steps, so the appliance image can reuse the first two with its own lists:
`debootstrap(root, packages)`, `configure(root, units, files)`, and `cached_rootfs()`, which
runs both for the system tests' container. A cold build took 57-63 s on a 2-core machine
(debootstrap downloads from deb.debian.org; allow 2-3 min on a slower link); the tree is
163 MB. Later runs reuse it. `writable_copy()` gives each test a private overlay on
top of it in about 10 ms (a `cp -a` takes 1 s, ext4 has no reflinks); the cache itself is
never written to after the build.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What the box's network stack needs on top of minbase. networkd and hostnamed/timedated are in
# `systemd`; tzdata gives timedated its zones; iproute2 is for looking inside when debugging.
PACKAGES = ("systemd", "systemd-sysv", "systemd-resolved", "systemd-timesyncd", "dbus",
            "iproute2", "tzdata")
ENABLED_UNITS = ("systemd-networkd.service", "systemd-resolved.service", "systemd-timesyncd.service")
FILES = {
    # debootstrap copies the build machine's /etc/hostname and writes no /etc/hosts.
    "etc/hostname": "appliance\n",
    "etc/hosts": "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
    # Only for running it as a container: timesyncd skips itself in a container and without
    # CAP_SYS_TIME, which the container must not have (it would set the host's clock). Its
    # D-Bus API and the servers it picks work without it.
    "etc/systemd/system/systemd-timesyncd.service.d/50-container.conf":
        "[Unit]\nConditionVirtualization=\nConditionCapability=\n",
}
DEBOOTSTRAP_TIMEOUT = 900  # s; about 1 min with a good link


def cache_dir() -> Path:
    """Where built trees are kept between runs: $XDG_CACHE_HOME/appliance-tests, else
    /var/cache/appliance-tests (the tests run as root)."""
    base = os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "appliance-tests" if base else Path("/var/cache/appliance-tests")


def debootstrap(root: Path, packages: tuple[str, ...]) -> None:
    """A minbase Debian `SUITE` with `packages` in `root` (which must not exist yet)."""
    run(["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", SUITE, str(root), MIRROR],
        DEBOOTSTRAP_TIMEOUT)
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (root / cache).glob("*"):
            if entry.is_file():
                entry.unlink()


def configure(root: Path, units: tuple[str, ...], files: dict[str, str]) -> None:
    """Enable `units` (their [Install] sections, as on the box) and write `files` (path
    relative to the root -> content)."""
    run(["systemctl", f"--root={root}", "enable", *units], 60)
    write_files(root, files)


def write_files(root: Path, files: dict[str, str]) -> None:
    """`files` (path relative to `root` -> content) written, directories made as needed."""
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def cached_rootfs() -> Path:
    """The system tests' tree, built on first use. Its name hashes everything that goes into
    it, so a change to the lists builds a new one. Concurrent runs wait for one build."""
    recipe = json.dumps([SUITE, MIRROR, PACKAGES, ENABLED_UNITS, FILES]).encode()
    cache = cache_dir()
    root = cache / f"rootfs-{hashlib.sha256(recipe).hexdigest()[:16]}"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not root.is_dir():
            partial = cache / f"{root.name}.partial"
            shutil.rmtree(partial, ignore_errors=True)  # left by a build that was killed
            try:
                debootstrap(partial, PACKAGES)
                configure(partial, ENABLED_UNITS, FILES)
                partial.rename(root)  # only a finished tree gets the name
            finally:
                shutil.rmtree(partial, ignore_errors=True)
    return root


@contextlib.contextmanager
def writable_copy(lower: Path, work: Path):
    """A copy-on-write view of `lower` mounted at work/root (overlayfs, changes in work/upper),
    yielded as a path and unmounted on leaving; `lower` is never written to."""
    upper, scratch, merged = work / "upper", work / "overlay-work", work / "root"
    for directory in (upper, scratch, merged):
        directory.mkdir(parents=True)
    run(["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={lower},upperdir={upper},workdir={scratch}", str(merged)], 30)
    try:
        yield merged
    finally:
        run(["umount", str(merged)], 30)


def run(command: list[str], timeout: float) -> None:
    """`command`, failing with its output when it fails."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        output = done.stdout[-3000:] + done.stderr[-3000:]
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{output}")
