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
from .image_box import BUILD_TIMEOUT, DISK_SIZE, IMAGE_VERSION, QUERY_PORT, STORE_PORT, Box


def signing_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed update signing certificate and key, as an installer would make them."""
    cert, key = directory / f"{name}.cert.pem", directory / f"{name}.key.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                           "-subj", f"/O=e2e/CN={name}", "-keyout", str(key), "-out", str(cert)],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    return cert, key


@pytest.fixture(scope="package")
def signing(tmp_path_factory) -> tuple[Path, Path]:
    """The certificate the image trusts and its key, which bundles are signed with."""
    return signing_pair(tmp_path_factory.mktemp("keys"), "e2e-signing")


def build(output: Path, signing: tuple[Path, Path], *builds: tuple[str, ...]) -> None:
    """`python3 -m image.build` into `output` once per option tuple in `builds`, side by side
    (each is mostly one core's work), signed with `signing`; their output printed."""
    started = time.monotonic()
    cert, key = signing
    running = [(options, subprocess.Popen(
        [sys.executable, "-m", "image.build", "--output", str(output), "--cache", str(rootfs.cache_dir()),
         "--signing-cert", str(cert), "--signing-key", str(key), *options],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)) for options in builds]
    for options, process in running:
        said, _ = process.communicate(timeout=BUILD_TIMEOUT)
        assert process.returncode == 0, said[-6000:]
        print(f"{said}built ({' '.join(options)}) by {time.monotonic() - started:.0f} s")


@pytest.fixture(scope="package")
def image_dir(tmp_path_factory, signing) -> Path:
    output = tmp_path_factory.mktemp("image")
    build(output, signing, ("--version", IMAGE_VERSION))
    return output


@pytest.fixture(scope="package")
def box(image_dir, tmp_path_factory):
    """The box, powered on; QEMU is killed after the package's last test, whatever happened."""
    store_port, query_port, peer_port = free_port(), free_port(), free_port()
    consoles = tmp_path_factory.mktemp("console")
    os.truncate(image_dir / "appliance.raw", DISK_SIZE)  # a disk larger than the image, as on site
    box = Box(functools.partial(Guest, image_dir / "appliance.raw",
                                {store_port: STORE_PORT, query_port: QUERY_PORT}, peer_port),
              consoles, store_port, query_port, peer_port)
    box.power_on()
    try:
        yield box
    finally:
        box.guest.stop()
