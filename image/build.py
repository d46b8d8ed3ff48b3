"""`python3 -m image.build --output DIR`: the appliance's disk image, from Debian packages and
the project's own wheel (with the wheels of its pinned Python dependencies, from PyPI).

Run as root from the project's checkout (debootstrap, an overlay mount and chroot need it).
DIR receives:
  appliance.raw   an ext4 file system for the whole disk (no partition table), label "appliance"
  vmlinuz, initrd.img, cmdline   the image's own Debian kernel and initramfs, and the kernel
                  command line to boot them with (QEMU: -kernel/-initrd/-append; docs/installation.md)
  appliance.qcow2 with --qcow2, the same disk compressed, for distribution
The Debian tree is downloaded each time unless --cache names a directory to keep it in.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from image import debian

REPO = Path(__file__).resolve().parent.parent
VENV = Path("opt/appliance/venv")
LABEL = "appliance"
KERNEL_COMMAND_LINE = f"root=LABEL={LABEL} ro console=tty0 console=ttyS0,115200"
# Project file -> (path in the image, mode). The unit's ExecStart names the venv above; the
# config file is installed as the pristine copy the first boot copies to /etc (tmpfiles.d).
SYSTEM_FILES = {
    "system/systemd/appliance.service": ("usr/lib/systemd/system/appliance.service", 0o644),
    "system/sysusers.d/appliance.conf": ("usr/lib/sysusers.d/appliance.conf", 0o644),
    "system/tmpfiles.d/appliance.conf": ("usr/lib/tmpfiles.d/appliance.conf", 0o644),
    "system/journald.conf.d/50-appliance.conf": ("usr/lib/systemd/journald.conf.d/50-appliance.conf", 0o644),
    "system/resolved.conf.d/50-appliance.conf": ("usr/lib/systemd/resolved.conf.d/50-appliance.conf", 0o644),
    "system/sysctl.d/60-appliance-net.conf": ("usr/lib/sysctl.d/60-appliance-net.conf", 0o644),
    "system/appliance.toml": ("usr/share/appliance/appliance.toml", 0o644),
    # netplan warns about (and networkd's generator skips nothing, but secrets could sit in)
    # a world-readable file.
    "system/netplan/90-appliance.yaml": ("etc/netplan/90-appliance.yaml", 0o600),
    "system/issue": ("etc/issue", 0o644),
}
NETWORK_UNITS = ("systemd-networkd.service", "systemd-resolved.service", "systemd-timesyncd.service")
ENABLED_UNITS = NETWORK_UNITS + ("appliance.service",)
# The box installs nothing after its build (a new image replaces it): apt need not wake daily.
DISABLED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer")
FILES = {
    "etc/hostname": "appliance\n",
    "etc/hosts": "127.0.0.1 localhost\n127.0.1.1 appliance\n::1 localhost ip6-localhost ip6-loopback\n",
    # fsck on every boot (the box is switched off without a shutdown); grow to fill the disk
    # the image was written to.
    "etc/fstab": f"LABEL={LABEL} / ext4 errors=remount-ro,x-systemd.growfs 0 1\n",
    # Empty: each box makes its own machine ID on its first boot (and systemd counts that boot
    # as the first one).
    "etc/machine-id": "",
}
IMAGE_PYTHON = (3, 11)
DEFAULT_PASSWORD = "appliance"
DEFAULT_SIZE = "4G"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m image.build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True, help="directory for the image, kernel and initrd")
    parser.add_argument("--cache", type=Path, help="keep the downloaded Debian tree here and reuse it")
    parser.add_argument("--size", default=DEFAULT_SIZE,
                        help=f"file system size (default {DEFAULT_SIZE}; the file is sparse and grows "
                             "to fill a larger disk on first boot)")
    parser.add_argument("--password", default=DEFAULT_PASSWORD,
                        help="root's initial password, which the first login must change "
                             f"(default {DEFAULT_PASSWORD!r})")
    parser.add_argument("--qcow2", action="store_true", help="also write appliance.qcow2 (compressed)")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("debootstrap", "mkfs.ext4", "chroot") + (("qemu-img",) if args.qcow2 else ())
               if shutil.which(tool) is None]
    if missing:
        parser.error(f"missing {', '.join(missing)}: apt-get install debootstrap e2fsprogs qemu-utils")
    if sys.version_info[:2] != IMAGE_PYTHON:
        # Binary wheels (dbus-fast) are fetched for this Python: the image's.
        parser.error(f"run with Python {'.'.join(map(str, IMAGE_PYTHON))}, the image's (Debian {debian.SUITE})")
    started = time.monotonic()
    args.output.mkdir(parents=True, exist_ok=True)
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
            install_system(root, args.password)
            kernel = export_boot_files(root, args.output)
            make_filesystem(root, args.output / "appliance.raw", args.size)
    if args.qcow2:
        debian.run(["qemu-img", "convert", "-c", "-O", "qcow2", str(args.output / "appliance.raw"),
                    str(args.output / "appliance.qcow2")], 900)
    print(f"built {args.output / 'appliance.raw'} (kernel {kernel}) in {time.monotonic() - started:.0f} s")
    for name in ("appliance.raw", "appliance.qcow2", "vmlinuz", "initrd.img"):
        path = args.output / name
        if path.exists():
            print(f"  {name}: {path.stat().st_size / 1e6:.0f} MB, {path.stat().st_blocks * 512 / 1e6:.0f} MB on disk")
    return 0


def build_wheels(wheels: Path) -> Path:
    """The project's wheel and its dependencies' (PyPI, or pip's cache) in `wheels`."""
    debian.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels), str(REPO)], 600)
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


def install_system(root: Path, password: str) -> None:
    """The project's system files, the box's own files, units enabled, the service user made
    now (sysusers also runs at boot), and root's password set and expired."""
    for source in SYSTEM_FILES:
        install_file(root, source)
    debian.write_files(root, FILES)
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)  # else D-Bus keeps the build's
    debian.enable(root, ENABLED_UNITS)
    debian.run(["systemctl", f"--root={root}", "disable", *DISABLED_UNITS], 60)
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
    """The kernel, initramfs and kernel command line next to the image; the kernel's version."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise RuntimeError(f"expected one kernel in /boot, found {[k.name for k in kernels]}")
    version = kernels[0].name.removeprefix("vmlinuz-")
    shutil.copyfile(kernels[0], output / "vmlinuz")
    shutil.copyfile(root / "boot" / f"initrd.img-{version}", output / "initrd.img")
    (output / "cmdline").write_text(KERNEL_COMMAND_LINE + "\n")
    return version


def make_filesystem(root: Path, image: Path, size: str) -> None:
    """`root` as an ext4 file system in `image`, written by mke2fs itself (no loop device)."""
    image.unlink(missing_ok=True)
    debian.run(["truncate", "--size", size, str(image)], 30)
    debian.run(["mkfs.ext4", "-q", "-F", "-L", LABEL, "-d", str(root), str(image)], 900)


def chroot(root: Path, *command: str, stdin: str | None = None) -> str:
    return debian.run(["chroot", str(root), *command], 600, input=stdin,
                      env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})


if __name__ == "__main__":
    sys.exit(main())
