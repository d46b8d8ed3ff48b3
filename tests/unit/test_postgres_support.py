"""The test suite's own PostgreSQL plumbing (IX-01), what needs no server: sqlite3 placeholders
as psycopg takes them, and the error (not a skip) when PostgreSQL is not installed."""

from __future__ import annotations

import pytest

import postgres


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
