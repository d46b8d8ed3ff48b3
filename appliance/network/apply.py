"""Making the box use its `[network]` configuration, and taking a change back (`network try`).

The files are written below a root (`/` on the box), netplan's generator renders them into
networkd's runtime directory, and the running daemons are told over D-Bus (NW-13): networkd
reloads and reconfigures the link, timesyncd restarts on its drop-in, hostnamed and timedated
take the machine name and time zone. `Snapshot` holds what the files were before, so a change
the installer does not confirm can be undone exactly.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from appliance.config import Config
from appliance.durable import write_text
from appliance.network import system_files
from appliance.network.netplan import NETPLAN, NetplanError
from appliance.network.system_bus import BusError, SystemBus, run

_FILES = (system_files.NETPLAN_YAML, system_files.NETWORKD_DROPIN, system_files.TIMESYNCD_DROPIN,
          system_files.HOSTNAME, system_files.HOSTS, system_files.TIMEZONE)


class ApplyError(Exception):
    """The configuration could not be put in force; says which step failed."""


@dataclass(frozen=True)
class Snapshot:
    files: dict[Path, tuple[str, int] | None]  # relative path -> (text, mode), None when absent
    localtime: str | None  # the /etc/localtime link's target


def snapshot(root: Path) -> Snapshot:
    files = {}
    for relative in _FILES:
        path = root / relative
        files[relative] = (path.read_text(encoding="utf-8"), path.stat().st_mode & 0o777) if path.exists() else None
    link = root / system_files.LOCALTIME
    return Snapshot(files, os.readlink(link) if link.is_symlink() else None)


def restore(saved: Snapshot, root: Path) -> None:
    """Put the files back as `snapshot` found them."""
    for relative, content in saved.files.items():
        path = root / relative
        if content is None:
            path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, content[0])
            path.chmod(content[1])
    if saved.localtime is not None:
        system_files.replace_symlink(root / system_files.LOCALTIME, saved.localtime)


def apply(config: Config, interface: str, root: Path, bus_address: str | None = None) -> list[str]:
    """Write the files for `config` and put them in force; the steps that only warned."""
    try:
        system_files.write_system_files(config, interface, root)
    except NetplanError as exc:  # nothing was written
        raise ApplyError(f"netplan refused the settings: {exc}") from exc
    return activate(config, interface, root, bus_address)


def activate(config: Config, interface: str, root: Path, bus_address: str | None = None) -> list[str]:
    """Put the files below `root` in force for `interface`; the steps that only warned."""
    generated = subprocess.run([NETPLAN, "generate", "--root-dir", str(root)], capture_output=True, text=True,
                               timeout=60)
    if generated.returncode != 0:
        raise ApplyError(f"netplan generate: {generated.stderr.strip() or generated.returncode}")
    # The name in the file, which a reverted change put back even when the key is "" (keep).
    hostname_file = root / system_files.HOSTNAME
    hostname = config.network.hostname or (hostname_file.read_text().strip() if hostname_file.exists() else "")
    try:
        return run(lambda bus: _tell_daemons(bus, config, interface, hostname), bus_address)
    except BusError as exc:
        raise ApplyError(str(exc)) from exc


def revert(saved: Snapshot, config: Config, interface: str, root: Path, bus_address: str | None = None) -> list[str]:
    """Back to the files of `saved`, which were written for `config`, and in force again."""
    restore(saved, root)
    return activate(config, interface, root, bus_address)


async def _tell_daemons(bus: SystemBus, config: Config, interface: str, hostname: str) -> list[str]:
    warnings = []
    await bus.reload()
    await bus.reconfigure_link(await bus.link_index(interface))
    result = await bus.restart_unit("systemd-timesyncd.service")
    if result != "done":
        warnings.append(f"systemd-timesyncd restart: {result}")
    if hostname:
        await bus.set_static_hostname(hostname)
        # The static name was already in the file we wrote, which hostnamed takes as nothing to
        # change: also ask for the kernel's name, which hostnamed then sets from the static one.
        await bus.set_hostname(hostname)
    try:
        await bus.set_timezone(config.network.time_zone)
    except BusError as exc:  # the files are written: the zone holds from the next boot
        warnings.append(f"time zone not set at once ({exc.name}); /etc/localtime names it for the next boot")
    return warnings
