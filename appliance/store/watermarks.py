"""Disk watermarks (MG-04): a WARNING, then an ALERT, as free space runs low.

`storage.warn_free_percent` and `storage.alert_free_percent` are shares of the data directory's
file system counted as df counts them: Avail / (Used + Avail), so the blocks only root may use
are not the service's. Falling below a level logs one line naming the free space and what to
do; an ALERT line also reaches the journal at priority 1 and the audit collector (AU-03). A
level counts as left only HYSTERESIS points above it (then an INFO line), so a disk hovering at
a level logs once, not at every C-STORE; falling below it again later logs again.

`DiskWatch` is the running service's. It looks at the disk at start, every CHECK_INTERVAL
seconds (a disk filled by something else) and at every C-STORE: the C-STORE measures free space
for the reserve anyway (ST-07) and hands that number over, which costs two comparisons against
the range of free bytes in which the level stays, and no system call. `service-tool status`
calls `crossed` without a previous level: the disk as it is now.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from appliance import log as service_log
from appliance import units
from appliance.config.model import Storage

log = logging.getLogger(__name__)

WARNING, ALERT = "warning", "alert"
HYSTERESIS = 1.0  # percentage points above a level before it counts as left
CHECK_INTERVAL = 5.0  # seconds; a disk filled by another writer is noticed this late at most

_ADVICE = "delete studies no longer needed (service-tool study list, service-tool study delete) or add disk"


@dataclass(frozen=True)
class Usage:
    total: int  # the file system's size (df's Size)
    free: int  # what the service may still write (df's Avail)
    size: int  # free plus used (df's Used + Avail): the base of the percentages

    @property
    def free_percent(self) -> float:
        return 100 * self.free / self.size if self.size else 100.0  # a file system of no size is never full

    def bytes_at(self, percent: float) -> float:
        return self.size * percent / 100


def usage(directory: Path) -> Usage:
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    return Usage(st.f_blocks * st.f_frsize, free, free + (st.f_blocks - st.f_bfree) * st.f_frsize)


def crossed(percent: float, storage: Storage, previous: str | None = None) -> str | None:
    """The level `percent` free is below (ALERT, WARNING) or None. Coming from `previous`, a level
    is left only HYSTERESIS points above it; a level of 0 is off."""

    def below(level: int, was: bool) -> bool:
        return level > 0 and (percent < level or (was and percent < level + HYSTERESIS))

    if below(storage.alert_free_percent, previous == ALERT):
        return ALERT
    if below(storage.warn_free_percent, previous is not None):
        return WARNING
    return None


def _amount(now: Usage) -> str:
    return f"{units.size(now.free)} free ({now.free_percent:.1f} %)"


def problem(level: str, now: Usage, storage: Storage) -> str:
    """What the WARNING or ALERT line says, in the log and in `status`."""
    if level == ALERT:
        refused = (f"once less than storage.reserve_bytes ({units.size(storage.reserve_bytes)}) is free"
                   if storage.reserve_bytes else "once the disk is full")
        return (f"disk space very low: {_amount(now)}, below storage.alert_free_percent "
                f"({storage.alert_free_percent} %); C-STOREs will be refused (A700) {refused}: {_ADVICE}")
    return (f"disk space low: {_amount(now)}, below storage.warn_free_percent ({storage.warn_free_percent} %): "
            f"{_ADVICE}")


def recovery(level: str | None, now: Usage, storage: Storage) -> str:
    """The INFO line when free space rose out of a level; `level` is the one it is below now."""
    if level == WARNING:
        where = (f"above storage.alert_free_percent ({storage.alert_free_percent} %) again, still below "
                 f"storage.warn_free_percent ({storage.warn_free_percent} %)")
    else:
        where = (f"above the watermarks again (storage.warn_free_percent {storage.warn_free_percent} %, "
                 f"storage.alert_free_percent {storage.alert_free_percent} %)")
    return f"disk space recovered: {_amount(now)}, {where}"


class DiskWatch:
    """The running service's watermarks on the data directory's file system."""

    def __init__(self, directory: Path, storage: Storage):
        self.directory = directory
        self.storage = storage
        self.level: str | None = None
        # Free bytes within which `level` stays (from the last check): `seen` reads it without
        # the lock, so it is replaced whole.
        self._steady: tuple[float, float] = (0, math.inf)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._failing = False  # the last periodic check failed (logged once until one succeeds)
        self._thread = threading.Thread(target=self._run, name="disk-watch", daemon=True)

    def start(self) -> "DiskWatch":
        self.check()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(5)

    def configure(self, storage: Storage) -> None:
        """New levels (a reload) apply at once."""
        with self._lock:
            self.storage = storage
        self.check()

    def seen(self, free: int) -> None:
        """Free bytes a C-STORE measured: a closer look only outside the range where the level stays."""
        low, high = self._steady
        if not low <= free < high:
            self.check()

    def check(self) -> None:
        with self._lock:
            now = usage(self.directory)
            level = crossed(now.free_percent, self.storage, self.level)
            if level == ALERT and self.level != ALERT:
                service_log.alert(log, "%s", problem(ALERT, now, self.storage))
            elif level == WARNING and self.level is None:
                log.warning("%s", problem(WARNING, now, self.storage))
            elif level != self.level:
                log.info("%s", recovery(level, now, self.storage))
            self.level = level
            self._steady = self._steady_range(now)

    def _steady_range(self, now: Usage) -> tuple[float, float]:
        """The free bytes for which `crossed` keeps `self.level` (its rule, in bytes)."""
        warn, alert = self.storage.warn_free_percent, self.storage.alert_free_percent
        if self.level == ALERT:
            return 0, now.bytes_at(alert + HYSTERESIS)
        if self.level == WARNING:
            return now.bytes_at(alert), now.bytes_at(warn + HYSTERESIS)
        return now.bytes_at(max(warn, alert)), math.inf

    def _run(self) -> None:
        while not self._stopped.wait(CHECK_INTERVAL):
            try:
                self.check()
            except OSError as exc:
                if not self._failing:
                    log.error("cannot read the free space of %s: %s", self.directory, exc)
                self._failing = True
                continue
            self._failing = False
