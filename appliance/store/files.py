"""The storage area: spool, fan-out store, durable placement and crash recovery.

Layout under the data directory::

    spool/               pynetdicom writes each incoming dataset here (same filesystem as store/)
    spool/<uuid>.dcm     an instance being placed: its name says where it goes in store/
    store/aa/<uuid>.dcm  stored instances; names are random, never derived from UIDs; the 256
                         directories `aa` exist from the start (no mkdir on the hot path)
    quarantine/          refused datasets kept for diagnosis (ST-13, off by default)

Placement protocol (the spool name is the journal, so recovery is O(instances in flight),
not a scan of the archive):

1. rename the received file to ``spool/<uuid>.dcm`` and hard-link it to
   ``store/aa/<uuid>.dcm``;
2. fsync the file, ``spool/`` and the store directory (see `StorageArea.place`);
3. the caller commits the index row;
4. unlink the spool name.

Replacing a stored instance (ST-18) journals the old file the same way (`retire`).

After a crash, `recover()` keeps a store file only if the index has its row.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import uuid
from pathlib import Path

from appliance.durable import fsync_dir, fsync_file

log = logging.getLogger(__name__)


def write_error_reason(exc: OSError) -> str:
    """Words for the service log: a full disk (ST-07) or some other write failure."""
    return "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "cannot write file"


class Placement:
    """One instance on its way into the store; `commit()` after the index row is committed."""

    def __init__(self, area: "StorageArea", name: str):
        self.area = area
        self.name = name
        self.relative = f"{name[:2]}/{name}.dcm"
        self.spool_path = area.spool / f"{name}.dcm"
        self.store_path = area.store / self.relative

    def commit(self) -> None:
        self.spool_path.unlink(missing_ok=True)

    def rollback(self) -> None:
        """Remove every trace; used when the index transaction failed."""
        self.store_path.unlink(missing_ok=True)
        self.spool_path.unlink(missing_ok=True)


class StorageArea:
    def __init__(self, data_dir: Path):
        self.root = data_dir
        self.spool = data_dir / "spool"
        self.store = data_dir / "store"
        self.quarantine_dir = data_dir / "quarantine"
        for d in (self.spool, self.store):
            d.mkdir(parents=True, exist_ok=True)
        try:
            for i in range(256):
                (self.store / f"{i:02x}").mkdir(exist_ok=True)
            fsync_dir(self.store)
        except OSError as exc:  # a full disk must not keep the service from starting
            log.warning("cannot create the store directories (%s); they will be created on use", exc)

    def place(self, received: Path) -> Placement:
        """Steps 1-2 of the protocol; on any error nothing of the instance remains.

        The renames come first and the fsyncs after, so that on ext4 the file's fsync commits
        the one journal transaction holding all of them and the directory fsyncs that follow
        find nothing left to write; on any POSIX filesystem every name is durable on return.
        """
        placement = Placement(self, uuid.uuid4().hex)
        try:
            os.rename(received, placement.spool_path)
            try:
                os.link(placement.spool_path, placement.store_path)
            except FileNotFoundError:  # its directory could not be created at start
                placement.store_path.parent.mkdir(exist_ok=True)
                fsync_dir(self.store)
                os.link(placement.spool_path, placement.store_path)
            fsync_file(placement.store_path)
            fsync_dir(self.spool)
            fsync_dir(placement.store_path.parent)
        except BaseException:
            placement.rollback()
            Path(received).unlink(missing_ok=True)
            raise
        return placement

    def retire(self, relative: str) -> Placement:
        """Journal the removal of a stored file whose index row is being replaced (ST-18).

        The spool link makes the pending removal visible to `recover`, which applies the same
        rule as for placements: a store file whose path the index no longer holds goes.
        After the commit, `rollback()` removes it; if the transaction failed, `commit()`.
        """
        placement = Placement(self, Path(relative).stem)
        os.link(placement.store_path, placement.spool_path)
        fsync_dir(self.spool)
        return placement

    def free_bytes(self) -> int:
        st = os.statvfs(self.store)
        return st.f_bavail * st.f_frsize

    def recover(self, is_indexed) -> tuple[int, int]:
        """Finish or undo placements interrupted by a crash. Returns (kept, removed)."""
        kept = removed = 0
        for entry in self.spool.iterdir():
            name = entry.name
            if entry.suffix == ".dcm" and len(entry.stem) == 32:
                placement = Placement(self, entry.stem)
                if is_indexed(placement.relative):
                    placement.commit()
                    kept += 1
                    continue
                placement.rollback()
            else:
                entry.unlink(missing_ok=True)  # a partial receive (pynetdicom temp file)
            removed += 1
            log.warning("recovery: removed unacknowledged partial instance %s", name)
        return kept, removed

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
