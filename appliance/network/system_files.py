"""Writes the rendered `[network]` files under a root directory: `/` on the box, a scratch
directory in tests and image builds, so nothing here depends on the host it runs on.

The netplan YAML is first run through netplan's own generator, so a document netplan would
refuse never reaches the box. Every file is replaced atomically. Making the running daemons
pick the files up (networkd reload, hostnamed, timedated) is the caller's job.
"""

from __future__ import annotations

import os
from pathlib import Path

from appliance.config.model import Config, interface_name
from appliance.network import render
from appliance.network.netplan import generate_network
from appliance.durable import fsync_dir, write_text

# Same name as the default installed from system/netplan/, which this file replaces.
NETPLAN_YAML = Path("etc/netplan/90-appliance.yaml")
NETWORKD_DROPIN = Path(f"etc/systemd/network/10-netplan-{render.NETPLAN_ID}.network.d/50-appliance.conf")
TIMESYNCD_DROPIN = Path("etc/systemd/timesyncd.conf.d/50-appliance.conf")
HOSTNAME = Path("etc/hostname")
HOSTS = Path("etc/hosts")
TIMEZONE = Path("etc/timezone")
LOCALTIME = Path("etc/localtime")


def write_system_files(config: Config, interface: str, root: Path) -> None:
    """Write every file `[network]` is persisted in, below `root`, for the NIC named `interface`."""
    if not interface or interface_name(interface) is not None:
        raise ValueError(f"{interface!r} is not a resolved network interface name")
    yaml = render.netplan_yaml(config, interface)
    generate_network(yaml, NETPLAN_YAML.name)  # raises NetplanError before anything is written
    _write(root / NETPLAN_YAML, yaml)
    (root / NETPLAN_YAML).chmod(0o600)  # netplan warns about anything more open
    _write(root / NETWORKD_DROPIN, render.networkd_dropin(config))
    _write(root / TIMESYNCD_DROPIN, render.timesyncd_dropin(config))
    if config.network.hostname:  # "" keeps the box's name
        _write(root / HOSTNAME, render.hostname_file(config))
    hosts = root / HOSTS
    current = hosts.read_text(encoding="utf-8") if hosts.exists() else ""
    _write(hosts, render.hosts_file(current, config))
    _write(root / TIMEZONE, render.timezone_file(config))
    replace_symlink(root / LOCALTIME, render.localtime_target(config))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, text)


def replace_symlink(path: Path, target: str) -> None:
    """Point `path` at `target` atomically: a new link renamed over the old one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)
