"""A whole-archive backup directory (MG-05): its layout, its manifest, and the verified copy.

Layout of DIR (a mounted disk or share)::

    backup.json             the manifest: which backup DIR holds, and each of its files with
                            its size and SHA-256 as written and read back
    config-<n>.toml         the configuration file as it was (n: the backup's generation)
    index-<n>.sqlite        the index snapshot (backup.py): one self-contained SQLite file
    store/aa/<hex>.dcm      the stored files, under the names they have in the data directory
    appliance.lock          held while a backup writes (lock.py)

The manifest is the backup. It is replaced atomically (temporary file, fsync, rename, fsync of
DIR) once every file it names is durable, so DIR holds one complete backup at any time: the
last one whose manifest went in. Stored files never change and their random names are never
used again, so a stored file the previous backup holds serves the next one as it is; the index
and the configuration change, and take the generation's number in their names so that the
previous manifest's stay until the new manifest replaces it. What the manifest does not name
(left by an interrupted backup, or the files of instances deleted since) goes after it.

Every copy, whether into DIR or back into a data directory, goes through `copy_verified`:
hashed as it is read, written under a temporary name, flushed, dropped from the page cache and
read back from the disk (or the server, for a share) to be hashed again, then renamed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from appliance.durable import write_bytes

MANIFEST_NAME = "backup.json"
FORMAT = 1  # of the manifest; a later one is refused by this release's restore
STORE = "store"  # the stored files' directory, in DIR as in the data directory
FILE_MODE = 0o600  # the backup holds patient data, as the store does
_NAMES = re.compile(rf"{STORE}/[0-9a-f]{{2}}/[0-9a-f]{{32}}\.dcm|config-\d+\.toml|index-\d+\.sqlite")
_CHUNK = 1 << 20


class Unreadable(Exception):
    """DIR's manifest cannot be used."""


class Damaged(Exception):
    """A file's bytes are not those its manifest entry or its copy says."""


@dataclass
class Manifest:
    generation: int  # 1 for the first backup into DIR, one more for each after it
    made: str  # when its index snapshot was taken, UTC, ISO 8601
    host: str
    data_dir: str  # the archive's data directory on that host
    config_file: str  # the configuration file backed up, where it was on that host
    config: str  # its copy in DIR
    index: str  # the index snapshot in DIR
    instances: int
    studies: int
    files: dict[str, tuple[int, str]] = field(default_factory=dict)  # name in DIR -> (size, SHA-256 hex)

    def stored(self) -> list[str]:
        """The stored files' names in DIR (store/aa/<hex>.dcm)."""
        return [name for name in self.files if name.startswith(f"{STORE}/")]


def read_manifest(directory: Path) -> Manifest | None:
    """DIR's manifest; None when DIR holds no backup yet."""
    path = directory / MANIFEST_NAME
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise Unreadable(f"{path} cannot be read: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise Unreadable(f"{path} is not a backup manifest of format {FORMAT} (format {data.get('format')!r})"
                         if isinstance(data, dict) else f"{path} is not a backup manifest")
    try:
        data.pop("format")
        manifest = Manifest(**data)
        manifest.files = {name: (int(size), str(digest)) for name, (size, digest) in manifest.files.items()}
    except (TypeError, ValueError) as exc:
        raise Unreadable(f"{path} is not a backup manifest: {exc}") from None
    # Only names a backup makes: a restore writes to them below the data directory.
    if strange := next((name for name in manifest.files if not _NAMES.fullmatch(name)), None):
        raise Unreadable(f"{path} names {strange!r}, which is no file of a backup")
    if not {manifest.config, manifest.index} <= manifest.files.keys():
        raise Unreadable(f"{path} does not list its configuration and index files")
    return manifest


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Replace DIR's manifest atomically: from now on DIR holds this backup. One file per line."""
    head = {"format": FORMAT, **{k: v for k, v in asdict(manifest).items() if k != "files"}}
    lines = [f" {json.dumps(key)}: {json.dumps(value)}," for key, value in head.items()]
    files = ",\n".join(f"  {json.dumps(name)}: {json.dumps(list(entry))}" for name, entry in manifest.files.items())
    text = "{\n" + "\n".join(lines) + '\n "files": {\n' + files + "\n }\n}\n"
    write_bytes(directory / MANIFEST_NAME, text.encode(), FILE_MODE)


def copy_verified(source: Path, target: Path, expected: tuple[int, str] | None = None) -> tuple[int, str]:
    """Copy `source` to `target` and return its (size, SHA-256 hex); `target` is durable once its
    directory is fsync'd (the caller does that, once per directory).

    Raises FileNotFoundError when `source` does not exist, `Damaged` when its bytes are not
    `expected` or the copy reads back otherwise, and OSError naming the file for other errors
    on either side. A failed copy leaves nothing at `target`'s temporary name, and an existing
    `target` as it was."""
    temporary = target.with_name(f".{target.name}.tmp")
    try:
        with open(source, "rb", buffering=0) as src:
            size, digest = _write(src, temporary)
            drop_cache(src.fileno())  # read once: the service's own pages stay cached instead
        if expected is not None and (size, digest) != tuple(expected):
            raise Damaged(f"{source} is not the file the manifest names: {size} bytes with SHA-256 {digest}, "
                          f"not {expected[0]} bytes with {expected[1]}")
        if hash_file(temporary) != (size, digest):
            raise Damaged(f"{target} reads back other bytes than were written to it")
        os.rename(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    return size, digest


def _write(src, temporary: Path) -> tuple[int, str]:
    """Copy the open file `src` into `temporary`, hashing; flushed and out of the page cache."""
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    digest = hashlib.sha256()
    size = 0
    fd = _target_call(os.open, temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        while True:
            try:
                count = src.readinto(buffer)
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, src.name) from None
            if not count:
                break
            digest.update(view[:count])
            written = 0
            while written < count:
                written += _target_call(os.write, fd, view[written:count], path=temporary)
            size += count
        _target_call(os.fsync, fd, path=temporary)
        drop_cache(fd)  # so that the read-back comes from the disk, not from memory
    finally:
        os.close(fd)
    return size, digest.hexdigest()


def _target_call(function, *args, path: Path | None = None):
    """`function(*args)`, its OSError naming the file written (`path`, else the first argument)."""
    try:
        return function(*args)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path or args[0])) from None


def hash_file(path: Path) -> tuple[int, str]:
    """(size, SHA-256 hex) of the file as the disk holds it."""
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        while count := f.readinto(buffer):
            digest.update(view[:count])
            size += count
        drop_cache(f.fileno())
    return size, digest.hexdigest()


def drop_cache(fd: int) -> None:
    """Ask the kernel to forget the file's cached pages (clean ones: after an fsync, all)."""
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def error_text(exc: OSError) -> str:
    """An OSError as a line for the installer: the file, the reason, and a full disk said so."""
    where = f"{exc.filename}: " if exc.filename else ""
    full = " (the disk is full)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return f"{where}{exc.strerror or exc}{full}"
