"""The service log's file (LG-01, LG-10): rotated, on the disk within a second of each line,
and rid of what a power cut leaves at its end.

ext4 (delayed allocation) commits a file's new size to its journal every few seconds but
writes the appended data only when the page cache is written back, about 30 s later: after a
power cut, the lines of that last half minute read as NUL bytes (issue 22 item 9). So a thread
syncs the file (fdatasync) as soon as a line follows a quiet spell and then at most once per
SYNC_INTERVAL while lines keep coming: the thread that logs (a C-STORE's) never waits for the
disk, and a cut takes at most the lines of the last SYNC_INTERVAL plus one sync. Whatever a
cut left at the file's end (NULs where those lines were) is cut off when the file is opened
again, at the service's start.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import threading
from pathlib import Path

from appliance.durable import fsync_dir

SYNC_INTERVAL = 1.0  # s; the file's share of what a power cut may take (docs/architecture.md)
_CHUNK = 1 << 16

log = logging.getLogger("appliance.log_file")


def cut_nul_tail(path: Path) -> int:
    """Remove the NUL bytes at the end of `path` (what a power cut leaves of the lines written
    just before it), ending the file with a whole line; how many were removed."""
    try:
        f = open(path, "r+b")
    except FileNotFoundError:
        return 0
    with f:
        size = end = f.seek(0, os.SEEK_END)
        while end > 0:  # back to the last byte that is not NUL
            start = max(0, end - _CHUNK)
            f.seek(start)
            kept = f.read(end - start).rstrip(b"\0")
            if kept:
                end = start + len(kept)
                break
            end = start
        if end == size:
            return 0
        f.truncate(end)
        if end and not kept.endswith(b"\n"):  # a line the cut took part of
            f.seek(end)
            f.write(b"\n")
        f.flush()
        os.fsync(f.fileno())
    return size - end


class SyncedFileHandler(logging.handlers.RotatingFileHandler):
    """A RotatingFileHandler whose lines reach the disk within SYNC_INTERVAL (see above)."""

    def __init__(self, path: Path, max_bytes: int, backups: int):
        self.nul_bytes_cut = cut_nul_tail(path)  # the start's look at what the last stop left
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._written = threading.Event()  # a line not synced yet
        self._closing = threading.Event()
        self._failing = False  # a sync failed: said once, until one succeeds
        self._syncer = threading.Thread(target=self._sync_written, name="log file sync", daemon=True)
        self._syncer.start()

    def report_cut(self) -> None:
        """Say what the start cut off, once the handler is in place."""
        if self.nul_bytes_cut:
            log.warning("%s ended in %d NUL bytes, now removed: the lines of the last seconds before the "
                        "system stopped uncleanly (a power cut) were lost", self.baseFilename, self.nul_bytes_cut)

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if not self._written.is_set():
            self._written.set()

    def doRollover(self) -> None:
        """The full file is synced before it is renamed, and the names after; once per
        logging.max_bytes, under the handler's lock (the logging thread waits for it)."""
        if self.stream:
            self.stream.flush()
            os.fdatasync(self.stream.fileno())
        super().doRollover()
        fsync_dir(Path(self.baseFilename).parent)

    def close(self) -> None:
        self._closing.set()
        self._written.set()
        if self._syncer.is_alive() and self._syncer is not threading.current_thread():
            self._syncer.join()
        self._sync()  # what the last lines left
        super().close()

    def _sync_written(self) -> None:
        while True:
            self._written.wait()
            if self._closing.is_set():
                return
            self._written.clear()
            self._sync()
            self._closing.wait(SYNC_INTERVAL)  # the lines meanwhile go with the next sync

    def _sync(self) -> None:
        """fdatasync on a duplicate of the file's descriptor, so that the handler's lock is not
        held while the disk works (and a rotation meanwhile closes nothing under it)."""
        with self.lock:
            if not self.stream:
                return
            fd = os.dup(self.stream.fileno())
        try:
            os.fdatasync(fd)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                log.error("cannot sync the log file %s to the disk: %s", self.baseFilename, exc.strerror or exc)
            return
        finally:
            os.close(fd)
        self._failing = False
