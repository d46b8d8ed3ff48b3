"""The service log's lines across its rotated files, oldest first, and then, like `tail -F`, the
new ones as they are written (LG-10).

The service's RotatingFileHandler renames `appliance.log` to `appliance.log.1` (and each backup
one number up) when it reaches `logging.max_bytes`, and starts a new `appliance.log`. The
follower keeps the file it reads open, so a rotation loses nothing: it notices that the name
now leads to another file, reads the old one to its end, then every backup made since (a burst
can rotate more than once between two looks), then the new file. Files are told apart by
inode, so a file renamed while the backlog is read is not read twice.

Only whole lines are handed on: the handler writes a record with one write, but a look can
come in the middle of it. A run of NUL bytes, where a power cut took the last lines before it
(the service cuts such a run off its file's end when it starts; files of earlier versions can
hold several), reads as one line break: no NUL is handed on, and the record after it stays a
record of its own.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import BinaryIO, Iterator

POLL = 0.2  # seconds between looks at a file that has nothing new
_CUT = re.compile(rb"\n?\0+\n?")  # a power cut's NUL run, with the line breaks around it


class Tail:
    def __init__(self, path: Path, backups: int):
        self.path = path
        self.backups = backups
        self._file: BinaryIO | None = None  # the current file, as far as it has been read
        self._partial = b""  # the start of a line whose end has not been written yet
        self._last: int | None = None  # the inode of the newest file read

    def lines(self, follow: bool = False) -> Iterator[str | None]:
        """Every line, oldest first; with `follow`, then the new ones for ever, and None after
        each look that found nothing new: what came before it is all there is for now (so a
        record is whole: the handler writes each at once)."""
        self._file = _open(self.path)
        yield from self._backups(after=None)
        yield from self._read()
        quiet = True
        while follow:
            if self._rotated():
                yield from self._next_file()
                quiet = False
                continue
            if quiet:
                yield None
            time.sleep(POLL)
            position = self._file.tell() if self._file is not None else 0
            yield from self._read()
            quiet = self._file is None or self._file.tell() == position
        if self._file is not None:
            self._file.close()

    def _backups(self, after: int | None) -> Iterator[str]:
        """The backups newer than the file with inode `after` (all when it is not among them:
        None, or rotated past the last backup), oldest first, whole; never the current file
        (a rotation may just have made it the first backup)."""
        opened = [f for f in map(_open, self._chain()) if f is not None]
        inodes = [_inode(f) for f in opened]
        newer = inodes.index(after) + 1 if after in inodes else 0
        current = _inode(self._file)
        for position, f in enumerate(opened):
            if position >= newer and inodes[position] != current:
                yield from _whole(f)
                self._last = inodes[position]
            f.close()

    def _chain(self) -> list[Path]:
        """The backups' names, oldest first."""
        return [self.path.with_name(f"{self.path.name}.{n}") for n in range(self.backups, 0, -1)]

    def _read(self) -> Iterator[str]:
        """The current file's whole lines written since the last read."""
        data = self._file.read() if self._file is not None else b""
        if not data:
            return
        self._last = _inode(self._file)
        *whole, self._partial = _CUT.sub(b"\n", self._partial + data).split(b"\n")
        for line in whole:
            yield line.decode("utf-8", errors="replace")

    def _rotated(self) -> bool:
        """Whether the log's name leads to another file than the one read (or to one at last);
        a file cut shorter than what was read (truncated by hand) is read again from its start."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False  # not yet (the service has not started) or in the middle of a rotation
        if self._file is None or now.st_ino != _inode(self._file):
            return True
        if now.st_size < self._file.tell():
            self._file.seek(0)
            self._partial = b""
        return False

    def _next_file(self) -> Iterator[str]:
        """After a rotation: the rest of the old file, the backups made after it, the new file."""
        if self._file is not None:
            yield from self._read()
            if self._partial:
                yield self._partial.decode("utf-8", errors="replace")
            self._last = _inode(self._file)
            self._file.close()
        self._file, self._partial = _open(self.path), b""
        yield from self._backups(after=self._last)


def _open(path: Path) -> BinaryIO | None:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None


def _whole(f: BinaryIO) -> Iterator[str]:
    """A file that no longer grows, line by line (its last line may lack its newline)."""
    lines = _CUT.sub(b"\n", f.read()).split(b"\n")
    for line in lines if lines[-1] else lines[:-1]:
        yield line.decode("utf-8", errors="replace")


def _inode(f: BinaryIO | None) -> int | None:
    return os.fstat(f.fileno()).st_ino if f is not None else None
