"""The system tests' container tree: the appliance image's Debian tree (image/debian.py, one
debootstrap cached for both) with the box's network daemons enabled, booted with systemd-nspawn.

A cold debootstrap takes about 2 min on a 2-core machine (it downloads from deb.debian.org);
later runs reuse the tree. Each test gets a private overlay on top (`writable_copy`, about
10 ms); the cached tree is never written to after its build.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import REPO
from image import debian
from image.build import NETWORK_UNITS

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


def cache_dir() -> Path:
    """Where built trees are kept between runs: $XDG_CACHE_HOME/appliance-tests, else
    /var/cache/appliance-tests (the tests run as root)."""
    base = os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "appliance-tests" if base else Path("/var/cache/appliance-tests")


def build_in_background() -> None:
    """Start building the tree when it is not cached yet (about 2.5 min, mostly downloading
    and dpkg), so that it is ready by the time the tests that need it run. `cached_rootfs`
    waits for the build (the cache's lock) and, if it failed, tries again and reports why.
    The build is left to finish even if the test run ends first: the next run has the tree."""
    if debian.tree_path(cache_dir()).is_dir():
        return
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / "background-build.log", "w") as log:
        subprocess.Popen([sys.executable, "-m", "image.debian", str(cache_dir())], cwd=REPO,
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def cached_rootfs() -> Path:
    """The Debian tree, built on first use; `prepare` makes a writable copy of it the test box."""
    return debian.cached_tree(cache_dir())


def prepare(root: Path, files: dict[str, str]) -> None:
    """A writable copy of the tree made the system tests' box, with `files` added."""
    debian.enable(root, NETWORK_UNITS)
    debian.write_files(root, {**FILES, **files})
