"""The configuration as dotted keys: for `config show`, inert-key warnings, reloads and the docs check.

Walks the model's dataclasses, so a key added to `model.py` appears everywhere without a list
to keep in step. Array-of-tables keys are written ``remote_aes[].host``.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator

from appliance.config.model import Config, public_fields


def _element_class(hint):
    """The dataclass of a nested table or of an array of tables, else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) is tuple and dataclasses.is_dataclass(typing.get_args(hint)[0]):
        return typing.get_args(hint)[0]
    return None


class Key(typing.NamedTuple):
    name: str  # dotted, e.g. "storage_scp.port" or "remote_aes[].host"
    default: typing.Any
    required: bool
    inert: str | None  # why nothing acts on it yet (inherited from an enclosing table)


def keys(cls=Config, prefix: str = "", inert: str | None = None) -> Iterator[Key]:
    """Every leaf key of the model, in model order."""
    hints = typing.get_type_hints(cls)
    for f in public_fields(cls):
        name = prefix + f.name
        why = f.metadata.get("inert", inert)
        nested = _element_class(hints[f.name])
        if nested is None:
            yield Key(name, f.default, bool(f.metadata.get("required")), why)
        else:
            yield from keys(nested, name + ("." if nested is hints[f.name] else "[]."), why)


def to_dict(config) -> dict:
    """The configuration as plain TOML/JSON values (tuples become lists); internal fields left out."""
    out = {}
    for f in public_fields(type(config)):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = [to_dict(v) if dataclasses.is_dataclass(v) else v for v in value]
        out[f.name] = value
    return out


def inert_settings(config: Config) -> list[tuple[str, str]]:
    """(dotted key, why) for keys set away from their default although nothing acts on them yet."""
    found = []

    def walk(obj, cls, prefix: str) -> None:
        for f in public_fields(cls):
            value = getattr(obj, f.name)
            key = prefix + f.name
            if f.metadata.get("inert"):
                if value != f.default:
                    found.append((key, f.metadata["inert"]))
            elif dataclasses.is_dataclass(value):
                walk(value, type(value), key + ".")

    walk(config, Config, "")
    return found


def kept_for_restart(running, new, prefix: str = "") -> tuple[typing.Any, list[str]]:
    """(`new` with each key marked `restart` back at its `running` value, the dotted keys that
    differed): what a reload leaves for the next start."""
    kept, replaced = [], {}
    for f in public_fields(type(new)):
        before, after = getattr(running, f.name), getattr(new, f.name)
        if before == after:
            continue
        if f.metadata.get("restart"):
            replaced[f.name] = before
            kept.append(prefix + f.name)
        elif dataclasses.is_dataclass(after):
            replaced[f.name], inner = kept_for_restart(before, after, f"{prefix}{f.name}.")
            kept += inner
    return dataclasses.replace(new, **replaced), kept
