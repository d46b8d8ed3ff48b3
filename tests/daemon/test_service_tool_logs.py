"""`service-tool logs` against the real daemon's log file: filters by peer, level and time
(`--since`), the rotated files, `--follow` across rotations, ISO 8601 times with the offset,
and lines written in the earlier format (LG-01, LG-07, LG-10; issue 22 item 5)."""

from __future__ import annotations

import datetime
import json
import signal
import subprocess
import time

import pytest

import scu
from helpers import SERVICE_TOOL, service_tool, terminate, wait_for
from service_tool.since import since
from test_service_tool_status import OFFSET, ZONE, zoned

NOW = datetime.datetime(2026, 3, 29, 14, 30, tzinfo=datetime.timezone(OFFSET))


def logs(app, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return service_tool(app.config_path, "logs", *args, **kwargs)


def logs_json(app, *args: str) -> list[dict]:
    return json.loads(logs(app, "--json", *args).stdout)


def test_logs_filter_by_peer_and_level(make_appliance):
    app = make_appliance()
    assert scu.echo(app.storage_port, "EX_STORE_SCP", calling="MODALITY_1") == 0x0000
    assert scu.echo(app.storage_port, "NOT_ME", calling="MODALITY_2") == (1, 1, 7)
    wait_for(lambda: "MODALITY_2" in (app.data_dir / "appliance.log").read_text(), "the rejection in the log")
    lines = logs(app, "--peer", "MODALITY_1").stdout.splitlines()
    assert lines and all("MODALITY_1@" in line for line in lines)
    assert any("released" in line for line in lines)
    warnings = logs_json(app, "--level", "warning")
    assert [w["level"] for w in warnings] == ["WARNING"]
    assert "MODALITY_2@127.0.0.1:" in warnings[0]["message"] and "association rejected" in warnings[0]["message"]
    last = logs(app, "-n", "1").stdout.splitlines()
    assert len(last) == 1


def test_no_match_is_said_and_exits_1(make_appliance):
    """Nothing printed is no longer silent: stderr says so, and the exit code is grep's."""
    app = make_appliance()
    assert scu.echo(app.storage_port, "EX_STORE_SCP", calling="MODALITY_1") == 0x0000
    wait_for(lambda: "MODALITY_1" in (app.data_dir / "appliance.log").read_text(), "the echo in the log")
    for args, said in ((("--peer", "NOBODY"), "--peer NOBODY"), (("--peer", "NOBODY", "--json"), "--peer NOBODY"),
                       (("--level", "ALERT"), "--level alert")):
        result = logs(app, *args)
        assert result.returncode == 1, args
        assert result.stdout.strip() in ("", "[]"), args
        assert result.stderr == f"no lines match {said} in {app.data_dir / 'appliance.log'} and its rotated files\n"
    assert logs(app, "--peer", "MODALITY_1").returncode == 0


def test_logs_reads_the_rotated_files_oldest_first(make_appliance):
    app = make_appliance({"logging": {"max_bytes": 2000, "backups": 3}})
    for n in range(12):
        scu.echo(app.storage_port, "EX_STORE_SCP", calling=f"PEER_{n}")
    wait_for(lambda: "PEER_11" in (app.data_dir / "appliance.log").read_text(), "the last echo in the log")
    assert (app.data_dir / "appliance.log.1").exists()
    peers = [int(line.split("PEER_")[1].split("@")[0])
             for line in logs(app, "-n", "1000").stdout.splitlines() if "released" in line]
    assert peers == sorted(peers) and peers[-1] == 11


def test_times_are_iso_8601_with_the_offset(make_appliance):
    """`logs --json` gives the time of each record with the box's offset, as the file has it."""
    app = make_appliance(env=ZONE)
    assert scu.echo(app.storage_port, "EX_STORE_SCP", calling="MODALITY_1") == 0x0000
    wait_for(lambda: "MODALITY_1" in (app.data_dir / "appliance.log").read_text(), "the echo in the log")
    found = logs_json(app)
    assert found and all(zoned(record["time"]) for record in found)
    assert [zoned(record["time"]) for record in found] == sorted(zoned(record["time"]) for record in found)
    first_line = (app.data_dir / "appliance.log").read_text().splitlines()[0]
    assert first_line.startswith(found[0]["time"] + " INFO ")
    assert logs(app, "-n", "1").stdout.startswith(found[-1]["time"] + " ")


def stamp(moment: datetime.datetime, old: bool = False) -> str:
    """A log line's time stamp, as the service writes it, or (old) as it did before the offset."""
    if old:
        return moment.strftime("%Y-%m-%d %H:%M:%S,") + f"{moment.microsecond // 1000:03d}"
    return moment.isoformat(timespec="milliseconds")


def test_since_and_lines_of_the_earlier_format(make_appliance):
    """An hour-old record (ISO, another offset), a half-hour-old one in the earlier format (local
    time, no offset) and the service's own: `--since` takes each form and compares instants."""
    app = make_appliance({"logging": {"backups": 2}}, start=False, env=ZONE)
    now = datetime.datetime.now(datetime.timezone.utc)
    local = datetime.timezone(OFFSET)
    app.data_dir.mkdir(parents=True)
    (app.data_dir / "appliance.log").write_text(
        f"{stamp(now - datetime.timedelta(minutes=60))} WARNING appliance.test: an hour ago\n"
        f"{stamp((now - datetime.timedelta(minutes=30)).astimezone(local).replace(tzinfo=None), old=True)} "
        "WARNING appliance.test: half an hour ago\nand its second line\n")
    app.start()
    assert scu.echo(app.storage_port, "EX_STORE_SCP", calling="MODALITY_1") == 0x0000
    assert app.stop() == 0  # the file stays as it is while it is read

    every = [r["message"] for r in json.loads(logs(app, "--json", "-n", "1000", env=ZONE).stdout)]
    assert every[:2] == ["an hour ago", "half an hour ago\nand its second line"]
    half = json.loads(logs(app, "--json", "-n", "2", "--level", "warning", env=ZONE).stdout)[1]
    assert datetime.datetime.fromisoformat(half["time"]) == (now - datetime.timedelta(minutes=30)).replace(
        microsecond=(now.microsecond // 1000) * 1000)  # read in the box's zone: the same instant

    def messages(*args: str) -> list[str]:
        return [r["message"] for r in json.loads(logs(app, "--json", "--since", *args, env=ZONE).stdout)]

    service = every[2:]
    assert messages("10min") == messages("-10 minutes") == messages("10min ago") == service
    assert messages("45min") == every[1:]  # all of them: --since lifts the default of 50
    assert messages(stamp(now - datetime.timedelta(minutes=45))) == every[1:]  # UTC offset
    in_local_time = (now - datetime.timedelta(minutes=45)).astimezone(local).replace(tzinfo=None)
    assert messages(in_local_time.isoformat(timespec="seconds")) == every[1:]  # no offset: the box's zone
    assert messages("2h") == every
    assert messages("2h", "-n", "1") == every[-1:]
    result = logs(app, "--since", "soon")
    assert result.returncode == 2 and "'soon' is not an ISO 8601 time" in result.stderr


@pytest.mark.parametrize("text, expected", [
    ("2026-03-29T12:00:00+02:00", datetime.datetime(2026, 3, 29, 10, tzinfo=datetime.timezone.utc)),
    ("2026-03-29T10:00Z", datetime.datetime(2026, 3, 29, 10, tzinfo=datetime.timezone.utc)),
    ("10min", NOW - datetime.timedelta(minutes=10)),
    ("1h30min", NOW - datetime.timedelta(minutes=90)),
    ("2 hours ago", NOW - datetime.timedelta(hours=2)),
    ("-3d", NOW - datetime.timedelta(days=3)),
    ("1w", NOW - datetime.timedelta(weeks=1)),
    ("45s", NOW - datetime.timedelta(seconds=45)),
])
def test_since_forms(text, expected):
    assert since(text, NOW) == expected


def test_since_dates_are_local_midnight(monkeypatch):
    """A date, `today` and `yesterday` are midnight in the box's zone (the tool's TZ)."""
    monkeypatch.setenv("TZ", ZONE["TZ"])
    time.tzset()
    try:
        midnight = datetime.datetime(2026, 3, 29, tzinfo=datetime.timezone(OFFSET))
        assert since("2026-03-29") == midnight
        assert since("today", NOW) == midnight
        assert since("yesterday", NOW) == midnight - datetime.timedelta(days=1)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_follow_prints_new_records_across_rotations_until_ctrl_c(make_appliance, tmp_path):
    """`--follow` like `tail -F`: the backlog, then each new record as the service writes it, in
    order, while the file rotates every two echoes; Ctrl-C ends it with exit 0. JSON Lines."""
    app = make_appliance({"logging": {"max_bytes": 1000, "backups": 3}})
    out, err = tmp_path / "follow.out", tmp_path / "follow.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        follower = subprocess.Popen([str(SERVICE_TOOL), "--config", str(app.config_path), "logs", "--follow",
                                     "--json", "--peer", "127.0.0.1", "-n", "0"], stdout=stdout, stderr=stderr)
    try:
        wait_for(lambda: err.read_bytes().endswith(b"(Ctrl-C ends)\n"), "the follower to have read the backlog")

        def released() -> list[str]:
            return [record["message"].split("@")[0].rsplit(" ", 1)[1]
                    for record in map(json.loads, out.read_text().splitlines()) if "released" in record["message"]]

        for n in range(8):
            assert scu.echo(app.storage_port, "EX_STORE_SCP", calling=f"PEER_{n}") == 0x0000
            wait_for(lambda: len(released()) == n + 1, f"PEER_{n}'s release on the follower's output")
        assert released() == [f"PEER_{n}" for n in range(8)]
        assert (app.data_dir / "appliance.log.2").exists()  # it did rotate, more than once
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 0
        assert b"Traceback" not in err.read_bytes()
    finally:
        terminate(follower)


def test_nul_runs_a_power_cut_left_are_skipped(make_appliance):
    """Files as an earlier version left them after power cuts (issue 22 item 9): a NUL run where
    the last lines were, in the middle of a backup and at the end of the current file. Each run
    reads as a line break: no NUL is printed, and the record after it is a record of its own."""
    app = make_appliance({"logging": {"backups": 2}}, start=False)
    app.data_dir.mkdir(parents=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def line(minutes: int, message: str) -> bytes:
        return f"{stamp(now - datetime.timedelta(minutes=minutes))} INFO appliance.test: {message}\n".encode()

    cut_short = line(4, "a line the cut took the end of")[:-12]
    (app.data_dir / "appliance.log.1").write_bytes(
        line(5, "first") + cut_short + b"\0" * 5000 + line(3, "after the first cut"))
    (app.data_dir / "appliance.log").write_bytes(
        line(2, "with a\nsecond line") + b"\0" * 300 + b"\n" + line(1, "after the second cut") + b"\0" * 4096)
    result = logs(app, "--json", "-n", "1000")
    assert result.returncode == 0, result.stderr
    assert "\\u0000" not in result.stdout
    assert [r["message"] for r in json.loads(result.stdout)] == [
        "first", "a line the cut took", "after the first cut", "with a\nsecond line", "after the second cut"]
    assert "\0" not in logs(app, "-n", "1000").stdout
