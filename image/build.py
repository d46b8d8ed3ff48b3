"""`python3 -m image.build --output DIR`: the appliance's disk image, from Debian packages and
the project's own wheel (with the wheels of its pinned Python dependencies, from PyPI).

Run as root from the project's checkout (debootstrap, an overlay mount and chroot need it).
The disk is firmware-style (issue 21): GPT with an EFI system partition (systemd-boot, each
slot's kernel and initramfs, the loader entries), two root slots A and B (the image fills A; B
is empty until the first update) and a data partition (/data: the archive, the configuration,
the journal, the update records), which grows to the disk's end on the first boot. It boots
on UEFI firmware (QEMU with OVMF, a PC) with nothing beside it. DIR receives:
  appliance.raw   the whole disk
  appliance.qcow2 with --qcow2, the same disk compressed, for distribution
  appliance-VERSION.raucb  with --bundle, the update bundle of the same system (RAUC, signed)
  dev-keys/       the development signing key and certificate, made when neither --signing-key
                  nor --signing-cert is given (never for production: docs/installation.md)
The Debian tree is downloaded each time unless --cache names a directory to keep it in.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from appliance import __version__
from image import debian
from service_tool import slots

REPO = Path(__file__).resolve().parent.parent
VENV = Path("opt/appliance/venv")
LABEL = "appliance"
COMPATIBLE = "dicom-archive-appliance"  # system/rauc/system.conf's: a bundle must name it
# The disk: (GPT partition name, type, MiB). Linux generic data for the slots and the data
# partition (not the discoverable root type: the kernel command line names the slot).
ESP_TYPE, LINUX_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
PARTITIONS = (("esp", ESP_TYPE, 256), ("root-a", LINUX_TYPE, 1536), ("root-b", LINUX_TYPE, 1536),
              ("data", LINUX_TYPE, 256))
FIRST_MIB = 1  # the partitions start at 1 MiB; the backup GPT takes the disk's last MiB
SYSTEMD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")  # Debian's systemd-boot-efi
# What the data partition holds, bound to where the system expects it (fstab below).
DATA_BINDS = {"appliance": "/var/lib/appliance", "etc-appliance": "/etc/appliance", "journal": "/var/log/journal"}
# Project file -> (path in the image, mode). The unit's ExecStart names the venv above; the
# config file is installed as the pristine copy the first boot copies to /etc (tmpfiles.d).
SYSTEM_FILES = {
    "system/systemd/appliance.service": ("usr/lib/systemd/system/appliance.service", 0o644),
    "system/sysusers.d/appliance.conf": ("usr/lib/sysusers.d/appliance.conf", 0o644),
    "system/tmpfiles.d/appliance.conf": ("usr/lib/tmpfiles.d/appliance.conf", 0o644),
    "system/journald.conf.d/50-appliance.conf": ("usr/lib/systemd/journald.conf.d/50-appliance.conf", 0o644),
    "system/system.conf.d/50-appliance.conf": ("usr/lib/systemd/system.conf.d/50-appliance.conf", 0o644),
    "system/resolved.conf.d/50-appliance.conf": ("usr/lib/systemd/resolved.conf.d/50-appliance.conf", 0o644),
    "system/sysctl.d/60-appliance-net.conf": ("usr/lib/sysctl.d/60-appliance-net.conf", 0o644),
    "system/appliance.toml": ("usr/share/appliance/appliance.toml", 0o644),
    # netplan warns about (and networkd's generator skips nothing, but secrets could sit in)
    # a world-readable file.
    "system/netplan/90-appliance.yaml": ("etc/netplan/90-appliance.yaml", 0o600),
    "system/issue": ("etc/issue", 0o644),
    # Updates (issue 21): RAUC's configuration and D-Bus service, its boot loader backend, the
    # health check, the data partition's growth.
    "system/rauc/system.conf": ("etc/rauc/system.conf", 0o644),
    "system/rauc/rauc-backend": ("usr/lib/appliance/rauc-backend", 0o755),
    "system/rauc/grow-data": ("usr/lib/appliance/grow-data", 0o755),
    "system/systemd/rauc.service": ("usr/lib/systemd/system/rauc.service", 0o644),
    "system/dbus-1/de.pengutronix.rauc.conf": ("usr/share/dbus-1/system.d/de.pengutronix.rauc.conf", 0o644),
    "system/dbus-1/de.pengutronix.rauc.service": ("usr/share/dbus-1/system-services/de.pengutronix.rauc.service",
                                                  0o644),
    "system/systemd/appliance-health.service": ("usr/lib/systemd/system/appliance-health.service", 0o644),
    "system/systemd/appliance-grow-data.service": ("usr/lib/systemd/system/appliance-grow-data.service", 0o644),
}
NETWORK_UNITS = ("systemd-networkd.service", "systemd-resolved.service", "systemd-timesyncd.service")
ENABLED_UNITS = NETWORK_UNITS + ("appliance.service", "appliance-health.service", "appliance-grow-data.service")
# The box installs nothing after its build (an update bundle replaces its slot): apt need not wake daily.
DISABLED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer")
# systemd-boot's own blessing would mark an entry good at boot-complete.target, whatever the
# service does; the health check does it instead (service_tool/update_cmd.py).
MASKED_UNITS = ("systemd-bless-boot.service",)
FILES = {
    "etc/hostname": "appliance\n",
    "etc/hosts": "127.0.0.1 localhost\n127.0.1.1 appliance\n::1 localhost ip6-localhost ip6-loopback\n",
    # / is the booted slot, which the kernel command line names and the initramfs mounts
    # (service_tool/slots.py), so no line here: both slots have this file. /data is checked on
    # every boot (the box is switched off without a shutdown) and grown to fill the disk
    # (appliance-grow-data.service grows the partition first); the archive, the configuration
    # and the journal are on it.
    "etc/fstab": ("PARTLABEL=data /data ext4 defaults,x-systemd.growfs 0 2\n"
                  + "".join(f"/data/{source} {target} none bind,x-systemd.requires-mounts-for=/data 0 0\n"
                            for source, target in DATA_BINDS.items())
                  + "PARTLABEL=esp /efi vfat umask=0077,nofail 0 0\n"),
    # Empty: each box makes its own machine ID on its first boot (and systemd counts that boot
    # as the first one).
    "etc/machine-id": "",
}
IMAGE_PYTHON = (3, 11)
DEFAULT_PASSWORD = "appliance"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m image.build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True, help="directory for the image (and bundle)")
    parser.add_argument("--cache", type=Path, help="keep the downloaded Debian tree here and reuse it")
    parser.add_argument("--password", default=DEFAULT_PASSWORD,
                        help="root's initial password, which the first login must change "
                             f"(default {DEFAULT_PASSWORD!r})")
    parser.add_argument("--version", default=__version__,
                        help=f"the system's version, in the image and its bundle (default: the project's, {__version__})")
    parser.add_argument("--bundle", action="store_true", help="also write the update bundle appliance-VERSION.raucb")
    parser.add_argument("--no-image", action="store_true", help="with --bundle: the bundle only, no disk image")
    parser.add_argument("--signing-cert", type=Path,
                        help="PEM certificate the box trusts (its RAUC keyring) and bundles are signed with")
    parser.add_argument("--signing-key", type=Path, help="PEM private key of --signing-cert (for --bundle)")
    parser.add_argument("--overlay", type=Path,
                        help="a directory whose files are copied over the system last (site additions; the "
                             "tests use it for a bundle whose service cannot start)")
    parser.add_argument("--qcow2", action="store_true", help="also write appliance.qcow2 (compressed)")
    args = parser.parse_args(argv)
    tools = ["debootstrap", "mkfs.ext4", "resize2fs", "chroot", "sfdisk", "mkfs.vfat", "mcopy"]
    tools += ["rauc", "mksquashfs"] if args.bundle else []
    tools += ["qemu-img"] if args.qcow2 else []
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing or not SYSTEMD_BOOT.exists():
        parser.error(f"missing {', '.join(missing) or SYSTEMD_BOOT}: apt-get install debootstrap e2fsprogs fdisk "
                     "dosfstools mtools systemd-boot-efi rauc squashfs-tools qemu-utils")
    if sys.version_info[:2] != IMAGE_PYTHON:
        # Binary wheels (dbus-fast) are fetched for this Python: the image's.
        parser.error(f"run with Python {'.'.join(map(str, IMAGE_PYTHON))}, the image's (Debian {debian.SUITE})")
    if (args.signing_cert is None) != (args.signing_key is None):
        parser.error("give both --signing-cert and --signing-key, or neither (a development key is made)")
    if args.no_image and not args.bundle:
        parser.error("--no-image only with --bundle")
    started = time.monotonic()
    args.output.mkdir(parents=True, exist_ok=True)
    cert, key = (args.signing_cert, args.signing_key) if args.signing_cert else development_key(args.output / "dev-keys")
    with tempfile.TemporaryDirectory(prefix="appliance-image-", dir=args.output) as scratch:
        work = Path(scratch)
        wheels = build_wheels(work / "wheels")
        if args.cache:
            tree = debian.cached_tree(args.cache)
        else:
            tree = work / "debian"
            debian.debootstrap(tree)
        print(f"Debian tree ready at {time.monotonic() - started:.0f} s", flush=True)
        with debian.writable_copy(tree, work / "overlay") as root:
            install_service(root, wheels)
            install_system(root, args.password, args.version, cert)
            if args.overlay:
                shutil.copytree(args.overlay, root, symlinks=True, dirs_exist_ok=True)
            slot_fs = work / "rootfs.ext4"
            make_filesystem(root, slot_fs)
            boot = work / "boot"
            kernel = export_boot_files(root, boot)
        if args.bundle:
            bundle = make_bundle(slot_fs, args.version, cert, key, work / "bundle",
                                 args.output / f"appliance-{args.version}.raucb")
            print(f"bundle {bundle.name} at {time.monotonic() - started:.0f} s", flush=True)
        if not args.no_image:
            make_disk(args.output / "appliance.raw", slot_fs, boot, args.version, work)
    if args.qcow2 and not args.no_image:
        debian.run(["qemu-img", "convert", "-c", "-O", "qcow2", str(args.output / "appliance.raw"),
                    str(args.output / "appliance.qcow2")], 900)
    print(f"built version {args.version} (kernel {kernel}) in {time.monotonic() - started:.0f} s")
    for path in [args.output / "appliance.raw", args.output / "appliance.qcow2",
                 *sorted(args.output.glob("appliance-*.raucb"))]:
        if path.exists():
            print(f"  {path.name}: {path.stat().st_size / 1e6:.0f} MB, {path.stat().st_blocks * 512 / 1e6:.0f} MB on disk")
    return 0


def development_key(directory: Path) -> tuple[Path, Path]:
    """A self-signed signing certificate and its key in `directory`, made once and reused, so
    that later bundles of the same checkout install on this build's boxes. For development and
    tests only: a production box carries the installer's certificate (--signing-cert)."""
    cert, key = directory / "signing.cert.pem", directory / "signing.key.pem"
    if not (cert.exists() and key.exists()):
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        debian.run(["openssl", "req", "-x509", "-newkey", "rsa:3072", "-nodes", "-days", "3650",
                    "-subj", "/O=DICOM archive appliance/CN=development update signing (not for production)",
                    "-keyout", str(key), "-out", str(cert)], 120)
        print(f"made a development signing key: {key} (not for production)", flush=True)
    return cert, key


