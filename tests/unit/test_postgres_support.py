"""The test suite's own PostgreSQL plumbing (IX-01), what needs no server: the placeholders of
Appliance.index_rows, the `[index] url` an Appliance writes, the default backend, and the
error (not a skip) when PostgreSQL is not installed."""

from __future__ import annotations

import tomllib

import pytest

import postgres
from helpers import Appliance


@pytest.mark.parametrize(("sqlite", "psycopg"), [
    ("SELECT path FROM instance WHERE sop_instance_uid = ?", "SELECT path FROM instance WHERE sop_instance_uid = %s"),
    ("SELECT a FROM t WHERE b IN (?,?,?)", "SELECT a FROM t WHERE b IN (%s,%s,%s)"),
    ("SELECT COUNT(*) FROM instance", "SELECT COUNT(*) FROM instance"),
    # Quoted: no placeholder; a % anywhere is doubled, as psycopg reads it everywhere.
    ("SELECT 'what?', \"odd?name\" FROM t WHERE x LIKE '1.2.%' AND y = ?",
     "SELECT 'what?', \"odd?name\" FROM t WHERE x LIKE '1.2.%%' AND y = %s"),
    ("SELECT 'it''s?' || ? FROM t", "SELECT 'it''s?' || %s FROM t"),
    ("SELECT 7 % ?", "SELECT 7 %% %s"),
], ids=["one", "several", "none", "quoted", "quote-in-literal", "modulo"])
def test_qmark_placeholders_become_psycopg_ones(sqlite, psycopg):
    assert postgres.qmark_to_format(sqlite) == psycopg


def test_an_index_url_is_written_as_the_index_section(tmp_path):
    url = "postgresql://postgres@127.0.0.1:5999/index_1"
    app = Appliance(tmp_path / "a", index_url=url)
    assert tomllib.loads(app.config_path.read_text())["index"] == {"url": url}
    # Given in the overrides instead, it is the one index_rows reads too.
    assert Appliance(tmp_path / "b", {"index": {"url": url}}).index_url == url


def test_without_an_index_url_the_config_has_no_index_section(tmp_path):
    app = Appliance(tmp_path / "a")
    assert app.index_url == ""
    assert "index" not in tomllib.loads(app.config_path.read_text())


def test_a_test_that_does_not_opt_in_runs_on_sqlite_only(index_backend, request):
    assert index_backend == "sqlite"
    assert not hasattr(request.node, "callspec") and request.node.get_closest_marker("postgresql") is None


def test_no_postgresql_installed_is_an_error_naming_the_install_step(tmp_path, monkeypatch):
    monkeypatch.setattr(postgres, "INSTALL_DIR", tmp_path)
    with pytest.raises(AssertionError, match="apt-get install postgresql"):
        postgres.bin_dir()


def test_the_newest_installed_postgresql_is_taken(tmp_path, monkeypatch):
    for version in ("9", "15", "16", "common"):
        (tmp_path / version / "bin").mkdir(parents=True)
        (tmp_path / version / "bin" / "initdb").touch()
    monkeypatch.setattr(postgres, "INSTALL_DIR", tmp_path)
    assert postgres.bin_dir() == tmp_path / "16" / "bin"
