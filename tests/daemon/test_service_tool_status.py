"""`service-tool status|config diff` and the control socket they use (TL-07, LG-09); `logs` is in
test_service_tool_logs.py. On both index backends (IX-01)."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import sqlite3
import stat
from pathlib import Path

import pytest
from pynetdicom.presentation import build_context

import datasets
import index_backend as backend
import pdus
import scu
from appliance.store import dialect, summary
from appliance.store.db import open_index
from commitment_peer import SCPM, n_action
from commitment_peer import request as commitment_request
from destinations import move, move_contexts, move_identifier
from helpers import Appliance, fill_until_percent, free_port, percent_free, service_tool, wait_for
from query_archive import populate, uid

pytestmark = pytest.mark.index_backends


def status(app) -> tuple[int, dict]:
    result = service_tool(app.config_path, "status", "--json")
    return result.returncode, json.loads(result.stdout)


# A zone 5 h 30 min east of UTC, as a POSIX TZ string (no zoneinfo file needed): an offset no
# default (UTC) can pass for.
ZONE = {"TZ": "XST-5:30"}
OFFSET = datetime.timedelta(hours=5, minutes=30)


def zoned(text: str) -> datetime.datetime:
    """A time of `status --json` or `logs --json`: ISO 8601 with the zone's offset, and recent."""
    moment = datetime.datetime.fromisoformat(text)
    assert moment.utcoffset() == OFFSET, text
    assert abs(datetime.datetime.now(datetime.timezone.utc) - moment) < datetime.timedelta(minutes=5), text
    return moment


def test_status_of_a_running_service(make_appliance, tmp_path):
    """Up, ports, versions, the archive's counts, an open association by peer, and an alert
    (C-MOVE A702 to a destination that is down, LG-09) among the recent problems, at a time in
    ISO 8601 with the offset, whether the service tells it or the log file (issue 22 item 5)."""
    down = free_port()
    app = make_appliance({"remote_aes": [{"ae_title": "DOWN", "host": "127.0.0.1", "port": down}]}, env=ZONE)
    populate(app, tmp_path / "files")
    studies, instances = app.index_rows("SELECT (SELECT COUNT(*) FROM study), (SELECT COUNT(*) FROM instance)")[0]
    with scu.association(app.qr_port, "EX_QUERY_SCP", move_contexts(), calling="WORKSTATION_7") as assoc:
        code, report = status(app)
        assert code == 0
        assert report["running"] and report["state"] == "open"
        assert {(l["ae"], l["ae_title"], l["port"]) for l in report["listeners"]} == {
            ("STORAGE-SCP", "EX_STORE_SCP", app.storage_port), ("QUERY-RETRIEVE-SCP", "EX_QUERY_SCP", app.qr_port)}
        assert [(a["ae"], a["calling"], a["stage"]) for a in report["associations"]] == [
            ("QUERY-RETRIEVE-SCP", "WORKSTATION_7", "established")]
        assert report["archive"]["studies"] == studies and report["archive"]["instances"] == instances
        assert report["archive"]["pending_commitment_reports"] == 0
        assert report["problems"]["recent"] == []
        assert move(assoc, move_identifier("STUDY", StudyInstanceUID=uid("S1")), "DOWN")[-1].status == 0xA702
    code, report = status(app)
    assert report["associations"] == []
    assert report["problems"]["counts"]["ALERT"] == 1
    [alert] = [p for p in report["problems"]["recent"] if p["level"] == "ALERT" and "DOWN" in p["message"]]
    zoned(alert["time"])
    text = service_tool(app.config_path, "status").stdout
    assert text.startswith("service: running, appliance ")
    assert f"STORAGE-SCP EX_STORE_SCP on port {app.storage_port}" in text
    assert f"{studies} studies" in text and f"{alert['time']} ALERT" in text
    assert app.stop() == 0
    code, report = status(app)
    assert code == 3
    assert [p["time"] for p in report["problems"]["recent"] if p["level"] == "ALERT"] == [alert["time"]]


def test_status_of_a_stopped_service_reads_the_index_and_log_itself(make_appliance, tmp_path):
    app = make_appliance()
    populate(app, tmp_path / "files")
    scu.echo(app.storage_port, "WRONG_TITLE")  # a WARNING, not shown as a problem
    assert app.stop() == 0
    result = service_tool(app.config_path, "status")
    assert result.returncode == 3  # LSB: not running
    assert result.stdout.startswith("service: NOT RUNNING (no service answers on ")
    code, report = status(app)
    assert code == 3 and not report["running"]
    instances = app.index_rows("SELECT COUNT(*) FROM instance")[0][0]
    assert instances > 0 and report["archive"]["instances"] == instances
    assert report["problems"]["recent"] == []


