"""Files that survive a power cut: fsync helpers and the atomic replace of a small file.

A leaf every layer may use (the store, the configuration writer, the network files, the
service tool's maintenance commands); it imports nothing of the appliance.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the names in directory `path` durable (a rename, a link, an unlink)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically, keeping its permissions (0644 for a new file):
    tmp + fsync + rename + fsync of the directory."""
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


def hand_over(path: Path, directory: Path) -> None:
    """Give a file that the service tool, run as root, creates in the data directory to that
    directory's owner: the service runs as an unprivileged user and must be able to open it."""
    if os.geteuid() == 0:
        owner = directory.stat()
        os.chown(path, owner.st_uid, owner.st_gid)
