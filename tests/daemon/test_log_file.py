"""The service log's file and power cuts (LG-01, LG-10; issue 22 item 9): its lines are on the
disk within a second, not after the kernel's 30 s writeback, and the NUL bytes a cut leaves at
its end are gone once the service starts again. Real daemon, real file system: whether a
file's pages are still dirty in the page cache is the kernel's own count (cachestat(2)).
tests/e2e/test_power_cut.py cuts the power of the booted image."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import datasets
import scu
from appliance.log_file import SYNC_INTERVAL
from helpers import wait_for

_CACHESTAT = 451  # the system call's number on x86-64 and arm64 (Linux 6.5)
_libc = ctypes.CDLL(None, use_errno=True)


class _Range(ctypes.Structure):
    _fields_ = [("offset", ctypes.c_uint64), ("length", ctypes.c_uint64)]


class _Counts(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64)
                for name in ("cache", "dirty", "writeback", "evicted", "recently_evicted")]


def unwritten_pages(path: Path) -> int:
    """Pages of the file in the page cache that are not on the disk yet (dirty or being written)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        counts = _Counts()
        if _libc.syscall(_CACHESTAT, fd, ctypes.byref(_Range(0, 0)), ctypes.byref(counts), 0) != 0:
            raise OSError(ctypes.get_errno(), f"cachestat: {os.strerror(ctypes.get_errno())}")
        return counts.dirty + counts.writeback
    finally:
        os.close(fd)


def test_stored_lines_are_on_the_disk_within_a_second(make_appliance, tmp_path):
    """Each C-STORE's line is written at once; the file's pages are clean within SYNC_INTERVAL
    of the last one (plus a margin for a busy disk), where the kernel alone takes 30 s
    (vm.dirty_expire_centisecs)."""
    app = make_appliance()
    log_file = app.data_dir / "appliance.log"
    paths = [datasets.write(datasets.image(), tmp_path / f"{n}.dcm") for n in range(20)]
    with scu.association(app.storage_port) as assoc:
        for path in paths:
            assert scu.send_file(assoc, path) == 0x0000
    wait_for(lambda: unwritten_pages(log_file) == 0, "the log file's pages on the disk", SYNC_INTERVAL + 5)
    text = log_file.read_text()
    assert text.count("status 0x0000: stored") == len(paths)


def test_the_start_cuts_off_the_nul_bytes_a_power_cut_left(make_appliance):
    """As ext4 leaves it after a cut: whole lines, then part of one, then NULs where the rest
    was. The service keeps the lines, ends the part line, removes the NULs and says so."""
    app = make_appliance(start=False)
    app.data_dir.mkdir(parents=True)
    before = ("2026-03-29T14:30:05.120+02:00 INFO appliance.storage_scp: STORAGE-SCP #1 MOD@10.0.0.7:4100: "
              "C-STORE 1.2.3 class 1.2.840.10008.5.1.4.1.1.2 status 0x0000: stored\n")
    part = "2026-03-29T14:30:05.130+02:00 INFO appliance.storage_scp: STORAGE-SC"
    (app.data_dir / "appliance.log").write_bytes((before + part).encode() + b"\0" * 70000)
    app.start()
    assert app.stop() == 0
    text = (app.data_dir / "appliance.log").read_text()
    assert "\0" not in text
    assert text.startswith(before + part + "\n")
    assert (f"WARNING appliance.log_file: {app.data_dir / 'appliance.log'} ended in 70000 NUL bytes, now removed"
            in text)
