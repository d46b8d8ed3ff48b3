"""TOML file -> validated `Config`. The whole file is checked before anything is used.

The daemon (start-up and SIGHUP) and the service tool both load through `load_file`, so a
value the service would refuse is refused everywhere with the same message naming the key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import tomllib
import typing
from pathlib import Path

from appliance.config import model
from appliance.codes import uids
from appliance.errors import ConfigError


def load_file(path: str | Path) -> model.Config:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("(file)", f"cannot read {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("(file)", f"{path} is not valid TOML: {exc}") from exc
    return load_dict(data, base_dir=str(path.resolve().parent))


def load_dict(data: dict, base_dir: str = ".") -> model.Config:
    config = _build(model.Config, data, prefix="")
    config = dataclasses.replace(config, base_dir=base_dir)
    _check_whole(config)
    return config


def _build(cls, data, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip(".") or "(file)", "must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in model.public_fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(prefix + unknown[0], "unknown key")
    values = {}
    for name, f in fields.items():
        key = prefix + name
        if name not in data:
            if f.metadata.get("required"):
                raise ConfigError(key, "is required")
            continue
        values[name] = _convert(hints[name], data[name], key)
        for check in f.metadata.get("checks", ()):
            if (err := check(values[name])) is not None:
                raise ConfigError(key, err)
    return cls(**values)


def _convert(hint, value, key: str):
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list):
            raise ConfigError(key, "must be a list")
        return tuple(_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, "must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, "must be an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(key, "must be a finite number (seconds)")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, "must be a string")
        return value
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # a bug in model.py


def _check_whole(config: model.Config) -> None:
    """Rules that involve more than one key."""
    scp = config.storage_scp
    # AE-06: STORAGE-SCP's title must differ from both others (QR and SCU may share, AE-05).
    for other in ("query_retrieve_scp", "storage_scu"):
        if getattr(config, other).ae_title.strip() == scp.ae_title.strip():
            raise ConfigError("storage_scp.ae_title",
                              f"{scp.ae_title!r} is also {other}.ae_title; STORAGE-SCP needs its own title")
    _check_ports(config)
    # PC-04: Implicit VR Little Endian can never be removed.
    if uids.IMPLICIT_LE not in scp.transfer_syntaxes:
        raise ConfigError("storage_scp.transfer_syntaxes",
                          f"must include Implicit VR Little Endian ({uids.IMPLICIT_LE})")
    if not scp.sop_classes:
        raise ConfigError("storage_scp.sop_classes", "must list at least one storage SOP class")
    seen = set()
    for i, remote in enumerate(config.remote_aes):
        title = remote.ae_title.strip()
        if title in seen:
            raise ConfigError(f"remote_aes[{i}].ae_title", f"{title!r} is listed twice")
        seen.add(title)
    _check_network(config.network)
    storage = config.storage
    if storage.warn_free_percent and storage.alert_free_percent > storage.warn_free_percent:  # MG-04
        raise ConfigError("storage.alert_free_percent",
                          f"{storage.alert_free_percent} is above storage.warn_free_percent "
                          f"({storage.warn_free_percent}): the alert level is the lower one (0 turns either off)")


def _check_ports(config: model.Config) -> None:
    """SE-07: each listening AE listens somewhere, and no two listeners share a port."""
    taken: dict[int, str] = {}
    for section in ("storage_scp", "query_retrieve_scp"):
        ae = getattr(config, section)
        if not ae.port and not ae.tls_port:
            raise ConfigError(f"{section}.port", f"{section}.port and {section}.tls_port are both 0: the AE would "
                                                 "not listen at all")
        for key in ("port", "tls_port"):
            number = getattr(ae, key)
            if number in taken:
                raise ConfigError(f"{section}.{key}", f"{number} is also {taken[number]}")
            if number:
                taken[number] = f"{section}.{key}"


def tls_path(config: model.Config, key: str) -> Path:
    """A `[tls]` file (certificate, key, ca_bundle) resolved against the configuration's directory."""
    return Path(config.base_dir, getattr(config.tls, key))


def _check_network(net: model.Network) -> None:
    """The box's IP configuration: DHCP or static addresses, never both (NW-03), and gateways
    that a static address can reach."""
    if net.dhcp and net.addresses:
        raise ConfigError("network.addresses", "must be empty while network.dhcp = true (DHCP assigns the "
                          "address); set dhcp = false to use static addresses")
    if not net.dhcp and not net.addresses:
        raise ConfigError("network.addresses", "must list at least one address when network.dhcp = false")
    if not net.dhcp:
        interfaces = [ipaddress.ip_interface(a) for a in net.addresses]
        for key, gateway in (("network.gateway4", net.gateway4), ("network.gateway6", net.gateway6)):
            if not gateway:
                continue
            ip = ipaddress.ip_address(gateway)
            # An IPv6 router is commonly addressed by its link-local address, which is always on-link.
            if not (ip.version == 6 and ip.is_link_local) and not any(ip in i.network for i in interfaces):
                raise ConfigError(key, f"{gateway} is in none of the networks of network.addresses, "
                                       "so the box could not reach it")
    seen = set()
    for i, mapping in enumerate(net.hosts):
        # One name may have an IPv4 and an IPv6 address; two of a family would be ambiguous.
        entry = (mapping.name.lower().removesuffix("."), ipaddress.ip_address(mapping.address).version)
        if entry in seen:
            raise ConfigError(f"network.hosts[{i}].name",
                              f"{mapping.name!r} already has an IPv{entry[1]} address in network.hosts")
        seen.add(entry)


def data_dir(config: model.Config) -> Path:
    return Path(config.base_dir, config.storage.data_dir)


__all__ = ["load_file", "load_dict", "data_dir", "tls_path", "ConfigError"]
