"""Atomic configuration writes: validate with the daemon's loader, then tmp + fsync + rename + fsync dir.

A reader (the daemon on SIGHUP) therefore sees either the old file or the new one, never a
half-written file, and an invalid document never reaches disk. The new file keeps the old
one's permissions (mkstemp creates 0600, which the unprivileged daemon could not read).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import tomlkit

from appliance.config.load import load_dict
from appliance.config.model import Config
from appliance.durable import write_text


def write_document(path: Path, document) -> Config:
    """Validate `document` (a dict or tomlkit document) and replace `path` with it atomically."""
    text, config = validated(path, document)
    write_text(path, text)
    return config


def validated(path: Path, document) -> tuple[str, Config]:
    """`document` as the text to write at `path` and the configuration it makes; raises
    ConfigError naming the key when it is invalid."""
    text = tomlkit.dumps(document)
    if text and not text.endswith("\n"):
        text += "\n"  # tomlkit leaves the last appended table without one
    return text, load_dict(tomllib.loads(text), base_dir=str(path.resolve().parent))
