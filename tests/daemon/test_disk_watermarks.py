"""Disk watermarks (MG-04): WARNING and ALERT lines as free space runs low, once per crossing.

The daemon runs on a real small disk (the `small_disk` tmpfs of conftest.py), filled by C-STOREs
and by a filler file that the service does not know about.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

import datasets
import scu
from appliance.config.model import Storage
from appliance.store.watermarks import ALERT, CHECK_INTERVAL, WARNING, DiskWatch, crossed
from helpers import fill_until_percent, merge, percent_free, service_tool, wait_for

SUCCESS = 0x0000
LEVELS = {"storage": {"warn_free_percent": 50, "alert_free_percent": 25}}
NOTICED = CHECK_INTERVAL + 5  # the periodic check, with room for a loaded machine
LOW = r"WARNING appliance\.store\.watermarks: disk space low: "
VERY_LOW = r"ALERT appliance\.store\.watermarks: disk space very low: "
RECOVERED = r"INFO appliance\.store\.watermarks: disk space recovered: "


def lines(app, pattern: str) -> int:
    return len(re.findall(pattern, app.log()))


def store_until_below(assoc, tmp_path: Path, directory: Path, percent: float) -> int:
    """C-STORE 512 KiB instances (about 2 % of the small disk each) until less than `percent` of
    the disk is free; how many it took."""
    for n in range(40):
        if percent_free(directory) < percent:
            return n
        ds = datasets.image(rows=512, columns=512)
        assert scu.send_file(assoc, datasets.write(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm")) == SUCCESS
    raise AssertionError(f"40 instances left {percent_free(directory):.1f} % free")


def test_c_stores_crossing_the_watermarks_log_once_per_crossing(small_disk, tmp_path):
    """MG-04: the C-STORE that takes free space below warn_free_percent logs one WARNING, the one
    below alert_free_percent one ALERT (before its C-STORE-RSP: no periodic check needed); the
    stores after them log nothing more. Space freed by deleting the filler logs the recovery, and
    falling below the warning level again logs a second WARNING."""
    app = small_disk(LEVELS)
    fill_until_percent(app.data_dir, 53)
    sent = tmp_path / "sent"
    sent.mkdir()
    with scu.association(app.storage_port) as assoc:
        assert store_until_below(assoc, sent, app.data_dir, 49) >= 1  # a point below: the store saw < 50 %
        assert (lines(app, LOW), lines(app, VERY_LOW)) == (1, 0), app.log()
        assert store_until_below(assoc, sent, app.data_dir, percent_free(app.data_dir) - 5) >= 2
        fill_until_percent(app.data_dir, 28)  # still above the alert level
        assert store_until_below(assoc, sent, app.data_dir, 24) >= 1
        assert (lines(app, LOW), lines(app, VERY_LOW)) == (1, 1), app.log()
        assert store_until_below(assoc, sent, app.data_dir, percent_free(app.data_dir) - 3) >= 1
    assert (lines(app, LOW), lines(app, VERY_LOW), lines(app, RECOVERED)) == (1, 1, 0), app.log()
    assert re.search(VERY_LOW + r"[\d.]+ MB free \(2\d\.\d %\), below storage\.alert_free_percent \(25 %\); "
                     r"C-STOREs will be refused \(A700\) once the disk is full: delete studies no longer needed "
                     r"\(service-tool study list, service-tool study delete\) or add disk$", app.log(), re.M), app.log()

    (app.data_dir / "filler").unlink()
    app.wait_log(RECOVERED + r".* above the watermarks again \(storage\.warn_free_percent 50 %, "
                             r"storage\.alert_free_percent 25 %\)", timeout=NOTICED)
    fill_until_percent(app.data_dir, 40)
    wait_for(lambda: lines(app, LOW) == 2, "a second WARNING", timeout=NOTICED)
    assert (lines(app, VERY_LOW), lines(app, RECOVERED)) == (1, 1), app.log()


def test_a_study_delete_that_frees_space_is_seen_at_once(small_disk, tmp_path):
    """MG-02, MG-04: the recovery line is written before `service-tool study delete` returns,
    not at the next periodic check."""
    app = small_disk(LEVELS)
    fill_until_percent(app.data_dir, 58)
    sent = tmp_path / "sent"
    sent.mkdir()
    study = "1.2.826.0.1.3680043.9.7433.77"
    with scu.association(app.storage_port) as assoc:
        for n in range(40):  # about 2 % of the disk each, until below the warning level
            if percent_free(app.data_dir) < 48:
                break
            ds = datasets.image(rows=512, columns=512, study_uid=study)
            assert scu.send_file(assoc, datasets.write(ds, sent / f"{n}.dcm")) == SUCCESS
    assert lines(app, LOW) == 1, app.log()
    deleted = service_tool(app.config_path, "study", "delete", study, "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert percent_free(app.data_dir) > 51  # above the level and its hysteresis (the index grew a little)
    assert lines(app, RECOVERED) == 1, app.log()


def test_a_disk_filled_by_another_writer_is_noticed_at_start_and_while_idle(small_disk):
    """MG-04: a disk already below the alert level when the service starts is an ALERT before
    READY (one line, no WARNING on the way down); the periodic check notices the other writer
    freeing space (above the alert level, still below the warning level: a recovery line),
    filling it again (a second ALERT) and freeing it all."""
    app = small_disk(LEVELS, start=False)
    fill_until_percent(app.data_dir, 20)
    app.start()
    assert (lines(app, LOW), lines(app, VERY_LOW)) == (0, 1), app.log()

    fill_until_percent(app.data_dir, 40)
    app.wait_log(RECOVERED + r"[\d.]+ MB free \(\d\d\.\d %\), above storage\.alert_free_percent \(25 %\) again, "
                             r"still below storage\.warn_free_percent \(50 %\)", timeout=NOTICED)
    fill_until_percent(app.data_dir, 20)
    wait_for(lambda: lines(app, VERY_LOW) == 2, "a second ALERT", timeout=NOTICED)
    (app.data_dir / "filler").unlink()
    wait_for(lambda: lines(app, RECOVERED) == 2, "the second recovery", timeout=NOTICED)
    assert lines(app, LOW) == 0, app.log()


def test_a_reload_applies_new_levels_at_once(small_disk):
    """MG-04: warn_free_percent and alert_free_percent apply on reload, and the disk is looked at
    then; storage.reserve_bytes still waits for a restart, and the reload says so."""
    app = small_disk()
    fill_until_percent(app.data_dir, 40)  # above the default levels (15 %, 5 %)
    app.write_config(merge(app.config, {"storage": {"warn_free_percent": 60, "reserve_bytes": 1 << 20}}))
    app.reload()
    assert lines(app, LOW + r".*below storage\.warn_free_percent \(60 %\)") == 1, app.log()
    assert "reload: changes to storage.reserve_bytes take effect at the next restart" in app.log()


def test_a_level_is_left_only_a_point_above_it(small_disk, caplog):
    """MG-04: a disk hovering around the warning level logs once: the level counts as left one
    percentage point above it. DiskWatch on the real small disk, checked by hand."""
    directory = small_disk(start=False).data_dir
    watch = DiskWatch(directory, Storage(warn_free_percent=50, alert_free_percent=25))
    caplog.set_level(logging.INFO, "appliance.store.watermarks")

    def after_filling(percent: float) -> list[str]:
        caplog.clear()
        fill_until_percent(directory, percent)
        watch.check()
        return [record.levelname for record in caplog.records]

    assert after_filling(49.5) == ["WARNING"]
    assert after_filling(50.5) == []  # hovering
    assert after_filling(49.5) == []
    assert after_filling(51.5) == ["INFO"]
    assert after_filling(49.5) == ["WARNING"]
    assert watch.level == WARNING


@pytest.mark.parametrize("percent, previous, expected", [
    (14.9, None, WARNING), (15.0, None, None), (15.9, WARNING, WARNING), (16.0, WARNING, None),
    (4.9, None, ALERT), (4.9, WARNING, ALERT), (5.9, ALERT, ALERT), (6.0, ALERT, WARNING), (16.0, ALERT, None),
])
def test_crossed_levels_with_hysteresis(percent, previous, expected):
    assert crossed(percent, Storage(warn_free_percent=15, alert_free_percent=5), previous) == expected


def test_a_level_of_zero_is_off():
    assert crossed(0.0, Storage(warn_free_percent=0, alert_free_percent=0)) is None
    assert crossed(3.0, Storage(warn_free_percent=0, alert_free_percent=5)) == ALERT
    assert crossed(0.5, Storage(warn_free_percent=15, alert_free_percent=0), WARNING) == WARNING
