"""Fixtures: the real daemon on free loopback ports."""

from __future__ import annotations

import pytest
from pydicom import config as pydicom_config

from helpers import Appliance

# The tests are a client that sends wrong values on purpose (a word as a date, a wildcard in
# an IS): pydicom need not warn about each one.
pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE


@pytest.fixture
def appliance(tmp_path):
    """A running appliance with default configuration (reserve 0, short drain)."""
    app = Appliance(tmp_path / "appliance").start()
    yield app
    assert app.stop() == 0, app.log()


@pytest.fixture(scope="module")
def qr(archive_appliance):
    """An association to archive_appliance's QUERY-RETRIEVE-SCP, for the module's C-FINDs."""
    import scu

    with scu.association(archive_appliance.qr_port, "EX_QUERY_SCP", scu.query_contexts()) as assoc:
        yield assoc


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


@pytest.fixture(scope="module")
def archive_appliance(tmp_path_factory):
    """One appliance per test module, holding tests/query_archive.py's studies (read-only use)."""
    import query_archive

    root = tmp_path_factory.mktemp("archive")
    app = Appliance(root / "appliance").start()
    query_archive.populate(app, root / "files")
    yield app
    assert app.stop() == 0, app.log()
