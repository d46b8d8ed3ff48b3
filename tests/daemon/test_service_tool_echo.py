"""`service-tool echo` (TL-05, TL-06, VE-04) through the installed console script, against a
DCMTK storescp, the real daemon refusing the calling title, and a port where nothing listens;
any peer by host and port, and the box's own SCPs behind the allow-lists an import wrote (issue
22 item 3; over TLS in test_tls.py)."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import tomlkit

from appliance.codes import uids
from helpers import accepts, free_port, service_tool, wait_for
from helpers import storescp as storescp_process
from test_service_tool_edit import DCMQRSCP_CFG


def echo(config, *args: str) -> tuple[int, object]:
    result = service_tool(config, "echo", "--json", *args)
    return result.returncode, json.loads(result.stdout) if result.stdout else result.stderr


@pytest.fixture
def storescp(tmp_path):
    """DCMTK storescp as VIEWER on a free port; its debug log tells who called."""
    port, log = free_port(), tmp_path / "storescp.log"
    with storescp_process(port, "VIEWER", tmp_path, "-d", log=log):
        yield port, log


@pytest.fixture
def table(tmp_path, make_appliance, storescp):
    """A configuration whose remote AE table has a storescp that is up, the real appliance's
    STORAGE-SCP accepting only MODALITY as calling title, and a port where nothing listens."""
    picky = make_appliance({"storage_scp": {"accepted_calling_aes": ["MODALITY"]}}, name="picky")
    config = tmp_path / "tool.toml"
    config.write_text(tomlkit.dumps({"storage": {"data_dir": str(tmp_path / "data")}, "remote_aes": [
        {"ae_title": "VIEWER", "host": "localhost", "port": storescp[0]},
        {"ae_title": "EX_STORE_SCP", "host": "127.0.0.1", "port": picky.storage_port},
        {"ae_title": "NOBODY", "host": "127.0.0.1", "port": free_port()}]}))
    return config


def test_echo_to_a_destination_that_answers(table, storescp):
    """TL-05: resolved, connected, accepted, status 0x0000, each timed; called as STORAGE-SCU."""
    code, (result,) = echo(table, "VIEWER")
    assert code == 0 and result["ok"]
    assert (result["address"], result["calling"], result["echo_status"], result["failure"]) == (
        "127.0.0.1", "EX_STORE_SCU", 0, "")
    assert all(result[k] is not None for k in ("resolve_ms", "connect_ms", "association_ms", "echo_ms"))
    wait_for(lambda: re.search(r"Calling Application Name:\s+EX_STORE_SCU\n", storescp[1].read_text(errors="replace")),
             "storescp to log the caller")
    assert uids.IMPLEMENTATION_UID_QR_SCU in storescp[1].read_text(errors="replace")


def test_echo_as_storage_scp_towards_a_commitment_peer(table, storescp):
    """TL-06: the calling title the N-EVENT-REPORT associations use, and (AE-11) STORAGE-SCP's
    own Implementation Class UID."""
    code, (result,) = echo(table, "--as", "scp", "VIEWER")
    assert code == 0 and result["calling"] == "EX_STORE_SCP"
    wait_for(lambda: re.search(rf"Their Implementation Class UID:\s+{re.escape(uids.IMPLEMENTATION_UID_SCP)}\n",
                               storescp[1].read_text(errors="replace")), "storescp to log the implementation UID")


def test_a_rejection_is_reported_in_words(table):
    code, (result,) = echo(table, "EX_STORE_SCP")
    assert code == 1 and not result["ok"] and result["association_ms"] is None
    assert result["failure"] == ("association: association rejected by EX_STORE_SCP: Rejected (Permanent), "
                                 "DUL service-user, Calling AE title not recognised (1/1/3)")


@pytest.fixture
def dcmqrscp(tmp_path):
    """DCMTK dcmqrscp as ARCHIVE on a free port, accepting only MODALITY as calling title."""
    port, area = free_port(), tmp_path / "area"
    area.mkdir()
    cfg = tmp_path / "dcmqrscp.cfg"
    cfg.write_text(f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 4\n"
                   "HostTable BEGIN\nmodality = (MODALITY, 127.0.0.1, 104)\nHostTable END\n"
                   f"AETable BEGIN\nARCHIVE {area} RW (10, 10mb) modality\nAETable END\n")
    proc = subprocess.Popen(["dcmqrscp", "-dhl", "-c", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"})
    try:
        wait_for(lambda: proc.poll() is not None or accepts(port), "dcmqrscp to listen")
        assert proc.poll() is None
        yield port
    finally:
        proc.kill()
        proc.wait(10)


def test_a_dcmtk_rejection_of_the_calling_title_is_reported_in_words(tmp_path, dcmqrscp):
    config = tmp_path / "tool.toml"
    config.write_text(tomlkit.dumps({"storage": {"data_dir": str(tmp_path / "data")}, "remote_aes": [
        {"ae_title": "ARCHIVE", "host": "127.0.0.1", "port": dcmqrscp}]}))
    code, (result,) = echo(config, "ARCHIVE")
    assert code == 1 and result["connect_ms"] is not None and result["echo_status"] is None
    # dcmqrscp answers a calling title its AETable does not list with reason 7, not 3.
    assert result["failure"] == ("association: association rejected by ARCHIVE: Rejected (Permanent), "
                                 "DUL service-user, Called AE title not recognised (1/1/7)")


def test_all_prints_a_table_and_fails_if_one_fails(table):
    result = service_tool(table, "echo", "--all")
    lines = result.stdout.splitlines()
    assert result.returncode == 1 and lines[0].split()[:3] == ["AE", "title", "address"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert " OK " in rows["VIEWER"]
    assert "FAILED at association: association rejected" in rows["EX_STORE_SCP"]
    assert "FAILED at TCP: cannot connect to 127.0.0.1 port" in rows["NOBODY"] and "Connection refused" in rows["NOBODY"]


def test_local_echoes_both_own_scps(appliance):
    """The box's own SCP AEs, which check every message they get: the echo is well formed."""
    code, results = echo(appliance.config_path, "--local")
    assert code == 0 and [(r["title"], r["ok"]) for r in results] == [("EX_STORE_SCP", True), ("EX_QUERY_SCP", True)]


