"""The audit spool: messages that wait on disk for the collector, oldest first (AU-02).

One file per message, `<data_dir>/audit-spool/<sequence>.msg`, holding the RFC 5424 message
as it will be sent. A file is written beside its name, flushed and renamed into place, and
the directory is flushed once per batch: a message in the spool survives a restart and a
power cut, and a file is either whole or absent. Sequence numbers continue across restarts,
so the order on disk is the order the events happened.

The spool holds at most `max_bytes` of messages; a message that does not fit pushes out the
oldest ones (the caller says so with an ALERT), and one larger than the whole bound is not
kept at all. Used by the sender's thread only.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

from appliance.durable import fsync_dir

DIRECTORY = "audit-spool"
_SUFFIX = ".msg"


class Spool:
    def __init__(self, directory: Path, max_bytes: int):
        self.directory = directory
        self.max_bytes = max_bytes
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        found = []
        for path in directory.iterdir():
            if path.suffix == _SUFFIX and path.stem.isdigit():
                found.append((int(path.stem), path.stat().st_size))
            elif path.name.endswith(".tmp"):  # a write a crash cut short: never acknowledged
                path.unlink(missing_ok=True)
        found.sort()
        self._entries: collections.deque[tuple[int, int]] = collections.deque(found)  # (sequence, size)
        self.bytes = sum(size for _, size in found)
        self._next = found[-1][0] + 1 if found else 1

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, messages: list[bytes]) -> int:
        """Keep `messages` after the others; how many messages were dropped to make room
        (the oldest first). OSError when the files cannot be written."""
        dropped = 0
        written = False
        for data in messages:
            if len(data) > self.max_bytes:
                dropped += 1
                continue
            while self._entries and self.bytes + len(data) > self.max_bytes:
                self._drop_oldest()
                dropped += 1
            sequence = self._next
            path = self._path(sequence)
            tmp = path.with_name(path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
            self._next += 1
            self._entries.append((sequence, len(data)))
            self.bytes += len(data)
            written = True
        if written or dropped:
            fsync_dir(self.directory)
        return dropped

    def oldest(self) -> tuple[int, bytes] | None:
        """(sequence, message) of the oldest message; None when the spool is empty. A file
        that cannot be read is dropped (OSError is raised once for it)."""
        if not self._entries:
            return None
        sequence, _ = self._entries[0]
        try:
            return sequence, self._path(sequence).read_bytes()
        except OSError:
            self.remove(sequence)
            raise

    def remove(self, sequence: int) -> None:
        """The oldest message was sent: it goes. The directory is not flushed for it: after a
        power cut the collector may get it once more, never lose it."""
        if self._entries and self._entries[0][0] == sequence:
            _, size = self._entries.popleft()
            self.bytes -= size
            self._path(sequence).unlink(missing_ok=True)

    def set_limit(self, max_bytes: int) -> int:
        """A new bound (a reload); how many of the oldest messages it pushed out."""
        self.max_bytes = max_bytes
        dropped = 0
        while self._entries and self.bytes > self.max_bytes:
            self._drop_oldest()
            dropped += 1
        if dropped:
            fsync_dir(self.directory)
        return dropped

    def _drop_oldest(self) -> None:
        sequence, size = self._entries.popleft()
        self.bytes -= size
        self._path(sequence).unlink(missing_ok=True)

    def _path(self, sequence: int) -> Path:
        return self.directory / f"{sequence:020d}{_SUFFIX}"
