"""The e2e tests' one box: the appliance image built once (the Debian tree from the tests' cache,
built on first use: about 2 min; the image itself under a minute) and booted under QEMU on its
own disk, which every module of tests/e2e uses in turn (image_box.py). Both fixtures are the
package's: QEMU goes after its last test, before the other `debian_tree` tests run."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import rootfs
from helpers import REPO, free_port

from .guest import Guest
from .image_box import BUILD_TIMEOUT, DISK_SIZE, QUERY_PORT, STORE_PORT, Box


@pytest.fixture(scope="package")
def image_dir(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("image")
    started = time.monotonic()
    built = subprocess.run([sys.executable, "-m", "image.build", "--output", str(output),
                            "--cache", str(rootfs.cache_dir())],
                           cwd=REPO, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    print(f"{built.stdout}image built in {time.monotonic() - started:.0f} s")
    return output


@pytest.fixture(scope="package")
def box(image_dir, tmp_path_factory):
    """The box, powered on; QEMU is killed after the package's last test, whatever happened."""
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
