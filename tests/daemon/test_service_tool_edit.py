"""`service-tool ae|remote|access` against a running daemon: each edit is validated, written
atomically and reloaded at once (TL-01, TL-02, TL-04, AE-05..AE-08, SE-01..SE-03)."""

from __future__ import annotations

import json
import socket
import tomllib

import pytest

import scu
from destinations import Destination, move, move_contexts, move_identifier
from helpers import WITHOUT_BIND_CAPABILITY, accepts, free_port, service_tool
from query_archive import populate, uid
from service_tool import privileged_port

pytestmark = pytest.mark.index_backends  # content management on SQLite and on PostgreSQL (IX-01)

REJECTED_CALLING = (1, 1, 3)  # AS-05
REJECTED_CALLED = (1, 1, 7)  # AS-04


def edit(app, *args: str):
    return service_tool(app.config_path, *args)


def test_new_qr_port_is_listened_on_after_the_edit(make_appliance):
    """The issue's first check: change the Q/R port, and the daemon listens there at once."""
    app = make_appliance()
    old, new = app.qr_port, free_port()
    result = edit(app, "ae", "set", "query-retrieve-scp", "--port", str(new))
    assert result.returncode == 0, result.stderr
    assert "the service reloaded the configuration" in result.stdout
    assert tomllib.loads(app.config_path.read_text())["query_retrieve_scp"]["port"] == new
    assert scu.echo(new, "EX_QUERY_SCP") == 0x0000
    assert not accepts(old)
    assert scu.echo(app.storage_port, "EX_STORE_SCP") == 0x0000  # the other AE is untouched


def test_new_title_is_answered_to_after_the_edit(make_appliance):
    app = make_appliance()
    result = edit(app, "ae", "set", "storage-scp", "--title", "ARCHIVE_1")
    assert result.returncode == 0, result.stderr
    assert scu.echo(app.storage_port, "ARCHIVE_1") == 0x0000
    assert scu.echo(app.storage_port, "EX_STORE_SCP") == REJECTED_CALLED


def test_qr_and_scu_may_share_a_title(make_appliance):
    """AE-05: QUERY-RETRIEVE-SCP and STORAGE-SCU under one title is accepted."""
    app = make_appliance()
    result = edit(app, "ae", "set", "storage-scu", "--title", "EX_QUERY_SCP")
    assert result.returncode == 0, result.stderr
    shown = service_tool(app.config_path, "ae", "show")
    assert "STORAGE-SCU          EX_QUERY_SCP" in shown.stdout


@pytest.mark.parametrize("args, key", [
    (("storage-scp", "--title", "EX_QUERY_SCP"), "storage_scp.ae_title"),  # AE-06
    (("storage-scu", "--title", "EX_STORE_SCP"), "storage_scp.ae_title"),  # AE-06, from the other side
    (("qr", "--title", "A_TITLE_LONGER_THAN_16"), "query_retrieve_scp.ae_title"),  # AE-07
    (("qr", "--title", "BACK\\SLASH"), "query_retrieve_scp.ae_title"),  # AE-07
    (("qr", "--title", "   "), "query_retrieve_scp.ae_title"),  # AE-07
    (("qr", "--port", "70000"), "query_retrieve_scp.port"),
])
def test_invalid_edit_is_refused_naming_the_key_and_the_file_is_unchanged(make_appliance, args, key):
    app = make_appliance()
    app.config_path.write_text("# installed by the integrator\n" + app.config_path.read_text())
    before = app.config_path.read_bytes()
    result = edit(app, "ae", "set", *args)
    assert result.returncode == 1
    assert result.stderr.startswith(f"refused: {key}: ")
    assert result.stderr.rstrip().endswith("is unchanged")
    assert app.config_path.read_bytes() == before
    assert scu.echo(app.qr_port, "EX_QUERY_SCP") == 0x0000


def test_a_port_the_daemon_cannot_take_puts_the_file_back(make_appliance):
    """The file is valid but the service cannot listen there: the service keeps serving on the
    old port, says why, and the file is restored so that it says what the box runs."""
    app = make_appliance()
    other = make_appliance(name="other")
    before = app.config_path.read_bytes()
    result = edit(app, "ae", "set", "storage-scp", "--port", str(other.storage_port))
    assert result.returncode == 1
    assert "Address already in use" in result.stderr and "is restored" in result.stderr
    assert app.config_path.read_bytes() == before
    assert scu.echo(app.storage_port, "EX_STORE_SCP") == 0x0000


