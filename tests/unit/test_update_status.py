"""`service-tool update status` from the loader entries and the update records
(service_tool/update_cmd.py, issue 21), and the RAUC backend's answers."""

from __future__ import annotations

import argparse

import pytest

from appliance.store.db import MIGRATING
from service_tool import slots, update_cmd

pytestmark = pytest.mark.unit


@pytest.fixture
def box(tmp_path, monkeypatch):
    esp, records = tmp_path / "esp", tmp_path / "update"
    monkeypatch.setattr(update_cmd, "ESP", esp)
    monkeypatch.setattr(update_cmd, "RECORDS", records)
    monkeypatch.setattr(update_cmd, "own_version", lambda: "2.0.0")
    monkeypatch.setattr(update_cmd, "booted_slot", lambda: "b")
    slots.make_primary(esp, "a", "1.0.0", tries=None)
    return esp


def backend(capsys, *words) -> tuple[int, str]:
    args = argparse.Namespace(action=words[0], slot=words[1] if len(words) > 1 else None,
                              state=words[2] if len(words) > 2 else None)
    code = update_cmd.run_backend(args)
    return code, capsys.readouterr().out.strip()


def test_a_healthy_update_is_reported_as_succeeded(box, capsys):
    slots.make_primary(box, "b", "2.0.0")
    update_cmd.record("activated", slot="b", version="2.0.0")
    update_cmd.record("installed", slot="b", version="2.0.0")
    assert update_cmd.describe()["last_update"]["outcome"] == "pending: reboot to start it"
    assert backend(capsys, "get-primary") == (0, "b")
    update_cmd.record("health", slot="b", version="2.0.0", ok=True, reason=None)
    slots.mark_good(box, "b")
    report = update_cmd.describe()
    assert report["slots"]["b"] == {"version": "2.0.0", "state": "good", "tries_left": None}
    assert report["last_update"]["outcome"] == "succeeded: the health check passed"


def test_a_failed_update_names_the_attempt_and_the_reason(box, capsys):
    slots.make_primary(box, "b", "3.0.0")
    update_cmd.record("activated", slot="b", version="3.0.0")
    update_cmd.record("installed", slot="b", version="3.0.0")
    for _ in range(slots.TRIES):
        update_cmd.record("health", slot="b", version="3.0.0", ok=False,
                          reason="appliance.service failed (exit-code 2)")
    assert backend(capsys, "set-state", "b", "bad") == (0, "")
    assert backend(capsys, "get-state", "b") == (0, "bad")
    assert backend(capsys, "get-primary") == (0, "a")
    outcome = update_cmd.describe()["last_update"]["outcome"]
    assert outcome == (f"failed after {slots.TRIES} boot(s), back on slot B: "
                       "appliance.service failed (exit-code 2)")


def test_an_empty_slot_is_shown_as_such(box):
    report = update_cmd.describe()
    assert report["slots"]["b"]["state"] == "empty" and report["slots"]["a"]["state"] == "good"
    assert report["last_update"] is None


def states(monkeypatch, *seen: tuple[str, str]) -> None:
    """appliance.service as systemctl would show it, one (ActiveState, StatusText) per poll: the
    unit cannot run on a test machine's host, so its two properties are given here."""
    polls = iter(seen)
    current: dict[str, str] = {}

    def service_property(name: str) -> str:
        if name == "ActiveState":
            current["ActiveState"], current["StatusText"] = next(polls)
        return current[name]

    monkeypatch.setattr(update_cmd, "service_property", service_property)


def test_a_start_that_migrates_the_index_is_waited_for_beyond_the_timeout(monkeypatch):
    migrating = f"{MIGRATING} /var/lib/appliance/index.sqlite from schema 6 to 7"
    states(monkeypatch, ("activating", migrating), ("activating", migrating), ("active", "serving"))
    assert update_cmd.wait_until_ready(timeout=0) is None


def test_a_start_that_does_not_say_so_fails_the_check_at_the_timeout(monkeypatch):
    states(monkeypatch, ("activating", "opening the index"))
    assert update_cmd.wait_until_ready(timeout=0).startswith("appliance.service not READY within 0 s")
