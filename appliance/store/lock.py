"""One process at a time on a data directory: the daemon, or an offline maintenance step.

An exclusive `flock` on `<data_dir>/appliance.lock`, held for the process's lifetime. The
kernel drops it when the process dies, so a crash never leaves a stale lock behind. The file
holds the holder's PID, for the message that names it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "appliance.lock"


class InUse(Exception):
    """Another process holds the data directory."""


def hold(directory: Path, holder: str):
    """Take the lock or raise InUse; keep the returned file open for as long as it must be held."""
    path = directory / LOCK_NAME
    f = open(path, "a+", encoding="ascii")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        other = f.read().strip() or "another process"
        f.close()
        raise InUse(f"{directory} is in use by {other}") from None
    f.seek(0)
    f.truncate()
    f.write(f"{holder} (pid {os.getpid()})\n")
    f.flush()
    return f