def free_port_below_1024() -> int:
    """A privileged port nothing listens on (the tests run as root)."""
    for port in range(1023, 900, -1):
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 901 and 1023")


def test_a_port_below_1024_the_service_cannot_bind_is_refused_with_the_fix(make_appliance):
    """Issue 22 item 7b, off systemd (AE-03, TL-04, SE-06): the service lacks the capability, so
    the edit is refused before anything is written, saying what to do, word for word."""
    app = make_appliance(prefix=WITHOUT_BIND_CAPABILITY)
    before = app.config_path.read_bytes()
    for args in (("--port", "104"), ("--tls-port", "104")):
        result = edit(app, "ae", "set", "storage-scp", *args)
        assert result.returncode == 1, result.stdout
        assert result.stderr.startswith(f"refused: port 104 below 1024: the running service (pid {app.proc.pid}) "
                                        "lacks CAP_NET_BIND_SERVICE to listen there. Either choose a port of 1024 "
                                        "or above, or give the service that capability")
        assert f"{privileged_port.DROP_IN}:\n\n{privileged_port.DROP_IN_TEXT}\n" in result.stderr
        assert "systemctl daemon-reload && systemctl restart appliance" in result.stderr
        assert result.stderr.rstrip().endswith("is unchanged")
    assert app.config_path.read_bytes() == before
    assert "reload" not in app.log()  # the service was never asked
    assert scu.echo(app.storage_port, "EX_STORE_SCP") == 0x0000


def test_a_port_below_1024_the_service_can_bind_is_listened_on(make_appliance):
    """The service has CAP_NET_BIND_SERVICE (here: root): the edit goes on as any other."""
    app = make_appliance()
    port = free_port_below_1024()
    result = edit(app, "ae", "set", "qr", "--port", str(port))
    assert result.returncode == 0, result.stderr
    assert "the service reloaded the configuration" in result.stdout
    assert scu.echo(port, "EX_QUERY_SCP") == 0x0000


def test_edit_keeps_the_installers_comments(make_appliance):
    app = make_appliance()
    app.config_path.write_text("# site: Radiology West\n" + app.config_path.read_text()
                               + "\n# the PACS\n")
    assert edit(app, "remote", "add", "PACS", "--host", "10.0.0.9", "--port", "104").returncode == 0
    text = app.config_path.read_text()
    assert text.startswith("# site: Radiology West\n") and "# the PACS\n" in text
    assert tomllib.loads(text)["remote_aes"][0]["ae_title"] == "PACS"


def test_edit_with_the_service_stopped_is_saved_for_its_next_start(make_appliance):
    app = make_appliance(start=False)
    result = edit(app, "remote", "add", "PACS", "--host", "10.0.0.9", "--port", "104")
    assert result.returncode == 0, result.stderr
    assert "the service is not running" in result.stdout
    assert [r["ae_title"] for r in tomllib.loads(app.config_path.read_text())["remote_aes"]] == ["PACS"]


@pytest.fixture
def archive(make_appliance, tmp_path):
    app = make_appliance({"storage_scu": {"open_retry_delay": 0.2}})
    populate(app, tmp_path / "files")
    return app


def _move_s1(app, destination_title: str):
    with scu.association(app.qr_port, "EX_QUERY_SCP", move_contexts()) as assoc:
        return move(assoc, move_identifier("STUDY", StudyInstanceUID=uid("S1")), destination_title)


def test_added_remote_ae_receives_a_c_move(archive):
    """The issue's second check: add a remote AE, and C-MOVE to it works without a restart."""
    destination = Destination("VIEWER", free_port())
    try:
        assert _move_s1(archive, "VIEWER")[-1].status == 0xA801  # QM-04: not in the table yet
        result = edit(archive, "remote", "add", "VIEWER", "--host", "127.0.0.1", "--port", str(destination.port))
        assert result.returncode == 0, result.stderr
        final = _move_s1(archive, "VIEWER")[-1]
        assert final.status == 0x0000 and final.completed > 0
        assert len(destination.arrivals) == final.completed
        assert {a.calling for a in destination.arrivals} == {"EX_STORE_SCU"}
        # Not a move destination any more (but still in the table): A801 again.
        assert edit(archive, "remote", "set", "VIEWER", "--may", "commitment").returncode == 0
        assert _move_s1(archive, "VIEWER")[-1].status == 0xA801
        assert edit(archive, "remote", "set", "VIEWER", "--may", "move").returncode == 0
        assert _move_s1(archive, "VIEWER")[-1].status == 0x0000
        assert edit(archive, "remote", "remove", "VIEWER").returncode == 0
        assert _move_s1(archive, "VIEWER")[-1].status == 0xA801
        assert "remote_aes" not in tomllib.loads(archive.config_path.read_text())
    finally:
        destination.stop()