def test_an_unknown_title_is_a_usage_error(table):
    code, message = echo(table, "PACS")
    assert code == 2 and "no remote AE titled 'PACS' (known: VIEWER, EX_STORE_SCP, NOBODY)" in message


def called_and_calling(log) -> tuple[str, str]:
    """The titles of the last association storescp's debug log shows."""
    text = log.read_text(errors="replace")
    return (re.findall(r"Called Application Name:\s+(\S+)\n", text)[-1],
            re.findall(r"Calling Application Name:\s+(\S+)\n", text)[-1])


def test_echo_any_peer_by_host_and_port(tmp_path, storescp):
    """echoscu's way: no remote AE table needed; the called title is given, the calling one is
    STORAGE-SCU's unless --calling names another; each step timed as for a remote AE."""
    config = tmp_path / "empty.toml"
    config.write_text(tomlkit.dumps({"storage": {"data_dir": str(tmp_path / "data")}}))
    port, log = storescp
    code, (result,) = echo(config, "localhost", str(port), "--called", "VIEWER")
    assert code == 0 and result["ok"], result
    assert (result["title"], result["host"], result["port"], result["calling"]) == ("VIEWER", "localhost", port,
                                                                                    "EX_STORE_SCU")
    assert all(result[k] is not None for k in ("resolve_ms", "connect_ms", "association_ms", "echo_ms"))
    wait_for(lambda: called_and_calling(log) == ("VIEWER", "EX_STORE_SCU"), "storescp to log the titles")
    text = service_tool(config, "echo", "127.0.0.1", str(port), "--called", "VIEWER", "--calling", "FIELD_ENG")
    assert text.returncode == 0, text.stdout + text.stderr
    assert text.stdout.startswith(f"VIEWER at 127.0.0.1 port {port}, calling as FIELD_ENG\n") and \
        text.stdout.endswith("\nOK\n")
    wait_for(lambda: called_and_calling(log) == ("VIEWER", "FIELD_ENG"), "storescp to log the titles")


