"""The suite's backend parametrization (IX-01), on a module that opts in: each test runs as
`[sqlite]` and as `[postgresql]`, and in the latter its appliances are configured with a
database of their own on the tests' PostgreSQL server. (Starts no daemon: what the service does
with that database is for the index's own tests.)"""

from __future__ import annotations

import tomllib

import psycopg
import pytest

import postgres

pytestmark = pytest.mark.index_backends

def test_the_backend_is_a_parameter_of_the_test(index_backend, request):
    assert request.node.callspec.params["index_backend"] == index_backend
    assert request.node.name.endswith(f"[{index_backend}]")
    assert (request.node.get_closest_marker("postgresql") is not None) == (index_backend == "postgresql")


def test_each_appliance_gets_its_own_database(make_appliance, index_backend, request):
    first, second = make_appliance(start=False, name="first"), make_appliance(start=False, name="second")
    for app in first, second:
        assert tomllib.loads(app.config_path.read_text()).get("index", {}).get("url", "") == app.index_url
    if index_backend == "sqlite":
        assert first.index_url == second.index_url == ""
        return
    cluster = request.getfixturevalue("postgres_cluster")
    assert first.index_url != second.index_url
    for app in first, second:
        assert app.index_url.startswith(f"postgresql://postgres@127.0.0.1:{cluster.port}/index_")
        # index_rows reads it, placeholders as the tests write them for SQLite.
        [(database, text)] = app.index_rows("SELECT current_database(), ? || '%'", "a?")
        assert (app.index_url.endswith(f"/{database}"), text) == (True, "a?%")


@pytest.mark.postgresql
def test_a_database_is_dropped_when_its_appliance_is_done(postgres_cluster):
    """What the appliance fixtures use (conftest.index_url): one database each, gone afterwards."""
    with postgres_cluster.database() as url:
        postgres.connect(url).close()
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        postgres.connect(url).close()