def test_remote_allowed_to_store_turns_the_storage_allow_list_on(make_appliance):
    """`--may store` puts the remote's title on STORAGE-SCP's calling-AE list (AS-05, SE-02);
    the tool says that others are now refused."""
    app = make_appliance()
    assert scu.echo(app.storage_port, "EX_STORE_SCP", calling="ANYONE") == 0x0000
    result = edit(app, "remote", "add", "CT_1", "--host", "10.0.0.5", "--port", "104", "--may", "store")
    assert result.returncode == 0, result.stderr
    assert "note: STORAGE-SCP now accepts calling AEs: CT_1 (was: any)" in result.stdout
    assert scu.echo(app.storage_port, "EX_STORE_SCP", calling="CT_1") == 0x0000
    assert scu.echo(app.storage_port, "EX_STORE_SCP", calling="ANYONE") == REJECTED_CALLING
    assert scu.echo(app.qr_port, "EX_QUERY_SCP", calling="ANYONE") == 0x0000  # Q/R has its own list
    assert edit(app, "remote", "set", "CT_1", "--may", "query").returncode == 0
    assert scu.echo(app.storage_port, "EX_STORE_SCP", calling="ANYONE") == 0x0000
    assert scu.echo(app.qr_port, "EX_QUERY_SCP", calling="ANYONE") == REJECTED_CALLING


@pytest.mark.parametrize("args, message", [
    (("add", "PACS", "--host", "10.0.0.9", "--port", "104"), "a remote AE titled 'PACS' exists"),
    (("set", "NOBODY", "--port", "105"), "no remote AE titled 'NOBODY'"),
    (("remove", "NOBODY"), "no remote AE titled 'NOBODY'"),
    (("add", "WS", "--host", "not a host!", "--port", "104"), "remote_aes[1].host"),
    (("set", "PACS", "--title", "EX_STORE_SCP_TOO_LONG"), "remote_aes[0].ae_title"),
])
def test_invalid_remote_edit_is_refused(make_appliance, args, message):
    app = make_appliance({"remote_aes": [{"ae_title": "PACS", "host": "10.0.0.9", "port": 104}]})
    before = app.config_path.read_bytes()
    result = edit(app, "remote", *args)
    assert result.returncode == 1
    assert message in result.stderr
    assert app.config_path.read_bytes() == before


def test_remote_list(make_appliance):
    app = make_appliance({"remote_aes": [{"ae_title": "PACS", "host": "10.0.0.9", "port": 104, "store": True}]})
    shown = service_tool(app.config_path, "remote", "list", "--json")
    assert shown.returncode == 0
    assert json.loads(shown.stdout) == [{"ae_title": "PACS", "host": "10.0.0.9", "port": 104, "move_destination": True,
                                        "commitment": True, "store": True, "query": False, "tls": False,
                                        "tls_subject": ""}]
    text = service_tool(app.config_path, "remote", "list").stdout
    assert "PACS" in text and "move,commitment,store" in text


def test_access_lists_per_scp(make_appliance):
    """SE-02, SE-03: calling-AE and IP allow-lists per AE; SE-01: the called-AE check."""
    app = make_appliance()
    result = edit(app, "access", "allow", "qr", "--calling", "WS_1")
    assert result.returncode == 0, result.stderr
    assert scu.echo(app.qr_port, "EX_QUERY_SCP", calling="WS_2") == REJECTED_CALLING
    assert scu.echo(app.qr_port, "EX_QUERY_SCP", calling="WS_1") == 0x0000
    assert scu.echo(app.storage_port, "EX_STORE_SCP", calling="WS_2") == 0x0000
    assert edit(app, "access", "revoke", "qr", "--calling", "WS_1").returncode == 0
    assert scu.echo(app.qr_port, "EX_QUERY_SCP", calling="WS_2") == 0x0000

    assert edit(app, "access", "allow", "storage-scp", "--address", "192.0.2.0/24").returncode == 0
    assert scu.echo(app.storage_port, "EX_STORE_SCP") == (1, 1, 1), app.log()  # AS-08: 127.0.0.1 is not listed
    assert edit(app, "access", "allow", "storage-scp", "--address", "127.0.0.1").returncode == 0
    assert scu.echo(app.storage_port, "EX_STORE_SCP") == 0x0000
    shown = service_tool(app.config_path, "access", "show", "storage-scp").stdout
    assert "peer addresses:          192.0.2.0/24, 127.0.0.1" in shown

    assert scu.echo(app.storage_port, "SOMEONE_ELSE") == REJECTED_CALLED
    assert edit(app, "access", "called-check", "storage-scp", "off").returncode == 0
    assert scu.echo(app.storage_port, "SOMEONE_ELSE") == 0x0000


