"""Update bundles and the box's keyring, with Debian's RAUC (issue 21): what
`python3 -m image.build --bundle` makes (image/build.py's make_bundle) verifies against the
certificate the box carries and no other, and the signing-key replacement that
docs/installation.md describes works: a keyring holding the old and the new certificate
accepts bundles signed by either, so boxes updated to it take the new key's bundles.

The bundles hold a small file system instead of a built slot: RAUC signs and checks the
squashfs whatever it holds (the e2e tests install real ones)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from image.build import make_bundle

pytestmark = pytest.mark.unit


def signing_pair(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.cert.pem", directory / f"{name}.key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                    "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=120)
    return cert, key


def bundle(tmp_path: Path, name: str, signer: tuple[Path, Path]) -> Path:
    slot_fs = tmp_path / f"{name}.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "root", str(slot_fs), "4M"], check=True, capture_output=True)
    return make_bundle(slot_fs, "1.1.0", *signer, tmp_path / f"{name}-content", tmp_path / f"{name}.raucb")


def verifies(bundle: Path, keyring: Path) -> bool:
    info = subprocess.run(["rauc", "info", "--output-format=json", f"--keyring={keyring}", str(bundle)],
                          capture_output=True, text=True, timeout=120)
    if info.returncode == 0:
        assert json.loads(info.stdout)["compatible"] == "dicom-archive-appliance"
    else:
        assert "signature" in info.stderr.lower() or "verif" in info.stderr.lower(), info.stderr
    return info.returncode == 0


def test_a_bundle_verifies_against_its_signers_certificate_only(tmp_path):
    ours, theirs = signing_pair(tmp_path, "ours"), signing_pair(tmp_path, "theirs")
    made = bundle(tmp_path, "ours", ours)
    assert verifies(made, ours[0])
    assert not verifies(made, theirs[0])


def test_a_keyring_with_the_old_and_new_certificates_takes_bundles_of_either(tmp_path):
    old, new = signing_pair(tmp_path, "old"), signing_pair(tmp_path, "new")
    both = tmp_path / "keyring.pem"
    both.write_text(old[0].read_text() + new[0].read_text())
    by_old, by_new = bundle(tmp_path, "by-old", old), bundle(tmp_path, "by-new", new)
    # A box still on the old keyring refuses the new key's bundles; one updated to both takes them.
    assert not verifies(by_new, old[0])
    assert verifies(by_old, both) and verifies(by_new, both)
