"""TOML file -> validated `Config`. The whole file is checked before anything is used.

The daemon (start-up and SIGHUP) and the service tool both load through `load_file`, so a
value the service would refuse is refused everywhere with the same message naming the key.
The loader goes on past an invalid key and raises one ConfigError that reads as the first
problem (what the service logs) and lists them all (`service-tool config validate`). The rules
between keys (shared ports, titles, ...) are checked once every key is valid on its own: on a
value already refused they would only report its stand-in, the default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import tomllib
import typing
from collections.abc import Iterator
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


def load_or_defaults(path: Path | None) -> model.Config:
    """The file at `path`, or for None the built-in defaults, whose relative paths resolve
    against the working directory (`appliance serve` without --config: data in ./appliance-data)."""
    if path is None:
        return load_dict({}, base_dir=str(Path.cwd()))
    return load_file(path)


def load_dict(data: dict, base_dir: str = ".") -> model.Config:
    problems: list[ConfigError] = []
    config = _build(model.Config, data, "", problems)
    if not problems:
        problems += _whole_file_problems(config)
    if problems:
        raise ConfigError(problems[0].key, problems[0].message, tuple(problems))
    return dataclasses.replace(config, base_dir=base_dir)


def _build(cls, data, prefix: str, problems: list[ConfigError]):
    """An instance of `cls` from the table `data`; each invalid key goes to `problems` and its
    field keeps its default."""
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip(".") or "(file)", "must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in model.public_fields(cls)}
    problems += [ConfigError(prefix + name, "unknown key") for name in sorted(set(data) - set(fields))]
    values = {}
    for name, f in fields.items():
        key = prefix + name
        if name not in data:
            if f.metadata.get("required"):
                problems.append(ConfigError(key, "is required"))
            continue
        known = len(problems)
        try:
            value = _convert(hints[name], data[name], key, problems)
        except ConfigError as exc:
            problems.append(exc)
            continue
        if len(problems) > known:
            continue  # a part of it is invalid: its checks would judge what is left
        errors = (err for check in f.metadata.get("checks", ()) if (err := check(value)) is not None)
        if (err := next(errors, None)) is not None:
            problems.append(ConfigError(key, err))
            continue
        values[name] = value
    return cls(**values)


def _convert(hint, value, key: str, problems: list[ConfigError]):
    """`value` as the type `hint`; raises ConfigError for the value itself, adds what is wrong
    inside a table or list to `problems`."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".", problems)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list):
            raise ConfigError(key, "must be a list")
        items = []
        for i, v in enumerate(value):
            try:
                items.append(_convert(item, v, f"{key}[{i}]", problems))
            except ConfigError as exc:
                problems.append(exc)
        return tuple(items)
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


def _whole_file_problems(config: model.Config) -> Iterator[ConfigError]:
    """Rules that involve more than one key."""
    scp = config.storage_scp
    # AE-06: STORAGE-SCP's title must differ from both others (QR and SCU may share, AE-05).
    for other in ("query_retrieve_scp", "storage_scu"):
        if getattr(config, other).ae_title.strip() == scp.ae_title.strip():
            yield ConfigError("storage_scp.ae_title",
                              f"{scp.ae_title!r} is also {other}.ae_title; STORAGE-SCP needs its own title")
    yield from _port_problems(config)
    # PC-04: Implicit VR Little Endian can never be removed.
    if uids.IMPLICIT_LE not in scp.transfer_syntaxes:
        yield ConfigError("storage_scp.transfer_syntaxes",
                          f"must include Implicit VR Little Endian ({uids.IMPLICIT_LE})")
    if not scp.sop_classes:
        yield ConfigError("storage_scp.sop_classes", "must list at least one storage SOP class")
    seen = set()
    for i, remote in enumerate(config.remote_aes):
        title = remote.ae_title.strip()
        if title in seen:
            yield ConfigError(f"remote_aes[{i}].ae_title", f"{title!r} is listed twice")
        seen.add(title)
    yield from _network_problems(config.network)
    storage = config.storage
    if storage.warn_free_percent and storage.alert_free_percent > storage.warn_free_percent:  # MG-04
        yield ConfigError("storage.alert_free_percent",
                          f"{storage.alert_free_percent} is above storage.warn_free_percent "
                          f"({storage.warn_free_percent}): the alert level is the lower one (0 turns either off)")


def _port_problems(config: model.Config) -> Iterator[ConfigError]:
    """SE-07: each listening AE listens somewhere, and no two listeners share a port."""
    taken: dict[int, str] = {}
    for section in ("storage_scp", "query_retrieve_scp"):
        ae = getattr(config, section)
        if not ae.port and not ae.tls_port:
            yield ConfigError(f"{section}.port", f"{section}.port and {section}.tls_port are both 0: the AE would "
                                                 "not listen at all")
        for key in ("port", "tls_port"):
            number = getattr(ae, key)
            if number in taken:
                yield ConfigError(f"{section}.{key}", f"{number} is also {taken[number]}")
            if number:
                taken[number] = f"{section}.{key}"


def tls_path(config: model.Config, key: str) -> Path:
    """A `[tls]` file (certificate, key, ca_bundle) resolved against the configuration's directory."""
    return Path(config.base_dir, getattr(config.tls, key))


def _network_problems(net: model.Network) -> Iterator[ConfigError]:
    """The box's IP configuration: DHCP or static addresses, never both (NW-03), and gateways
    that a static address can reach."""
    if net.dhcp and net.addresses:
        yield ConfigError("network.addresses", "must be empty while network.dhcp = true (DHCP assigns the "
                          "address); set dhcp = false to use static addresses")
    if not net.dhcp and not net.addresses:
        yield ConfigError("network.addresses", "must list at least one address when network.dhcp = false")
    if not net.dhcp:
        interfaces = [ipaddress.ip_interface(a) for a in net.addresses]
        for key, gateway in (("network.gateway4", net.gateway4), ("network.gateway6", net.gateway6)):
            if not gateway:
                continue
            ip = ipaddress.ip_address(gateway)
            # An IPv6 router is commonly addressed by its link-local address, which is always on-link.
            if not (ip.version == 6 and ip.is_link_local) and not any(ip in i.network for i in interfaces):
                yield ConfigError(key, f"{gateway} is in none of the networks of network.addresses, "
                                       "so the box could not reach it")
    seen = set()
    for i, mapping in enumerate(net.hosts):
        # One name may have an IPv4 and an IPv6 address; two of a family would be ambiguous.
        entry = (mapping.name.lower().removesuffix("."), ipaddress.ip_address(mapping.address).version)
        if entry in seen:
            yield ConfigError(f"network.hosts[{i}].name",
                              f"{mapping.name!r} already has an IPv{entry[1]} address in network.hosts")
        seen.add(entry)


def data_dir(config: model.Config) -> Path:
    return Path(config.base_dir, config.storage.data_dir)


def store_dir(config: model.Config) -> Path:
    """Where the stored files live (IX-02: possibly shared by several boxes)."""
    if config.storage.store_dir:
        return Path(config.base_dir, config.storage.store_dir)
    return data_dir(config) / "store"


__all__ = ["load_file", "load_or_defaults", "load_dict", "data_dir", "store_dir", "tls_path", "ConfigError"]
