"""Atomic configuration writes: validate with the daemon's loader, then tmp + fsync + rename + fsync dir.

A reader (the daemon on SIGHUP) therefore sees either the old file or the new one, never a
half-written file, and an invalid document never reaches disk. The new file keeps the old
one's permissions (mkstemp creates 0600, which the unprivileged daemon could not read).
"""

from __future__ import annotations

import os
import stat
import tempfile
import tomllib
from pathlib import Path

import tomlkit

from appliance.config.load import load_dict
from appliance.config.model import Config
from appliance.store.files import fsync_dir


def write_document(path: Path, document) -> Config:
    """Validate `document` (a dict or tomlkit document) and replace `path` with it atomically."""
    text = tomlkit.dumps(document)
    if text and not text.endswith("\n"):
        text += "\n"  # tomlkit leaves the last appended table without one
    config = load_dict(tomllib.loads(text), base_dir=str(path.resolve().parent))
    write_text(path, text)
    return config


def write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically, keeping its permissions (0644 for a new file)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
