"""The tests' PostgreSQL server (tests/support/postgres.py, fixture postgres_cluster), which the
PostgreSQL index's tests run on (IX-01, IX-02): a database as the service requires it (UTF8,
collation C), and a server that goes away and comes back with what was committed."""

from __future__ import annotations

import psycopg
import pytest

import postgres

pytestmark = pytest.mark.postgresql


def database_settings(cluster, name: str) -> tuple | None:
    with cluster.connect() as admin:
        return admin.execute("SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database "
                             "WHERE datname = %s", (name,)).fetchone()


def test_a_database_is_utf8_with_collation_c_and_is_dropped(postgres_cluster):
    url = postgres_cluster.create_database("selftest_settings")
    try:
        assert url == f"postgresql://postgres@127.0.0.1:{postgres_cluster.port}/selftest_settings"
        with postgres.connect(url) as db:
            (version,) = db.execute("SHOW server_version").fetchone()
            assert version.split()[0].split(".")[0] == postgres_cluster.version
            assert db.execute("SHOW server_encoding").fetchone() == ("UTF8",)
            # Commits wait for the server (the service's expectation); fsync is off (postgres.py).
            assert db.execute("SHOW synchronous_commit").fetchone() == ("on",)
            assert db.execute("SHOW fsync").fetchone() == ("off",)
            # Collation C: bytewise order, upper case before lower case.
            assert [r for (r,) in db.execute("SELECT x FROM (VALUES ('b'), ('B'), ('a')) v(x) ORDER BY x")] == [
                "B", "a", "b"]
        assert database_settings(postgres_cluster, "selftest_settings") == ("UTF8", "C", "C")
    finally:
        postgres_cluster.drop_database("selftest_settings")
    assert database_settings(postgres_cluster, "selftest_settings") is None


def test_listens_on_loopback_only_with_its_socket_in_its_own_directory(postgres_cluster):
    with postgres_cluster.connect() as admin:
        assert admin.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert admin.execute("SHOW unix_socket_directories").fetchone() == (str(postgres_cluster.socket_dir),)
    assert (postgres_cluster.socket_dir / f".s.PGSQL.{postgres_cluster.port}").is_socket()


def test_killed_and_restarted_the_server_keeps_what_was_committed(postgres_cluster):
    url = postgres_cluster.create_database("selftest_crash")
    try:
        with postgres.connect(url) as db:
            db.execute("CREATE TABLE t (x integer)")
            db.execute("INSERT INTO t VALUES (1)")
            postgres_cluster.kill()
            assert not postgres_cluster.running
            with pytest.raises(psycopg.OperationalError):
                db.execute("SELECT x FROM t")
        postgres_cluster.restart()
        assert "automatic recovery in progress" in postgres_cluster.log()
        with postgres.connect(url) as db:  # the same URL: same port
            assert db.execute("SELECT x FROM t").fetchall() == [(1,)]
    finally:
        if not postgres_cluster.running:  # the session's other tests need it
            postgres_cluster.start()
        postgres_cluster.drop_database("selftest_crash")