def test_the_requesters_mistakes_are_not_errors_of_the_service(make_appliance, tmp_path):
    """Issue 22 item 2, TL-07: requests refused for what the requester sent (C-FIND C001 and
    A900, C-MOVE to an unknown destination A801, a C-STORE data set without its Study Instance UID
    A900, an N-ACTION without Transaction UID 0120, a PDU on a context never accepted, a wrong
    called AE title) are WARNING lines in the log; `status` counts no error and lists no problem."""
    app = make_appliance()
    with scu.association(app.qr_port, "EX_QUERY_SCP", move_contexts()) as assoc:
        assert scu.find(assoc, datasets.STUDY_ROOT_FIND, scu.identifier(
            {"QueryRetrieveLevel": "STUDY", "PatientName": "*"})) == [(0xC001, None)]
        assert scu.find(assoc, datasets.STUDY_ROOT_FIND, scu.identifier({"QueryRetrieveLevel": "FOO"})) == [
            (0xA900, None)]
        assert [r.status for r in move(assoc, move_identifier("STUDY", StudyInstanceUID="1.2.3"), "NOWHERE")] == [
            0xA801]
    no_study = datasets.image()
    del no_study.StudyInstanceUID
    with scu.association(app.storage_port) as assoc:
        assert scu.send_file(assoc, datasets.write(no_study, tmp_path / "no-study.dcm")) == 0xA900
    no_transaction = commitment_request("1.2.3", [(datasets.CT, "1.2.3.4")])
    del no_transaction.TransactionUID
    with scu.association(app.storage_port, contexts=[build_context(SCPM)]) as assoc:
        assert n_action(assoc, no_transaction) == 0x0120
    with contextlib.closing(pdus.associated(app.storage_port)) as sock:
        sock.sendall(b"".join(pdus.c_echo(context_id=99)))
        assert pdus.closed_by_peer(sock)
    assert scu.echo(app.storage_port, "WRONG_TITLE") != 0x0000
    wait_for(lambda: len(re.findall(r" WARNING appliance\.\w+: ", app.log())) == 7, "seven WARNING lines")
    code, report = status(app)
    assert report["problems"] == {"counts": {}, "recent": []}, app.log()
    assert "errors and alerts since start: none" in service_tool(app.config_path, "status").stdout


