"""Fixtures: the real daemon on free loopback ports."""

from __future__ import annotations

import pytest

from helpers import Appliance


@pytest.fixture
def appliance(tmp_path):
    """A running appliance with default configuration (reserve 0, short drain)."""
    app = Appliance(tmp_path / "appliance").start()
    yield app
    assert app.stop() == 0, app.log()


@pytest.fixture
def make_appliance(tmp_path):
    """Factory for an appliance with config overrides; started ones are stopped at teardown."""
    made = []

    def make(overrides: dict | None = None, start: bool = True, name: str = "appliance",
             env: dict | None = None) -> Appliance:
        app = Appliance(tmp_path / name, overrides or {}, env or {})
        made.append(app)
        return app.start() if start else app

    yield make
    for app in made:
        if app.proc is not None and app.proc.poll() is None:
            app.stop()