def test_echo_by_host_and_port_reports_the_peers_rejection(appliance):
    """A wrong called title, as the real appliance answers it, in words; the right one passes."""
    port = str(appliance.storage_port)
    code, (result,) = echo(appliance.config_path, "127.0.0.1", port, "--called", "WRONG")
    assert code == 1 and result["connect_ms"] is not None
    assert result["failure"] == ("association: association rejected by WRONG: Rejected (Permanent), "
                                 "DUL service-user, Called AE title not recognised (1/1/7)")
    code, (result,) = echo(appliance.config_path, "127.0.0.1", port, "--called", "EX_STORE_SCP")
    assert code == 0 and result["ok"]


@pytest.mark.parametrize("args, said", [
    (("127.0.0.1", "104"), "127.0.0.1 104 is a host and a port: give --called TITLE"),
    (("127.0.0.1", "--called", "PACS"), "--called goes with HOST PORT (a TCP port 1..65535), not 127.0.0.1"),
    (("127.0.0.1", "70000", "--called", "PACS"), "--called goes with HOST PORT (a TCP port 1..65535)"),
    (("VIEWER", "--tls"), "--tls goes with HOST PORT --called TITLE"),
    (("--all", "127.0.0.1", "104", "--called", "PACS"), "--all echoes the table's remote AEs"),
    (("127.0.0.1", "104", "--called", "A_TITLE_LONGER_THAN_16"), "is longer than 16 characters"),
], ids=["no-called", "no-port", "bad-port", "tls-with-title", "all-with-host", "long-title"])
def test_host_and_port_usage_errors(table, args, said):
    result = service_tool(table, "echo", *args)
    assert result.returncode == 2 and said in result.stderr, result.stderr


def test_titles_that_look_like_a_host_and_port_stay_titles(tmp_path):
    """Two titles of the table, the second all digits: the table's, not a host and a port."""
    config = tmp_path / "tool.toml"
    config.write_text(tomlkit.dumps({"storage": {"data_dir": str(tmp_path / "data")}, "remote_aes": [
        {"ae_title": "PACS", "host": "127.0.0.1", "port": free_port()},
        {"ae_title": "104", "host": "127.0.0.1", "port": free_port()}]}))
    code, results = echo(config, "PACS", "104")
    assert code == 1 and [r["title"] for r in results] == ["PACS", "104"]


def test_local_echo_passes_the_allow_lists_the_tool_wrote(make_appliance, tmp_path):
    """SE-02, SE-03: `remote import` turns the calling-AE allow-lists on and `access allow
    --address` the address lists, without 127.0.0.1; the local echo still passes (it calls as
    SERVICE_TOOL, admitted for C-ECHO from the box itself). A title the lists refuse, given with
    --calling, is told how to admit it."""
    app = make_appliance()
    cfg = tmp_path / "dcmqrscp.cfg"
    cfg.write_text(DCMQRSCP_CFG)
    assert service_tool(app.config_path, "remote", "import", str(cfg)).returncode == 0
    for ae in ("storage-scp", "qr"):
        assert service_tool(app.config_path, "access", "allow", ae, "--address", "10.0.0.0/8").returncode == 0
    shown = json.loads(service_tool(app.config_path, "access", "show", "--json").stdout)
    assert all(row["accepted_calling_aes"] == ["CT_1"] and row["accepted_addresses"] == ["10.0.0.0/8"]
               for row in shown)
    code, results = echo(app.config_path, "--local")
    assert code == 0, results
    assert [(r["title"], r["calling"], r["ok"]) for r in results] == [("EX_STORE_SCP", "SERVICE_TOOL", True),
                                                                      ("EX_QUERY_SCP", "SERVICE_TOOL", True)]
    code, results = echo(app.config_path, "--local", "--calling", "VIEWER")
    assert code == 1
    assert [r["failure"] for r in results] == [
        f"association: association rejected by {title}: Rejected (Permanent), DUL service-user, Calling AE title "
        f"not recognised (1/1/3); to admit VIEWER: service-tool access allow {ae} --calling VIEWER"
        for title, ae in (("EX_STORE_SCP", "storage-scp"), ("EX_QUERY_SCP", "qr"))]