def received_days_ago(app, *ages: float) -> None:
    """Set the instances' reception (in the order stored) to that many days ago, in the stopped
    appliance's index, written as the service writes it (SQLite: str() of a UTC datetime;
    PostgreSQL: a UTC timestamp)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ids = [row[0] for row in app.index_rows("SELECT id FROM instance ORDER BY id")]
    assert len(ids) == len(ages)
    form = dialect.PostgresDialect.timestamp if backend.is_postgresql(app) else dialect.SqliteDialect.timestamp
    backend.executemany(app, "UPDATE instance SET received_at = ? WHERE id = ?",
                        [(form(now - datetime.timedelta(days=age)), id_) for age, id_ in zip(ages, ids)])


def test_status_shows_free_space_watermarks_ingest_rate_and_days_until_full(small_disk, tmp_path):
    """MG-04, with the service up and down: free space and its share of the disk, the watermark
    levels and the one crossed (a WARNING line among the problems, as a certificate's expiry),
    the bytes received a day (over the last 7 days, over the archive's age when it is younger,
    at least a day) and the days until (free - reserve) is used up at that rate."""
    reserve = 1 << 20
    app = small_disk({"storage": {"reserve_bytes": reserve, "warn_free_percent": 50, "alert_free_percent": 25}})
    paths = [datasets.write(datasets.image(rows=256, columns=256), tmp_path / f"{n}.dcm") for n in range(3)]
    with scu.association(app.storage_port) as assoc:
        assert [scu.send_file(assoc, path) for path in paths] == [0x0000] * 3
    rows = app.index_rows("SELECT path, received_at FROM instance ORDER BY id")
    if backend.is_postgresql(app):  # a naive UTC timestamp
        assert all(isinstance(at, datetime.datetime) and at.tzinfo is None for _, at in rows), rows
    else:  # the text form the range on received_at relies on (peewee's UTC datetime via sqlite3)
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{6})?\+00:00", at) for _, at in rows), rows
    sizes = [(app.data_dir / "store" / path).stat().st_size for path, _ in rows]

    def check(report: dict, bytes_per_day: float, days: float) -> None:
        disk, archive = report["disk"], report["archive"]
        assert disk["free_percent"] == pytest.approx(percent_free(app.data_dir), abs=0.1)
        assert (disk["warn_free_percent"], disk["alert_free_percent"]) == (50, 25)
        assert archive["ingest_bytes_per_day"] == pytest.approx(bytes_per_day, rel=1e-4)
        assert archive["ingest_days"] == pytest.approx(days, rel=1e-4)
        if bytes_per_day:
            assert disk["days_until_full"] == pytest.approx((disk["free_bytes"] - reserve) / bytes_per_day, abs=0.01)
        else:
            assert disk["days_until_full"] is None

    code, report = status(app)
    check(report, sum(sizes), 1)  # the archive is younger than a day: what it holds, over one day
    assert report["archive"]["archive_age_days"] < 0.01
    assert (report["disk"]["crossed"], report["disk"]["problems"]) == (None, [])

    fill_until_percent(app.data_dir, 40)
    code, report = status(app)
    check(report, sum(sizes), 1)
    assert report["disk"]["crossed"] == "warning"
    assert [p["level"] for p in report["disk"]["problems"]] == ["WARNING"]
    text = service_tool(app.config_path, "status").stdout
    assert re.search(r"^disk: [\d.]+ MB free of 25\.2 MB \(40\.\d %; warning below 50 %, alert below 25 %\), "
                     r"reserve 1\.0 MB$", text, re.M), text
    assert re.search(r"^ingest: [\d.]+ KB a day, counted over one day: the archive is younger than that; "
                     r"full in about \d+ days$", text, re.M), text
    assert re.search(r"^WARNING: disk space low: [\d.]+ MB free \(40\.\d %\), below storage\.warn_free_percent "
                     r"\(50 %\): delete studies", text, re.M), text

    assert app.stop() == 0
    received_days_ago(app, 3, 0, 0)
    code, report = status(app)
    assert code == 3
    check(report, sum(sizes) / 3, 3)
    assert report["disk"]["crossed"] == "warning"
    text = service_tool(app.config_path, "status").stdout
    assert re.search(r"^ingest: [\d.]+ KB a day over the archive's 3\.0 days: it is younger than 7 days; "
                     r"full in about \d+ days$", text, re.M), text
    assert "WARNING: disk space low: " in text

    received_days_ago(app, 10, 3, 0)
    check(status(app)[1], (sizes[1] + sizes[2]) / 7, 7)
    assert re.search(r"^ingest: [\d.]+ KB a day over the last 7 days; full in about \d+ days$",
                     service_tool(app.config_path, "status").stdout, re.M)
    app.start()
    code, report = status(app)
    assert code == 0
    check(report, (sizes[1] + sizes[2]) / 7, 7)
    assert app.stop() == 0

    received_days_ago(app, 10, 10, 10)
    check(status(app)[1], 0, 7)
    assert re.search(r"^ingest: 0 B a day over the last 7 days; not growing$",
                     service_tool(app.config_path, "status").stdout, re.M)


def test_the_ingest_rate_searches_the_index_on_received_at(make_appliance):
    """MG-04: the ingest rate's queries are a range and a MIN on the bare received_at column,
    with the bound in the column's own form, so the index schema 5 has on it is searched
    instead of the instance table scanned (the backend's own plan, on a real index)."""
    app = make_appliance(start=False)
    app.data_dir.mkdir()
    index = open_index(app.index_url, app.data_dir)
    try:
        since = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
        for query in (summary.received_since(index.db, since), summary.first_received()):
            plan = dialect.current().plan(*query.sql())
            searches = dialect.current().searches(plan)
            assert searches and not dialect.current().scans(plan), plan
            assert all("received_at" in line for line in searches), plan
    finally:
        index.close()


def test_status_names_the_index_and_the_box(make_appliance, tmp_path, index_backend):
    """IX-01, IX-02: the backend, its version, where it is (PostgreSQL's URL without its
    password), that it answers, and this box's node id, from the service and from the tool with
    the service stopped; the libraries line names SQLite's version only for SQLite."""
    app = make_appliance()
    node = (app.data_dir / "node-id").read_text().strip()
    if index_backend == "postgresql":
        [(version,)] = app.index_rows("SHOW server_version")
        where = app.index_url
        line = f"index: PostgreSQL {version}, {where}, connected; node {node}"
    else:
        version, where = sqlite3.sqlite_version, str(app.data_dir / "index.sqlite")
        line = f"index: SQLite {version}, {where}; node {node}"
    expected = {"backend": index_backend, "version": version, "where": where, "connected": True, "node": node}

    code, report = status(app)

    assert code == 0 and report["index"] == expected
    assert ("SQLite " in report["libraries"]) == (index_backend == "sqlite")
    assert ("psycopg " in report["libraries"]) == (index_backend == "postgresql")
    assert line in service_tool(app.config_path, "status").stdout.splitlines()
    assert app.stop() == 0

    code, report = status(app)

    assert code == 3 and report["index"] == expected
    assert line in service_tool(app.config_path, "status").stdout.splitlines()


def test_status_with_the_service_stopped_asks_the_database_server_itself(tmp_path):
    """IX-01: a PostgreSQL index whose server does not answer: the tool says so, naming the URL
    without its password, and an ERROR line says why; the archive's counts are unknown."""
    port = free_port()
    app = Appliance(tmp_path / "appliance", {"index": {"url": f"postgresql://archive:secret@127.0.0.1:{port}/pacs"}})
    app.data_dir.mkdir()

    code, report = status(app)

    assert code == 3
    where = f"postgresql://archive@127.0.0.1:{port}/pacs"
    assert {k: v for k, v in report["index"].items() if k != "error"} == {
        "backend": "postgresql", "version": None, "where": where, "connected": False, "node": None}
    assert "Connection refused" in report["index"]["error"] and "\n" not in report["index"]["error"]
    assert "secret" not in json.dumps(report)
    lines = service_tool(app.config_path, "status").stdout.splitlines()
    assert f"index: PostgreSQL, {where}, NOT CONNECTED; node none yet (the service names the box at its first " \
           "start)" in lines
    assert f"ERROR: the index database {where} does not answer: {report['index']['error']}" in lines
    assert [line for line in lines if line.startswith("archive: ")] == [
        f"archive: index unreadable: {report['archive']['error']}"]


def test_control_socket_is_local_and_owner_and_group_only(make_appliance):
    """Nothing listens on the network but the two DICOM ports; the control socket is a UNIX
    socket in the data directory with mode 0660."""
    app = make_appliance()
    path = app.data_dir / "control.sock"
    mode = path.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
    assert _listening_tcp_ports(app.proc.pid) == {app.storage_port, app.qr_port}
    assert app.stop() == 0
    assert not path.exists()


def _listening_tcp_ports(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed meanwhile (a file being received, made ahead)
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_config_diff_against_defaults_and_the_running_service(make_appliance):
    app = make_appliance({"storage_scp": {"ae_title": "ARCHIVE"}})
    result = service_tool(app.config_path, "config", "diff", "--json")
    assert result.returncode == 1
    changes = {c["key"]: (c["from"], c["to"]) for c in json.loads(result.stdout)}
    assert changes["storage_scp.ae_title"] == ("EX_STORE_SCP", "ARCHIVE")
    assert changes["storage_scp.port"] == (4000, app.storage_port)
    assert "query_retrieve_scp.ae_title" not in changes
    same = service_tool(app.config_path, "config", "diff", "--running")
    assert same.returncode == 0 and "is the same as the running service" in same.stdout
    # An edit by hand that nobody has applied yet.
    app.config_path.write_text(app.config_path.read_text().replace('"ARCHIVE"', '"ARCHIVE_2"'))
    pending = service_tool(app.config_path, "config", "diff", "--running")
    assert pending.returncode == 1 and "in 1 key:" in pending.stdout  # issue 22 item 7: not "1 keys"
    assert 'storage_scp.ae_title: "ARCHIVE" -> "ARCHIVE_2"' in pending.stdout
    app.stop()
    assert service_tool(app.config_path, "config", "diff", "--running").returncode == 2


def test_a_second_daemon_on_the_same_data_directory_is_refused(make_appliance):
    """The data-directory lock: two services on one archive would both write the index."""
    app = make_appliance()
    twin = make_appliance({"storage": {"data_dir": str(app.data_dir)}}, start=False, name="twin")
    assert twin.run_to_exit() == 1
    assert "cannot start: " in twin.log() and "in use by the appliance service (pid" in twin.log()
    assert scu.echo(app.storage_port, "EX_STORE_SCP") == 0x0000
