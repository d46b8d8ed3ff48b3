"""Where pynetdicom puts an incoming C-STORE dataset, and what happens when that goes wrong.

pynetdicom 3.0 with `STORE_RECV_CHUNKED_DATASET` writes each dataset, as it arrives, to a
`NamedTemporaryFile` in `tempfile.gettempdir()` (bounded memory for large instances). We
point that directory at the store's spool (same filesystem, so the archive renames the file
into place instead of copying it) and give pynetdicom a file that cannot fail under it:

- pynetdicom writes from the association's reader thread; an OSError there (ENOSPC when one
  instance is larger than the free space, EIO, no inode left) kills the thread silently and
  leaves the partial file. `SpoolFile` never raises: it keeps the first error, truncates what
  was written (giving the space back) and discards the rest while it is still read off the
  wire, so the C-STORE completes and is answered A700 (ST-07);
- a connection that dies mid-dataset leaves its file open on pynetdicom's DIMSE provider;
  `discard_in_flight` removes it (FL-02). Start-up recovery covers a killed process.

pynetdicom has no hook for either, so `install` replaces the module-level name it creates
the file through; it refuses to run against a pynetdicom that no longer has that name.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

from pynetdicom import _config as pynetdicom_config
from pynetdicom import dimse_messages


class SpoolFile:
    """Stands in for pynetdicom's `NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")`."""

    def __init__(self, mode: str = "wb", suffix: str = ".dcm", delete: bool = False, **_ignored):
        self.error: OSError | None = None
        self.file = self  # pynetdicom calls `.file.flush()` after each fragment
        try:
            self._file = tempfile.NamedTemporaryFile(mode=mode, suffix=suffix, delete=delete, buffering=0)
            self.name = self._file.name
        except OSError as exc:  # e.g. no inode or directory block left: nothing was created
            self._file = None
            self.name = os.path.join(tempfile.gettempdir(), f"unwritable-{uuid.uuid4().hex}{suffix}")
            self.error = exc

    def write(self, data) -> int:
        if self.error is None:
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self._file.fileno(), view):]
            except OSError as exc:
                self.error = exc
                try:
                    os.ftruncate(self._file.fileno(), 0)
                except OSError:
                    pass
        return len(data)

    def flush(self) -> None:
        pass  # unbuffered: every write() went to the kernel

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def discard(self) -> None:
        """Close and remove: the dataset will never be complete."""
        self.close()
        Path(self.name).unlink(missing_ok=True)


def install(spool_dir: Path) -> None:
    if not hasattr(dimse_messages, "NamedTemporaryFile"):
        raise RuntimeError("pynetdicom no longer creates its receive file as receive.SpoolFile expects")
    pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True
    tempfile.tempdir = str(spool_dir)
    dimse_messages.NamedTemporaryFile = SpoolFile


def receive_error(request) -> OSError | None:
    """The write error of a C-STORE-RQ's received dataset, if writing it failed."""
    return getattr(getattr(request, "_dataset_file", None), "error", None)


def discard_in_flight(assoc) -> None:
    """Remove the file of a dataset the association was still receiving (pynetdicom keeps it
    on its DIMSE provider until the message is complete)."""
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    spool = getattr(message, "_data_set_file", None)
    if isinstance(spool, SpoolFile):
        spool.discard()
