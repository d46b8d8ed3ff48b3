"""The unit tier's promise, kept: a test here that starts the daemon fails, naming the tier it
belongs in."""

from __future__ import annotations

import pytest

from helpers import Appliance


@pytest.fixture(autouse=True)
def no_daemon(monkeypatch):
    def refuse(self):
        raise AssertionError("a unit test starts no daemon: this test belongs in tests/daemon/")

    monkeypatch.setattr(Appliance, "spawn", refuse)
