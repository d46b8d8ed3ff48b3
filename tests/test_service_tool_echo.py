"""`service-tool echo` (TL-05, TL-06, VE-04) through the installed console script, against a
DCMTK storescp, the real daemon refusing the calling title, and a port where nothing listens."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import tomlkit

from appliance.codes import uids
from helpers import accepts, free_port, service_tool, wait_for
from helpers import storescp as storescp_process



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