def build_wheels(wheels: Path) -> Path:
    """The project's wheel and its dependencies' (PyPI, or pip's cache) in `wheels`. setuptools
    builds in the checkout (its build/ and .egg-info): two builds from one checkout at once (an
    image and a bundle) take turns here, holding a lock on the checkout's directory, or one
    removes the other's files mid-build."""
    checkout = os.open(REPO, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(checkout, fcntl.LOCK_EX)
        debian.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels), str(REPO)], 600)
    finally:
        os.close(checkout)
    return wheels


def install_service(root: Path, wheels: Path) -> None:
    """The service in its own venv on the image's Python, from `wheels` only; service-tool on
    root's PATH."""
    inside = Path("tmp/appliance-wheels")
    shutil.copytree(wheels, root / inside)
    try:
        chroot(root, "python3", "-m", "venv", f"/{VENV}")
        chroot(root, f"/{VENV}/bin/pip", "install", "--quiet", "--no-index", "--no-cache-dir",
               "--find-links", f"/{inside}", "dicom-archive-appliance")
    finally:
        shutil.rmtree(root / inside)
    link = root / "usr/local/bin/service-tool"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(f"/{VENV}/bin/service-tool")


def install_system(root: Path, password: str, version: str = __version__, cert: Path | None = None) -> None:
    """The project's system files, the box's own files, the version and the update keyring,
    units enabled, the service user made now (sysusers also runs at boot), and root's password
    set and expired."""
    for source in SYSTEM_FILES:
        install_file(root, source)
    debian.write_files(root, {**FILES, "usr/lib/appliance/version": f"{version}\n"})
    if cert is not None:
        shutil.copyfile(cert, root / "etc/rauc/keyring.pem")
    for mountpoint in ("data", "efi", *(target.lstrip("/") for target in DATA_BINDS.values())):
        (root / mountpoint).mkdir(parents=True, exist_ok=True)
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)  # else D-Bus keeps the build's
    debian.enable(root, ENABLED_UNITS)
    debian.run(["systemctl", f"--root={root}", "disable", *DISABLED_UNITS], 60)
    debian.run(["systemctl", f"--root={root}", "mask", *MASKED_UNITS], 60)
    chroot(root, "systemd-sysusers")
    chroot(root, "chpasswd", stdin=f"root:{password}\n")
    chroot(root, "chage", "--lastday", "0", "root")


