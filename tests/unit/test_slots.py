"""The A/B slots' loader entries (service_tool/slots.py, issue 21): which slot boots next, boot
counting as systemd-boot does it, marking good and bad, as RAUC's backend and the health check do."""

from __future__ import annotations

import pytest

from service_tool import slots

pytestmark = pytest.mark.unit


def names(esp) -> list[str]:
    return sorted(path.name for path in (esp / slots.ENTRIES).iterdir())


def boot(esp) -> str:
    """What systemd-boot does at power-on: the first usable entry, one try counted down."""
    first = next(entry for entry in slots.entries(esp) if not entry.bad)
    if first.left is not None:
        first.path.rename(first.path.with_name(
            f"appliance-{first.priority}-{first.slot}+{first.left - 1}-{first.done + 1}.conf"))
    return first.slot


def test_the_factory_image_boots_slot_a(tmp_path):
    slots.make_primary(tmp_path, "a", "1.0", tries=None)
    assert names(tmp_path) == ["appliance-1-a.conf"]
    assert slots.primary(tmp_path) == "a" and boot(tmp_path) == "a"
    text = (tmp_path / slots.ENTRIES / "appliance-1-a.conf").read_text()
    assert "root=PARTLABEL=root-a" in text and "rauc.slot=a" in text and "linux /a/vmlinuz" in text


def test_an_update_boots_on_trial_and_is_kept_once_healthy(tmp_path):
    slots.make_primary(tmp_path, "a", "1.0", tries=None)
    slots.mark_bad(tmp_path, "b")  # RAUC before writing: no entry yet, nothing to do
    slots.make_primary(tmp_path, "b", "2.0")
    assert names(tmp_path) == ["appliance-1-a.conf", f"appliance-2-b+{slots.TRIES}.conf"]
    assert boot(tmp_path) == "b"
    assert slots.entry(tmp_path, "b").state == "on trial"
    slots.mark_good(tmp_path, "b")
    assert names(tmp_path) == ["appliance-1-a.conf", "appliance-2-b.conf"]
    assert boot(tmp_path) == "b" and boot(tmp_path) == "b"


def test_an_update_that_never_passes_falls_back_after_its_tries(tmp_path):
    slots.make_primary(tmp_path, "a", "1.0", tries=None)
    slots.make_primary(tmp_path, "b", "3.0")
    assert [boot(tmp_path) for _ in range(slots.TRIES)] == ["b"] * slots.TRIES
    assert slots.entry(tmp_path, "b").bad
    assert slots.primary(tmp_path) == "a" and boot(tmp_path) == "a"
    assert boot(tmp_path) == "a"


def test_rollback_and_a_second_update_take_the_highest_priority(tmp_path):
    slots.make_primary(tmp_path, "a", "1.0", tries=None)
    slots.make_primary(tmp_path, "b", "2.0")
    slots.mark_good(tmp_path, "b")
    slots.make_primary(tmp_path, "a", "1.0")  # rollback
    assert slots.primary(tmp_path) == "a"
    assert names(tmp_path) == ["appliance-2-b.conf", f"appliance-3-a+{slots.TRIES}.conf"]
    slots.mark_bad(tmp_path, "a")
    assert slots.primary(tmp_path) == "b"