def test_an_address_with_host_bits_is_stored_as_its_network(make_appliance):
    """Issue 22 item 7: 10.0.4.5/24 is the network 10.0.4.0/24, and the tool says so; a single
    host is kept without /32."""
    app = make_appliance()
    result = edit(app, "access", "allow", "storage-scp", "--address", "10.0.4.5/24", "--address", "127.0.0.1/32")
    assert result.returncode == 0, result.stderr
    assert "10.0.4.5/24 as 10.0.4.0/24" in result.stdout
    stored = tomllib.loads(app.config_path.read_text())["storage_scp"]["accepted_addresses"]
    assert stored == ["10.0.4.0/24", "127.0.0.1"]
    assert scu.echo(app.storage_port, "EX_STORE_SCP") == 0x0000


def test_a_remote_host_that_does_not_resolve_is_kept_with_a_warning(make_appliance):
    """Issue 22 item 7: the entry is added (DNS may come later), the installer is told."""
    app = make_appliance()
    result = edit(app, "remote", "add", "CT_9", "--host", "nonexistent.invalid", "--port", "104")
    assert result.returncode == 0, result.stderr
    assert "warning: host 'nonexistent.invalid' does not resolve now" in result.stderr
    result = edit(app, "remote", "set", "CT_9", "--host", "127.0.0.1")
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr


def test_access_refuses_what_is_not_there_and_bad_networks(make_appliance):
    app = make_appliance()
    before = app.config_path.read_bytes()
    result = edit(app, "access", "revoke", "qr", "--calling", "NOBODY")
    assert result.returncode == 1 and "'NOBODY' is not in query_retrieve_scp.accepted_calling_aes" in result.stderr
    result = edit(app, "access", "allow", "qr", "--address", "10.0.0.300")
    assert result.returncode == 1 and "query_retrieve_scp.accepted_addresses" in result.stderr
    result = edit(app, "access", "allow", "storage-scu", "--calling", "X")
    assert result.returncode == 2 and "accepts no associations" in result.stderr
    assert app.config_path.read_bytes() == before


DCMQRSCP_CFG = """\
NetworkTCPPort  = 104
MaxPDUSize      = 16384
MaxAssociations = 16

HostTable BEGIN
ct_1      = (CT_1, 10.0.0.5, 104)
viewer    = (VIEWER, viewer.example, 11112)
modalities = ct_1
HostTable END

AETable BEGIN
OLD_ARCHIVE   /var/lib/dicom   RW   (200, 1024mb)   modalities
AETable END
"""


def test_import_and_export_dcmqrscp_cfg(make_appliance, tmp_path):
    """An installer's existing dcmqrscp.cfg: its HostTable becomes the remote AE table, the peers
    of an RW entry may store and query; `export` writes it back for DCMTK."""
    app = make_appliance()
    cfg = tmp_path / "dcmqrscp.cfg"
    cfg.write_text(DCMQRSCP_CFG)
    result = edit(app, "remote", "import", str(cfg))
    assert result.returncode == 0, result.stderr
    assert "2 remote AEs added, 0 updated" in result.stdout
    assert "line 12: AETable entry OLD_ARCHIVE" in result.stderr  # the AETable entry's own title, area and quota are not imported
    remotes = {r["ae_title"]: r for r in json.loads(service_tool(app.config_path, "remote", "list", "--json").stdout)}
    assert (remotes["CT_1"]["host"], remotes["CT_1"]["store"], remotes["CT_1"]["query"]) == ("10.0.0.5", True, True)
    assert (remotes["VIEWER"]["port"], remotes["VIEWER"]["store"]) == (11112, False)
    assert scu.echo(app.storage_port, "EX_STORE_SCP", calling="CT_1") == 0x0000
    assert scu.echo(app.storage_port, "EX_STORE_SCP", calling="VIEWER") == REJECTED_CALLING
    exported = service_tool(app.config_path, "remote", "export")
    assert exported.returncode == 0
    assert "(CT_1, 10.0.0.5, 104)" in exported.stdout and "(VIEWER, viewer.example, 11112)" in exported.stdout
    assert "EX_STORE_SCP" in exported.stdout and "EX_QUERY_SCP" in exported.stdout