def install_file(root: Path, source: str) -> Path:
    """`source` (a project file of SYSTEM_FILES) at its place and mode below `root`."""
    target, mode = SYSTEM_FILES[source]
    path = root / target
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO / source, path)
    path.chmod(mode)
    return path


def export_boot_files(root: Path, output: Path) -> str:
    """The kernel and initramfs copied to `output` (for the ESP); the kernel's version."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise RuntimeError(f"expected one kernel in /boot, found {[k.name for k in kernels]}")
    version = kernels[0].name.removeprefix("vmlinuz-")
    output.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(kernels[0], output / "vmlinuz")
    shutil.copyfile(root / "boot" / f"initrd.img-{version}", output / "initrd.img")
    return version


def make_filesystem(root: Path, image: Path) -> None:
    """`root` as a slot's ext4 file system in `image`, written by mke2fs itself (no loop
    device), sized to its content plus room for ext4's own (the bundle carries it; RAUC grows
    it to the slot, and make_disk does for the image's slot A). Kept small because an update
    writes all of it: 920 MB for a 780 MB tree takes 30 % less time to install than 1.2 GB."""
    used = int(debian.run(["du", "-sx", "--block-size=1M", str(root)], 120).split()[0])
    size = min(int(used * 1.1) + 64, PARTITIONS[1][2])
    image.unlink(missing_ok=True)
    debian.run(["truncate", "--size", f"{size}M", str(image)], 30)
    debian.run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(root), str(image)], 900)


def make_bundle(slot_fs: Path, version: str, cert: Path, key: Path, content: Path, bundle: Path) -> Path:
    """The RAUC bundle of `slot_fs`, signed with `key`."""
    content.mkdir()
    os.link(slot_fs, content / "rootfs.ext4")
    (content / "manifest.raucm").write_text(
        f"[update]\ncompatible={COMPATIBLE}\nversion={version}\n"
        f"description=DICOM archive appliance {version}\n"
        f"build={time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}\n\n"
        "[image.rootfs]\nfilename=rootfs.ext4\n")
    bundle.unlink(missing_ok=True)
    # zstd at level 3, not mksquashfs's 15: 1.5 s instead of 33 s for a 1.2 GB slot, for a
    # bundle 12 % larger (269 MB instead of 240 MB; docs/performance.md).
    debian.run(["rauc", "bundle", f"--cert={cert}", f"--key={key}",
                "--mksquashfs-args=-comp zstd -Xcompression-level 3",
                str(content), str(bundle)], 900)
    return bundle


def make_disk(disk: Path, slot_fs: Path, boot: Path, version: str, work: Path) -> None:
    """The GPT disk: the ESP (systemd-boot, slot A's kernel and entry), slot A, an empty slot
    B, the data partition; written into a sparse file with sfdisk and dd (no loop device)."""
    layout, start = ["label: gpt"], FIRST_MIB
    offsets = {}
    for name, kind, size in PARTITIONS:
        layout.append(f"start={start * 2048}, size={size * 2048}, type={kind}, name={name}")
        offsets[name] = start
        start += size
    disk.unlink(missing_ok=True)
    debian.run(["truncate", "--size", f"{start + 1}M", str(disk)], 30)
    debian.run(["sfdisk", "--quiet", str(disk)], 60, input="\n".join(layout) + "\n")
    esp = work / "esp.img"
    debian.run(["mkfs.vfat", "-F", "32", "-s", "1", "-n", "ESP", "-C", str(esp), str(PARTITIONS[0][2] * 1024)], 60)
    entries = work / "entries"
    slots.make_primary(entries, "a", version, tries=None)
    (entries / "loader/loader.conf").write_text(slots.LOADER_CONF)
    mtools = ["-i", str(esp)]
    debian.run(["mmd", *mtools, "::/EFI", "::/EFI/BOOT", "::/loader", "::/loader/entries", "::/a", "::/b"], 60)
    copies = [(SYSTEMD_BOOT, "::/EFI/BOOT/BOOTX64.EFI"), (boot / "vmlinuz", "::/a/vmlinuz"),
              (boot / "initrd.img", "::/a/initrd.img"), (entries / "loader/loader.conf", "::/loader/loader.conf")]
    copies += [(path, f"::/loader/entries/{path.name}") for path in (entries / "loader/entries").glob("*.conf")]
    for source, target in copies:
        debian.run(["mcopy", *mtools, str(source), target], 120)
    data, data_root = work / "data.ext4", work / "data"
    for directory in (*DATA_BINDS, "update", "rauc"):
        (data_root / directory).mkdir(parents=True)
    debian.run(["truncate", "--size", f"{PARTITIONS[3][2]}M", str(data)], 30)
    debian.run(["mkfs.ext4", "-q", "-F", "-L", "data", "-d", str(data_root), str(data)], 300)
    # Slot A is the bundle's file system grown to its partition.
    debian.run(["resize2fs", "-f", str(slot_fs), f"{PARTITIONS[1][2]}M"], 300)
    for name, image in (("esp", esp), ("root-a", slot_fs), ("data", data)):
        debian.run(["dd", f"if={image}", f"of={disk}", "bs=1M", f"seek={offsets[name]}", "conv=notrunc,sparse",
                    "status=none"], 600)


def chroot(root: Path, *command: str, stdin: str | None = None) -> str:
    return debian.run(["chroot", str(root), *command], 600, input=stdin,
                      env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})


if __name__ == "__main__":
    sys.exit(main())
