"""The storage area: spool, fan-out store, files made ahead, durable receiving, crash recovery.

Layout under the data directory::

    store/aa/<name>.dcm  stored instances; names are random hex, never derived from UIDs; the
                         256 directories `aa` exist from the start
    spool/<name>.dcm     a second name (hard link) of every store file not yet stored for good:
                         made ahead and unused (empty), being received, or stored but its index
                         row not yet flushed
    spool/<name>.old     the second name of a stored file that an ST-18 replacement or a deletion
                         (MG-02) retires
    quarantine/          refused datasets kept for diagnosis (ST-13, off by default)

The spool is the journal: while a store file has a spool name, recovery decides about it, and
it looks at the spool only, never at the whole archive.

A C-STORE data set is written straight into its final file (`Incoming`), whose two names were
made durable before it arrived: the pool (`_Pool`) makes them in batches of one store
directory, two directory fsyncs per batch. The protocol, per instance:

1. the data set goes into the file as it arrives (`Incoming.add`/`flush`);
2. once it is accepted, the file is sealed (`seal`: its size and a time stamp in the Part 10
   preamble, which PS3.10 leaves to the implementation) and flushed (`sync`);
3. its index row is committed without flushing the index's log; the status goes out;
4. once the log is flushed (store/flusher.py), the spool name goes (`finish`).

Recovery (ingest.Archive.recover): an empty file was never used; a file the index names is
stored; a sealed file the index does not name was stored but its row was lost with the log,
and is indexed again; anything else was never acknowledged and goes.

Removing stored files (ST-18 replacement, `study delete`) is journaled the same way: each
file gets its `.old` spool name, made durable, before the transaction that removes its row;
once that commit is durable the file goes. A crash in between leaves a `.old` name whose file
the index still names (kept: the spool name goes) or no longer names (the file goes).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import struct
import threading
import uuid
from pathlib import Path

from appliance.durable import fsync_dir, write_behind

log = logging.getLogger(__name__)

_NAME = re.compile(r"([0-9a-f]{32})\.(dcm|old)")
_SEAL = struct.Struct(">16sQQ")  # in the preamble: a mark, the file's size, a time stamp (ns)
_SEAL_MARK = b"APPLIANCE STORED"
POOL_LOW = 16  # the filler makes a batch when fewer files than this are ready
POOL_BATCH = 32  # files per batch, all in one store directory
_IOV_MAX = 1024  # Linux: buffers per writev
_PAGE = 4096


def write_error_reason(exc: OSError) -> str:
    """Words for the service log: a full disk (ST-07) or some other write failure."""
    return "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "cannot write file"


class InFlight:
    """A store file with its spool name: `<name>.dcm` (not stored for good yet) or `<name>.old`
    (retired by a replacement)."""

    def __init__(self, area: "StorageArea", name: str, suffix: str = ".dcm"):
        self.name = name
        self.relative = f"{name[:2]}/{name}.dcm"
        self.spool_path = area.spool / f"{name}{suffix}"
        self.store_path = area.store / self.relative

    @property
    def retired(self) -> bool:
        return self.spool_path.suffix == ".old"

    def finish(self) -> None:
        """The file is stored for good (or, for a retired one, kept): the spool name goes."""
        self.spool_path.unlink(missing_ok=True)

    def remove(self) -> None:
        """Every trace goes: the file was never stored, or it was replaced."""
        self.store_path.unlink(missing_ok=True)
        self.spool_path.unlink(missing_ok=True)

    def seal(self) -> tuple[int, int] | None:
        """(size, time stamp in ns) of a sealed file, when its size on disk is the sealed one."""
        try:
            with open(self.store_path, "rb") as f:
                mark, size, stamp = _SEAL.unpack(f.read(_SEAL.size).ljust(_SEAL.size, b"\0"))
                if mark != _SEAL_MARK or size != f.seek(0, 2):
                    return None
        except OSError:
            return None
        return size, stamp


class Incoming(InFlight):
    """One data set arriving into its store file, straight from the receive buffer.

    Writing never raises: the first error (ENOSPC, EIO) is kept in `error`, what was written is
    truncated away (giving the space back) and the rest of the data set is dropped as it is still
    read off the wire, so the C-STORE completes and is answered A700 (ST-07)."""

    def __init__(self, area: "StorageArea", name: str, fd: int):
        super().__init__(area, name)
        self.fd = fd
        self.size = 0
        self.error: OSError | None = None
        self._pending: list[memoryview] = []

    def write(self, data: bytes) -> None:
        self._pending.append(memoryview(data))
        self.flush()

    def add(self, fragment: memoryview) -> None:
        """A fragment to write at the next `flush` (it points into the receive buffer)."""
        if self.error is None:
            self._pending.append(fragment)

    def flush(self) -> None:
        """Write what was added, and let the disk start on it while the rest arrives (the file's
        fsync, in `sync`, then waits for little more than the journal)."""
        pending, self._pending = self._pending, []
        start = self.size
        while pending and self.error is None:
            batch, pending = pending[:_IOV_MAX], pending[_IOV_MAX:]
            try:
                written = os.writev(self.fd, batch)
            except OSError as exc:
                self._failed(exc)
                return
            self.size += written
            expected = sum(len(b) for b in batch)
            if written < expected:  # a short write: the rest of this batch goes round again
                pending = _after(batch, written) + pending
        start = max(start, _PAGE)  # not the first page: the seal writes it again
        if self.size - start >= _PAGE:
            write_behind(self.fd, start, self.size - start)

    def _failed(self, exc: OSError) -> None:
        self.error = exc
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass

    def seal(self, stamp: int) -> None:
        """Mark the data set complete and accepted: its size and `stamp` go into the preamble,
        so that recovery can tell it from a partial one. Before `sync`, which flushes both."""
        os.pwrite(self.fd, _SEAL.pack(_SEAL_MARK, self.size, stamp), 0)

    def sync(self) -> None:
        os.fsync(self.fd)

    def discard(self) -> None:
        self.close()
        self.remove()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

class Unwritable:
    """The sink of a data set for which no file could be made: what arrives is dropped, and
    the C-STORE is answered A700 with `error`."""

    size = 0

    def __init__(self, error: OSError):
        self.error = error

    def add(self, fragment: memoryview) -> None:
        pass

    def flush(self) -> None:
        pass

    def discard(self) -> None:
        pass


def _after(buffers: list[memoryview], count: int) -> list[memoryview]:
    """What remains of `buffers` once their first `count` bytes are written."""
    for index, buffer in enumerate(buffers):
        if count < len(buffer):
            return [buffer[count:]] + buffers[index + 1:]
        count -= len(buffer)
    return []


class StoreUnusable(Exception):
    """storage.store_dir names a directory that is not there, or on another file system than
    the spool (a store file could not have a spool name)."""


class StorageArea:
    def __init__(self, data_dir: Path, store: Path | None = None):
        """`store`: where the stored files live, `<data_dir>/store` unless the configuration
        names another directory (storage.store_dir, shared by several boxes, IX-02), which must
        exist: made here, it would be the local disk under a share that is not mounted. The
        spool stays in the data directory, which must be on the store's file system."""
        if store is not None and not store.is_dir():
            raise StoreUnusable(f"storage.store_dir {store} is not a directory (is the shared file system mounted?)")
        self.root = data_dir
        self.spool = data_dir / "spool"
        self.store = store or data_dir / "store"
        self.quarantine_dir = data_dir / "quarantine"
        for d in (self.spool, self.store):
            d.mkdir(parents=True, exist_ok=True)
        if self.spool.stat().st_dev != self.store.stat().st_dev:
            raise StoreUnusable(
                f"storage.store_dir {self.store} is on another file system than the spool ({self.spool}, in "
                "storage.data_dir): a stored file and its spool name are hard links of one file; put the data "
                "directory on the store's file system")
        try:
            for i in range(256):
                (self.store / f"{i:02x}").mkdir(exist_ok=True)
            fsync_dir(self.store)
        except OSError as exc:  # a full disk must not keep the service from starting
            log.warning("cannot create the store directories (%s); they will be created on use", exc)
        self._pool = _Pool(self)

    def start_pool(self) -> None:
        """Make files ahead from now on (after recovery, which removes those of the last run)."""
        self._pool.start()

    def stop_pool(self) -> None:
        """The files made ahead and not used go."""
        self._pool.stop()

    def incoming(self) -> Incoming:
        """A file to receive one data set into; OSError when none can be made."""
        name, fd = self._pool.take()
        return Incoming(self, name, fd)

    def make(self, names: list[str]) -> list[tuple[str, int]]:
        """Files with these names (all in one store directory), each with its spool name, both
        durable on return: (name, descriptor open for reading and writing) of each made. When
        the file system refuses one (no inode, no space), those made before it are kept; OSError
        only when none could be made."""
        made = []
        for name in names:
            spool_path = self.spool / f"{name}.dcm"
            store_path = self.store / name[:2] / f"{name}.dcm"
            try:
                # The spool name first: a crash before the link leaves a name recovery sees.
                fd = os.open(spool_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except OSError:
                if made:
                    break
                raise
            try:
                try:
                    os.link(spool_path, store_path)
                except FileNotFoundError:  # its directory could not be created at start
                    store_path.parent.mkdir(exist_ok=True)
                    fsync_dir(self.store)
                    os.link(spool_path, store_path)
            except OSError:
                os.close(fd)
                InFlight(self, name).remove()
                if made:
                    break
                raise
            made.append((name, fd))
        try:
            fsync_dir(self.spool)
            fsync_dir(self.store / names[0][:2])
        except BaseException:
            for name, fd in made:
                os.close(fd)
                InFlight(self, name).remove()
            raise
        return made

    def retire(self, relative: str) -> InFlight:
        """Journal the removal of a stored file whose index row is being replaced (ST-18): once
        the commit is durable `remove()`; if the transaction failed, `finish()`."""
        return self.retire_all([relative])[0]

    def retire_all(self, relatives: list[str]) -> list[InFlight]:
        """`retire` for many files (a deletion, MG-02), their spool names made durable together.
        On OSError the names made so far are taken back."""
        retired = []
        try:
            for relative in relatives:
                entry = InFlight(self, Path(relative).stem, ".old")
                os.link(entry.store_path, entry.spool_path)
                retired.append(entry)
            fsync_dir(self.spool)
        except BaseException:
            for entry in retired:
                entry.finish()
            raise
        return retired

    def remove_retired(self, retired: list[InFlight]) -> None:
        """The files of rows whose removal is durable go for good: their store names first, made
        durable, then the spool names (a spool name left by a crash is removed by recovery)."""
        for entry in retired:
            entry.store_path.unlink(missing_ok=True)
        for directory in {entry.store_path.parent for entry in retired}:
            fsync_dir(directory)
        for entry in retired:
            entry.spool_path.unlink(missing_ok=True)

    def in_flight(self) -> list[tuple[InFlight, int]]:
        """Every spool name with its file's size, for recovery; anything else in the spool (a
        partial file of an older release) is removed."""
        found = []
        for entry in os.scandir(self.spool):
            if match := _NAME.fullmatch(entry.name):
                found.append((InFlight(self, match[1], f".{match[2]}"), entry.stat().st_size))
            else:
                os.unlink(entry.path)
                log.warning("recovery: removed %s from the spool (not an instance's name)", entry.name)
        return found

    def free_bytes(self) -> int:
        st = os.statvfs(self.store)
        return st.f_bavail * st.f_frsize

    def quarantine(self, received: Path, reason: str, max_files: int) -> None:
        """ST-13: keep a refused dataset for diagnosis, bounded to the newest `max_files`."""
        self.quarantine_dir.mkdir(exist_ok=True)
        target = self.quarantine_dir / f"{uuid.uuid4().hex}.dcm"
        shutil.copyfile(received, target)
        (self.quarantine_dir / f"{target.stem}.txt").write_text(reason + "\n")
        kept = sorted(self.quarantine_dir.glob("*.dcm"), key=lambda p: p.stat().st_mtime)
        for old in kept[:-max_files]:
            old.unlink(missing_ok=True)
            old.with_suffix(".txt").unlink(missing_ok=True)


class _Pool:
    """Store files made ahead by a thread of their own, in batches of one store directory."""

    def __init__(self, area: StorageArea):
        self.area = area
        self._ready: list[tuple[str, int]] = []
        self._changed = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        self._failing = False  # the filler's last batch failed (logged once until one succeeds)

    def start(self) -> None:
        with self._changed:
            self._running = True
        self._thread = threading.Thread(target=self._fill, name="store-pool", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._changed:
            self._running = False
            self._changed.notify_all()
            ready, self._ready = self._ready, []
        if self._thread is not None:
            self._thread.join(10)
        for name, fd in ready:
            os.close(fd)
            InFlight(self.area, name).remove()

    def take(self) -> tuple[str, int]:
        with self._changed:
            if len(self._ready) <= POOL_LOW:
                self._changed.notify()
            if self._ready:
                return self._ready.pop()
        # None ready (a burst, or the pool is not running): one made now, its directories flushed.
        return self.area.make(_names(1))[0]

    def _fill(self) -> None:
        while True:
            with self._changed:
                while self._running and len(self._ready) > POOL_LOW:
                    self._changed.wait()
                if not self._running:
                    return
            try:
                made = self.area.make(_names(POOL_BATCH))
            except OSError as exc:
                if not self._failing:
                    log.warning("cannot make store files ahead (%s); each C-STORE makes its own", exc)
                self._failing = True
                with self._changed:
                    self._changed.wait(5.0)  # a full disk: try again later, not in a loop
                continue
            self._failing = False
            with self._changed:
                if self._running:
                    self._ready.extend(made)
                    continue
            for name, fd in made:  # stopped meanwhile
                os.close(fd)
                InFlight(self.area, name).remove()


def _names(count: int) -> list[str]:
    """Random names (uuid4 hex) that share their first two digits: one store directory."""
    first = uuid.uuid4().hex
    return [first] + [first[:2] + uuid.uuid4().hex[2:] for _ in range(count - 1)]
