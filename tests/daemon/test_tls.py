"""DICOM over TLS against the real daemon (SE-07, SE-09, SE-10): DCMTK's tools with +tls,
pynetdicom with an ssl context and a raw TLS client, all with certificates made here by
`openssl` (tests/support/tls_pki.py). A refused connection must be logged with the peer's
address and the reason and never become an association; the service keeps serving."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import ssl
import time
from types import SimpleNamespace

import pydicom
import pytest
import tomlkit
from pynetdicom import AE

import datasets
import pdus
import scu
from tls_pki import Authority
from commitment_peer import Modality, n_action, request
from helpers import Appliance, dcmtk, free_port, service_tool, storescp, wait_for
from query_archive import uid

STORE, QUERY = "EX_STORE_SCP", "EX_QUERY_SCP"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    ca = Authority(root / "hospital", "Test Hospital CA")
    return SimpleNamespace(ca=ca, box=ca.issue("archive"), modality=ca.issue("modality"),
                           viewer=ca.issue("viewer"), stranger=Authority(root / "other", "Other CA").issue("stranger"))


def tls_overrides(pki, storage_scp: dict | None = None, **more) -> dict:
    return {"storage_scp": {"tls_port": free_port(), **(storage_scp or {})},
            "query_retrieve_scp": {"tls_port": free_port()},
            "tls": {"certificate": str(pki.box.certificate), "key": str(pki.box.key),
                    "ca_bundle": str(pki.ca.certificate)}, **more}


def tls_port(app: Appliance, section: str = "storage_scp") -> str:
    return str(app.config[section]["tls_port"])


def dcmtk_tls(pki, issued=None) -> list[str]:
    """DCMTK's TLS options: with `issued`'s certificate (default: the modality's), trusting the CA."""
    issued = issued or pki.modality
    return ["+tls", str(issued.key), str(issued.certificate), "+cf", str(pki.ca.certificate)]


def client_context(pki, issued=None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca.certificate))
    context.check_hostname = False
    if issued is not None:
        context.load_cert_chain(issued.certificate, issued.key)
    return context


def ct_file(tmp_path, label: str):
    ds = datasets.image(rows=8, columns=8, study_uid=uid(f"{label}"), series_uid=uid(f"{label}.1"),
                        sop_instance_uid=uid(f"{label}.1.1"), patient_id=f"PID-{label}")
    return datasets.write(ds, tmp_path / f"{label}.dcm")


