"""The box's Debian tree: debootstrap with the image's package list, cached between builds.

A cold debootstrap downloads from deb.debian.org and unpacks; the tree is never written to
after it is built. Builds and the test suite work on a copy-on-write view of it
(`writable_copy`), so one download serves the image and the system tests' containers.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# On top of minbase: systemd as PID 1 with networkd (in `systemd`), resolved, timesyncd and
# D-Bus for the network (NW-13); udev and kmod for real hardware; netplan, which the box's
# network file is written in; tzdata for the time zone key; python3 and python3-venv for the
# service's own environment; the kernel (its postinst makes the initramfs, with Debian's default
# zstd when that is present: 30 MB instead of gzip's 36 MB); iproute2 and procps for looking
# inside from the console; openssl, which `service-tool tls key` and `tls csr` run (SE-08);
# rauc for the A/B updates (squashfs-tools: its unsquashfs reads a bundle's manifest), cloud-guest-utils
# (growpart) and e2fsprogs to grow the data partition
# (issue 21).
PACKAGES = ("systemd", "systemd-sysv", "systemd-resolved", "systemd-timesyncd", "dbus", "udev", "kmod",
            "netplan.io", "tzdata", "python3", "python3-venv", "zstd", "linux-image-amd64", "iproute2", "procps",
            "openssl", "rauc", "squashfs-tools", "cloud-guest-utils", "e2fsprogs")
DEBOOTSTRAP_TIMEOUT = 900  # s; about 2 min with a good link


def debootstrap(root: Path, packages: tuple[str, ...] = PACKAGES) -> None:
    """A minbase Debian `SUITE` with `packages` in `root` (which must not exist yet), without
    the downloaded .debs and package lists (the box installs nothing later)."""
    run(["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", SUITE, str(root), MIRROR],
        DEBOOTSTRAP_TIMEOUT)
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (root / cache).glob("*"):
            if entry.is_file():
                entry.unlink()


def tree_path(cache: Path) -> Path:
    """Where `cached_tree` keeps the tree: its name hashes what goes into it, so a changed
    package list builds a new one."""
    recipe = json.dumps([SUITE, MIRROR, PACKAGES]).encode()
    return cache / f"debian-{hashlib.sha256(recipe).hexdigest()[:16]}"


def cached_tree(cache: Path) -> Path:
    """The debootstrapped tree in `cache`, built on first use; concurrent callers (processes
    too) wait for one build."""
    root = tree_path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not root.is_dir():
            partial = cache / f"{root.name}.partial"
            _remove(partial)  # left by a build that was killed
            try:
                debootstrap(partial)
                partial.rename(root)  # only a finished tree gets the name
            finally:
                _remove(partial)
    return root


def _remove(tree: Path) -> None:
    """`tree` deleted, after unmounting what a killed debootstrap left mounted in it (its
    /proc and /sys), so the deletion never reaches into those."""
    mounted = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for target in sorted((m for m in mounted if m.startswith(f"{tree}/")), reverse=True):
        subprocess.run(["umount", "--lazy", target], capture_output=True, timeout=30)
    shutil.rmtree(tree, ignore_errors=True)


@contextlib.contextmanager
def writable_copy(lower: Path, work: Path):
    """A copy-on-write view of `lower` mounted at work/root (overlayfs, changes in work/upper),
    yielded as a path and unmounted on leaving; `lower` is never written to. About 10 ms,
    where a `cp -a` of the tree takes seconds (ext4 has no reflinks)."""
    upper, scratch, merged = work / "upper", work / "overlay-work", work / "root"
    for directory in (upper, scratch, merged):
        directory.mkdir(parents=True)
    run(["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={lower},upperdir={upper},workdir={scratch}", str(merged)], 30)
    try:
        yield merged
    finally:
        run(["umount", str(merged)], 30)


def enable(root: Path, units: tuple[str, ...]) -> None:
    """Enable `units` below `root` by their [Install] sections, as on the box."""
    run(["systemctl", f"--root={root}", "enable", *units], 60)


def write_files(root: Path, files: dict[str, str]) -> None:
    """`files` (path relative to `root` -> content) written, directories made as needed."""
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def run(command: list[str], timeout: float, **kwargs) -> str:
    """`command`'s output, failing with the end of it when it fails."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if done.returncode != 0:
        output = done.stdout[-3000:] + done.stderr[-3000:]
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{output}")
    return done.stdout


if __name__ == "__main__":  # python3 -m image.debian CACHE: build the cached tree ahead of use
    print(cached_tree(Path(sys.argv[1])))