def test_dcmtk_stores_finds_and_moves_over_tls(make_appliance, pki, tmp_path):
    """SE-07, SE-09, SE-10: storescu and findscu with a certificate the CA signed; the C-MOVE's
    instances go out over TLS to storescp +tls; the plain port serves as before."""
    dest_port = free_port()
    app = make_appliance(tls_overrides(pki, remote_aes=[
        {"ae_title": "TLS_VIEWER", "host": "127.0.0.1", "port": dest_port, "tls": True}]))
    assert f"{STORE} on TLS port {tls_port(app)}" in app.ready_message
    stored = dcmtk("storescu", *dcmtk_tls(pki), "-aec", STORE, "127.0.0.1", tls_port(app), str(ct_file(tmp_path, "T1")))
    assert stored.returncode == 0, stored.stderr
    app.wait_log(r"STORAGE-SCP #\d+ STORESCU@127\.0\.0\.1:\d+: association accepted \(called EX_STORE_SCP, "
                 r"\d+ presentation contexts accepted; TLSv1\.[23] \S+, peer certificate CN=modality\)")
    found = dcmtk("findscu", "-v", *dcmtk_tls(pki), "-S", "-aec", QUERY, "-k", "QueryRetrieveLevel=STUDY",
                  "-k", f"StudyInstanceUID={uid('T1')}", "-k", "PatientID", "127.0.0.1", tls_port(app, "query_retrieve_scp"))
    assert found.returncode == 0 and "PID-T1" in found.stderr + found.stdout, found.stderr
    # Debian's movescu has no TLS options: the C-MOVE comes from pynetdicom over TLS, and
    # STORAGE-SCU sends to DCMTK storescp +tls.
    received = tmp_path / "viewer"
    received.mkdir()
    with storescp(dest_port, "TLS_VIEWER", received, *dcmtk_tls(pki, pki.viewer)):
        ae = AE(ae_title="VIEWER")
        ae.add_requested_context(datasets.STUDY_ROOT_MOVE, datasets.ILE)
        assoc = ae.associate("127.0.0.1", int(tls_port(app, "query_retrieve_scp")), ae_title=QUERY,
                             tls_args=(client_context(pki, pki.modality), None))
        assert assoc.is_established
        try:
            responses = [status.Status for status, _ in assoc.send_c_move(
                scu.identifier({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": uid("T1")}), "TLS_VIEWER",
                datasets.STUDY_ROOT_MOVE) if "Status" in status]
        finally:
            assoc.release()
        assert responses[-1] == 0x0000, responses
        wait_for(lambda: list(received.iterdir()), "the moved instance at storescp")
    [arrived] = list(received.iterdir())
    assert pydicom.dcmread(arrived).SOPInstanceUID == uid("T1.1.1")
    app.wait_log(r"STORAGE-SCU #\d+ EX_STORE_SCU->TLS_VIEWER@127\.0\.0\.1:\d+: ")
    # The plain port of the same AE answers too.
    assert dcmtk("echoscu", "-aec", STORE, "127.0.0.1", str(app.storage_port)).returncode == 0


@pytest.fixture(scope="module")
def tls_archive(tmp_path_factory, pki):
    app = Appliance(tmp_path_factory.mktemp("tls") / "appliance",
                    tls_overrides(pki, timeouts={"artim": 1, "shutdown_drain": 10})).start()
    yield app
    assert app.stop() == 0, app.log()


def _handshake_tls11(port: int) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.warns(DeprecationWarning):
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with pytest.raises(ssl.SSLError):
            context.wrap_socket(raw)


REFUSED = {
    "no certificate": (lambda pki, port: dcmtk("echoscu", "+tla", "+cf", str(pki.ca.certificate), "-aec", STORE,
                                               "127.0.0.1", str(port)),
                       r"TLS connection refused: the client presented no certificate \(verify_clients = true\)"),
    "untrusted certificate": (lambda pki, port: dcmtk("echoscu", *dcmtk_tls(pki, pki.stranger), "-aec", STORE,
                                                      "127.0.0.1", str(port)),
                              r"TLS connection refused: the peer's certificate is not trusted: .*\(tls\.ca_bundle\)"),
    "plain DICOM": (lambda pki, port: dcmtk("echoscu", "-aec", STORE, "127.0.0.1", str(port)),
                    r"TLS connection refused: the peer did not start a TLS handshake on the TLS port \(it looks like a plain DICOM A-ASSOCIATE-RQ, first bytes 01"),
    "TLS 1.1": (lambda pki, port: _handshake_tls11(port),
                r"TLS connection refused: the peer offers only TLS 1\.1 or older; TLS 1\.2 or 1\.3 is required"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refused_tls_connections_are_logged_and_never_become_associations(tls_archive, pki, case):
    """SE-07, SE-09: the peer's address and the reason in one WARNING line, no association."""
    app = tls_archive
    client, expected = REFUSED[case]
    before = len(app.log())
    outcome = client(pki, int(tls_port(app)))
    if outcome is not None:  # DCMTK: the association must have failed
        assert outcome.returncode != 0, outcome.stderr
    line = wait_for(lambda: re.search(r"WARNING appliance\.association: STORAGE-SCP #\d+ \?@127\.0\.0\.1:\d+: "
                                      + expected, app.log()[before:]), f"the refusal of {case} in the log")
    assert line
    assert "association accepted" not in app.log()[before:]
    ok = dcmtk("echoscu", *dcmtk_tls(pki), "-aec", STORE, "127.0.0.1", tls_port(app))
    assert ok.returncode == 0, ok.stderr


def test_a_handshake_that_never_completes_is_closed_by_artim(tls_archive):
    """SE-07, CF-04: half a ClientHello, then silence; and no byte at all."""
    app = tls_archive
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", int(tls_port(app))), timeout=5) as half, \
            socket.create_connection(("127.0.0.1", int(tls_port(app))), timeout=5) as silent:
        half.sendall(bytes.fromhex("160301020001"))
        assert half.recv(100) == b"" and silent.recv(100) == b""
    assert time.monotonic() - started < 4
    app.wait_log(r"connection closed: the TLS handshake was not complete within 1 s \(timeouts\.artim\)")


def test_pynetdicom_stores_over_tls(tls_archive, pki, tmp_path):
    """SE-07: a pynetdicom client with an ssl context; the instance is stored and indexed."""
    app = tls_archive
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(datasets.CT, datasets.ELE)
    assoc = ae.associate("127.0.0.1", int(tls_port(app)), ae_title=STORE,
                         tls_args=(client_context(pki, pki.modality), None))
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ct_file(tmp_path, "T2"))
        assert status.Status == 0x0000
    finally:
        assoc.release()
    assert app.index_rows("SELECT COUNT(*) FROM instance WHERE sop_instance_uid = ?", uid("T2.1.1")) == [(1,)]


def test_a_tls_only_ae_without_client_verification(make_appliance, pki):
    """SE-07: port = 0 leaves only the TLS listener; SE-09: verify_clients = false admits a
    client without a certificate."""
    app = make_appliance(tls_overrides(pki, {"port": 0, "verify_clients": False}))
    assert re.search(rf"STORAGE-SCP {STORE} on TLS port {tls_port(app)}, QUERY", app.ready_message)
    assert f"{STORE} on port" not in app.ready_message
    anonymous = dcmtk("echoscu", "+tla", "+cf", str(pki.ca.certificate), "-aec", STORE, "127.0.0.1", tls_port(app))
    assert anonymous.returncode == 0, anonymous.stderr


def test_a_commitment_report_goes_over_tls(make_appliance, pki, modalities, tmp_path):
    """SE-10, SC-13: the report on a new association to a remote AE with tls = true; the
    modality's listener requires the box's certificate."""
    port = free_port()
    app = make_appliance(tls_overrides(pki, {"always_new_association_for_reports": True}, remote_aes=[
        {"ae_title": "MODALITY1", "host": "127.0.0.1", "port": port, "tls": True}]))
    with scu.association(app.storage_port, STORE, calling="MODALITY1") as assoc:
        assert scu.send_file(assoc, ct_file(tmp_path, "T3")) == 0
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca.certificate))
    server.load_cert_chain(pki.modality.certificate, pki.modality.key)
    server.verify_mode = ssl.CERT_REQUIRED
    modality = Modality("MODALITY1", port).listen(server)
    modalities.append(modality)
    assoc = modality.associate(app.storage_port)
    try:
        assert n_action(assoc, request("1.2.3.300", [(datasets.CT, uid("T3.1.1"))])) == 0x0000
    finally:
        assoc.release()
    [report] = modality.wait_for(1)
    assert (report.event_type, report.committed, report.own_association) == (1, [(datasets.CT, uid("T3.1.1"))], False)


def test_service_tool_echoes_over_tls(make_appliance, pki):
    """SE-10, TL-05: a remote AE with tls = true is echoed over TLS with the handshake as its
    own step; --local echoes the plain and the TLS port of each AE."""
    app = make_appliance(tls_overrides(pki))
    app.config["remote_aes"] = [{"ae_title": STORE, "host": "127.0.0.1", "port": int(tls_port(app)), "tls": True}]
    app.write_config(app.config)
    remote = service_tool(app.config_path, "echo", STORE)
    assert remote.returncode == 0, remote.stdout + remote.stderr
    assert re.search(r"  TLS        TLSv1\.[23] \S+, peer certificate CN=archive in [\d.]+ ms", remote.stdout)
    local = service_tool(app.config_path, "echo", "--local")
    assert local.returncode == 0, local.stdout + local.stderr
    assert local.stdout.count("OK") == 4 and local.stdout.count(" TLS port ") == 2, local.stdout
    untrusted = dict(app.config, tls={**app.config["tls"], "ca_bundle": str(pki.stranger.certificate)})
    app.write_config(untrusted)
    refused = service_tool(app.config_path, "echo", STORE)
    assert refused.returncode == 1
    assert "FAILED at TLS: TLS handshake with 127.0.0.1 port" in refused.stdout
    assert "the peer's certificate is not trusted" in refused.stdout, refused.stdout


def test_service_tool_echoes_any_peer_over_tls(pki, tmp_path):
    """SE-10, TL-05 (issue 22 item 3): `echo HOST PORT --called TITLE --tls` reaches a peer that
    is in no table, DCMTK storescp +tls requiring a client certificate, with the box's
    certificate and CA bundle; without --tls, or trusting another CA, it fails at that step."""
    config = tmp_path / "tool.toml"
    files = {"certificate": str(pki.box.certificate), "key": str(pki.box.key), "ca_bundle": str(pki.ca.certificate)}
    config.write_text(tomlkit.dumps({"storage": {"data_dir": str(tmp_path / "data")}, "tls": files}))
    port = free_port()
    with storescp(port, "TLS_VIEWER", tmp_path, *dcmtk_tls(pki, pki.viewer)):
        peer = ("127.0.0.1", str(port), "--called", "TLS_VIEWER")
        done = service_tool(config, "echo", *peer, "--tls")
        assert done.returncode == 0, done.stdout + done.stderr
        assert re.search(r"  TLS        TLSv1\.[23] \S+, peer certificate CN=viewer in [\d.]+ ms", done.stdout)
        plain = service_tool(config, "echo", *peer)
        assert plain.returncode == 1 and "FAILED at association: " in plain.stdout, plain.stdout
        config.write_text(tomlkit.dumps({"storage": {"data_dir": str(tmp_path / "data")},
                                         "tls": {**files, "ca_bundle": str(pki.stranger.certificate)}}))
        refused = service_tool(config, "echo", *peer, "--tls")
        assert refused.returncode == 1 and "FAILED at TLS: TLS handshake with 127.0.0.1 port" in refused.stdout
        assert "the peer's certificate is not trusted" in refused.stdout, refused.stdout


def test_a_reload_takes_a_renewed_certificate(make_appliance, pki, tmp_path):
    """SE-08: the certificate files are read again at a reload."""
    files = tmp_path / "tls"
    files.mkdir()
    for name, source in (("box.crt", pki.box.certificate), ("box.key", pki.box.key)):
        shutil.copy(source, files / name)
    app = make_appliance(tls_overrides(pki, tls={"certificate": str(files / "box.crt"), "key": str(files / "box.key"),
                                                 "ca_bundle": str(pki.ca.certificate)}))

    def served_name() -> str:
        with socket.create_connection(("127.0.0.1", int(tls_port(app))), timeout=5) as raw, \
                client_context(pki, pki.modality).wrap_socket(raw) as tls:
            return dict(rdn[0] for rdn in tls.getpeercert()["subject"])["commonName"]

    assert served_name() == "archive"
    renewed = pki.ca.issue("archive-renewed")
    shutil.copy(renewed.certificate, files / "box.crt")
    shutil.copy(renewed.key, files / "box.key")
    app.reload()
    assert served_name() == "archive-renewed"


@pytest.mark.parametrize("case", ["expired", "not valid yet"])
def test_a_certificate_out_of_its_validity_keeps_the_tls_listener_off(make_appliance, pki, case):
    """SE-08: the TLS listener refuses to start with a clear error; the plain one serves."""
    name = f"archive-{case.replace(' ', '-')}"
    out_of_date = pki.ca.issue(name, days=-1) if case == "expired" else \
        pki.ca.issue(name, between=("20990101000000Z", "21000101000000Z"))
    app = make_appliance(tls_overrides(pki, tls={"certificate": str(out_of_date.certificate),
                                                 "key": str(out_of_date.key), "ca_bundle": str(pki.ca.certificate)}))
    why = r"expired on \d{4}-\d\d-\d\d" if case == "expired" else r"is not valid before 2099-01-01 00:00 UTC"
    app.wait_log(rf"ERROR appliance\.daemon: STORAGE-SCP: the TLS listener on port {tls_port(app)} is off: the "
                 rf"certificate \S+{name}\.crt \(CN={name}\) {why}")
    assert "TLS port" not in app.ready_message
    refused = dcmtk("echoscu", *dcmtk_tls(pki), "-aec", STORE, "127.0.0.1", tls_port(app))
    assert refused.returncode != 0 and "Connection refused" in refused.stderr, refused.stderr
    assert dcmtk("echoscu", "-aec", STORE, "127.0.0.1", str(app.storage_port)).returncode == 0


def test_a_tls_association_is_aborted_at_the_end_of_the_shutdown_drain(make_appliance, pki):
    """SE-07, FL-09: an idle TLS association blocked in a read ends when the drain does; over
    TLS the service closes the connection instead of writing an A-ABORT into the TLS stream
    from another thread."""
    app = make_appliance(tls_overrides(pki, timeouts={"shutdown_drain": 1}))
    with socket.create_connection(("127.0.0.1", int(tls_port(app))), timeout=10) as raw, \
            client_context(pki, pki.modality).wrap_socket(raw) as tls:
        tls.sendall(pdus.request("MODALITY", STORE))
        assert pdus.read_pdu(tls)[0] == 0x02  # A-ASSOCIATE-AC
        app.signal(signal.SIGTERM)
        started = time.monotonic()
        try:
            assert tls.recv(100) == b""
        except (ssl.SSLError, ConnectionError):
            pass
        assert time.monotonic() - started < 3
    assert app.proc.wait(10) == 0
    app.wait_log(r"STORAGE-SCP #\d+ MODALITY@127\.0\.0\.1:\d+: association aborted")


def test_a_pinned_subject_binds_a_calling_title_to_its_certificate(make_appliance, pki):
    """SE-09: remote_aes[].tls_subject: MODALITY must come over TLS with the modality's
    certificate; the viewer's certificate or plain TCP under that title get 1/1/3; titles not
    pinned are not concerned."""
    app = make_appliance(tls_overrides(pki, remote_aes=[
        {"ae_title": "MODALITY", "host": "127.0.0.1", "port": free_port(), "tls_subject": "CN=modality"}]))

    def echo(issued, title: str, port: str | None = None):
        options = dcmtk_tls(pki, issued) if issued else []
        return dcmtk("echoscu", *options, "-aet", title, "-aec", STORE, "127.0.0.1", port or tls_port(app))

    assert echo(pki.modality, "MODALITY").returncode == 0
    assert echo(pki.viewer, "VIEWER").returncode == 0
    assert echo(pki.viewer, "MODALITY").returncode != 0
    app.wait_log(r"MODALITY@127\.0\.0\.1:\d+: association rejected \(called EX_STORE_SCP\): calling AE title MODALITY "
                 r"must come over TLS with the certificate CN=modality \(remote_aes\[\]\.tls_subject\), it came with "
                 r"the certificate CN=viewer; A-ASSOCIATE-RJ result 1, source 1, reason 3")
    assert echo(None, "MODALITY", str(app.storage_port)).returncode != 0
    app.wait_log(r"must come over TLS with the certificate CN=modality \(remote_aes\[\]\.tls_subject\), it came over "
                 r"plain TCP; A-ASSOCIATE-RJ result 1, source 1, reason 3")


def test_a_pinned_subject_is_checked_on_the_appliances_own_associations(make_appliance, pki):
    """SE-09, SE-10: towards a remote AE with tls_subject, another certificate than the pinned
    one ends the connection after the handshake (service-tool echo shows it as the TLS step)."""
    app = make_appliance(tls_overrides(pki))
    port = int(tls_port(app))
    app.config["remote_aes"] = [
        {"ae_title": STORE, "host": "127.0.0.1", "port": port, "tls": True, "tls_subject": "CN=archive"},
        {"ae_title": "IMPOSTOR", "host": "127.0.0.1", "port": port, "tls": True, "tls_subject": "CN=pacs"}]
    app.write_config(app.config)
    assert service_tool(app.config_path, "echo", STORE).returncode == 0
    refused = service_tool(app.config_path, "echo", "IMPOSTOR")
    assert refused.returncode == 1
    assert (f"FAILED at TLS: TLS with 127.0.0.1 port {port} refused: the peer's certificate is CN=archive, not "
            "CN=pacs (remote_aes[].tls_subject)") in refused.stdout, refused.stdout


def test_an_idle_tls_association_gets_an_a_abort(make_appliance, pki):
    """SE-07, CF-15: the association's own thread aborts it after the idle timeout, and over
    TLS too the peer gets the A-ABORT (only an abort from another thread just closes)."""
    app = make_appliance(tls_overrides(pki, {"idle_timeout": 1}))
    with socket.create_connection(("127.0.0.1", int(tls_port(app))), timeout=10) as raw, \
            client_context(pki, pki.modality).wrap_socket(raw) as tls:
        tls.sendall(pdus.request("MODALITY", STORE))
        assert pdus.read_pdu(tls)[0] == 0x02  # A-ASSOCIATE-AC
        assert pdus.read_pdu(tls)[0] == 0x07  # A-ABORT, after the second of silence
    app.wait_log(r"MODALITY@127\.0\.0\.1:\d+: association aborted by the appliance \(A-ABORT\) after 1 s without data")
