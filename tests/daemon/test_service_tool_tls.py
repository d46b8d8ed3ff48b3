"""`service-tool tls key|csr|import-cert|import-ca|show`, the TLS lines of `status` with the real
daemon, and `ae set --tls-port` / `remote add --tls` (SE-07..SE-10). Keys and requests come
from the tool itself; a throw-away CA made with `openssl` signs them."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from appliance.tls import certificates
from helpers import free_port, service_tool
from service_tool import tls_cmd
from service_tool.cli import main
from tls_pki import Authority, field, fingerprint, openssl, self_signed

CN = "archive.hospital.example"


@pytest.fixture
def box(tmp_path) -> Path:
    """An empty configuration file (the [tls] files default to tls/ beside it)."""
    path = tmp_path / "etc" / "appliance.toml"
    path.parent.mkdir()
    path.write_text("")
    return path


def tls(config: Path, *args: str) -> subprocess.CompletedProcess:
    return service_tool(config, "tls", *args)


def tls_dir(config: Path) -> Path:
    return config.parent / "tls"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def key_and_request(config: Path, *csr_args: str) -> Path:
    """`tls key`, then `tls csr --output`: the request's path."""
    assert tls(config, "key").returncode == 0
    request = config.parent / "box.csr"
    made = tls(config, "csr", "--cn", CN, *csr_args, "--output", str(request))
    assert made.returncode == 0, made.stderr
    return request


def enddate(certificate: Path) -> datetime:
    text = field(certificate, "-enddate", "-dateopt", "iso_8601")
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%SZ").replace(tzinfo=timezone.utc)


# --- key ---------------------------------------------------------------------------------------

def test_key_is_rsa_3072_mode_0600_and_not_replaced_without_force(box):
    made = tls(box, "key")
    key = tls_dir(box) / "appliance.key"
    assert made.returncode == 0, made.stderr
    assert f"new RSA 3072-bit private key written to {key} (mode 0600" in made.stdout
    assert mode(key) == 0o600
    assert "Private-Key: (3072 bit" in openssl("pkey", "-in", str(key), "-noout", "-text")
    first = key.read_bytes()
    again = tls(box, "key")
    assert again.returncode == 1
    assert again.stderr.startswith(f"refused: a key exists at {key} (tls.key); --force replaces it")
    assert key.read_bytes() == first
    forced = tls(box, "key", "--force")
    assert forced.returncode == 0, forced.stderr
    assert key.read_bytes() != first and mode(key) == 0o600
    assert sorted(p.name for p in tls_dir(box).iterdir()) == ["appliance.key"]  # no temporary file left


def test_key_belongs_to_the_service_user_when_made_by_root(box, monkeypatch, capsys):
    """On the box root runs the tool and the service (user `appliance`) must read the key;
    here `nobody` stands in for the service's user. The suite runs as root (tests/run.sh)."""
    assert os.geteuid() == 0, "this test needs root, as tests/run.sh runs the suite"
    key = tls_dir(box) / "appliance.key"
    monkeypatch.setattr(tls_cmd, "SERVICE_USER", "nobody")
    assert main(["--config", str(box), "tls", "key"]) == 0
    assert (key.stat().st_uid, key.stat().st_gid, mode(key)) == (65534, 65534, 0o600)
    assert "owner nobody" in capsys.readouterr().out
    monkeypatch.setattr(tls_cmd, "SERVICE_USER", "no-such-user")  # not on this machine: root keeps it
    assert main(["--config", str(box), "tls", "key", "--force"]) == 0
    assert (key.stat().st_uid, mode(key)) == (0, 0o600)


# --- CSR ---------------------------------------------------------------------------------------

def test_csr_has_the_cn_sans_and_server_and_client_key_usage(box, tmp_path):
    assert tls(box, "key").returncode == 0
    made = tls(box, "csr", "--cn", CN, "--san", f"DNS:{CN}", "--san", "IP:10.0.4.20", "--san", "ip:2001:db8::20")
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("-----BEGIN CERTIFICATE REQUEST-----")
    assert "tls import-cert" in made.stderr  # what to do next, beside the request on stdout
    request = tmp_path / "box.csr"
    request.write_text(made.stdout)
    text = openssl("req", "-in", str(request), "-noout", "-text", "-verify")  # the signature checks too
    assert f"Subject: CN = {CN}" in text
    assert f"DNS:{CN}, IP Address:10.0.4.20, IP Address:2001:DB8:0:0:0:0:0:20" in text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    assert "Public-Key: (3072 bit)" in text
    # It is the key's request.
    key = tls_dir(box) / "appliance.key"
    assert openssl("req", "-in", str(request), "-noout", "-pubkey") == openssl("pkey", "-in", str(key), "-pubout")


def test_csr_without_san_takes_the_cn_and_escapes_it(box, tmp_path):
    assert tls(box, "key").returncode == 0
    out = tmp_path / "ip.csr"
    made = tls(box, "csr", "--cn", "10.0.4.20", "--output", str(out))
    assert made.returncode == 0, made.stderr
    assert f"certificate signing request written to {out}: CN=10.0.4.20, SAN IP:10.0.4.20" in made.stdout
    assert "IP Address:10.0.4.20" in openssl("req", "-in", str(out), "-noout", "-text")
    odd = tls(box, "csr", "--cn", r"Archiv/Nord+1\2")  # characters openssl's -subj syntax uses
    assert odd.returncode == 0, odd.stderr
    (tmp_path / "odd.csr").write_text(odd.stdout)
    subject = openssl("req", "-in", str(tmp_path / "odd.csr"), "-noout", "-subject", "-nameopt", "RFC2253")
    assert subject.strip() == r"subject=CN=Archiv/Nord\+1\\2"
    assert "Subject Alternative Name" not in openssl("req", "-in", str(tmp_path / "odd.csr"), "-noout", "-text")


def test_csr_refusals(box):
    no_key = tls(box, "csr", "--cn", CN)
    assert no_key.returncode == 1
    assert no_key.stderr.startswith(f"no key at {tls_dir(box) / 'appliance.key'} (tls.key)")
    bad = tls(box, "csr", "--cn", CN, "--san", "MAIL:x@y")
    assert bad.returncode == 2 and "is not DNS:NAME or IP:ADDRESS" in bad.stderr


# --- import-cert -------------------------------------------------------------------------------

def test_import_cert_refuses_naming_the_problem(box, tmp_path):
    request = key_and_request(box)
    authority = Authority(tmp_path / "ca")
    target = tls_dir(box) / "appliance.crt"

    def refused(path: Path, why: str) -> None:
        result = tls(box, "import-cert", str(path))
        assert result.returncode == 1, result.stdout
        assert result.stderr.startswith("refused: ") and why in result.stderr, result.stderr
        assert not target.exists()

    other, _ = self_signed(tmp_path / "other", "other", key="ec")
    refused(other, f"does not match the key {tls_dir(box) / 'appliance.key'} (tls.key): the private key is not "
                   "the certificate's")
    expired = authority.sign(request, tmp_path / "expired.crt", days=-1)
    refused(expired, f"the certificate CN={CN} in {expired} expired on ")
    good = authority.sign(request, tmp_path / "good.crt")
    der = tmp_path / "good.der"
    openssl("x509", "-in", str(good), "-outform", "der", "-out", str(der))
    refused(der, f"{der} is not a PEM certificate: no \"-----BEGIN CERTIFICATE-----\" block in it (it is DER: "
                 "convert it with openssl x509 -inform der")
    (tmp_path / "notes.txt").write_text("please find the certificate attached\n")
    refused(tmp_path / "notes.txt", "is not a PEM certificate")
    refused(tmp_path / "missing.pem", f"cannot read {tmp_path / 'missing.pem'}: No such file or directory")
    elsewhere = tmp_path / "other-box" / "appliance.toml"
    elsewhere.parent.mkdir()
    elsewhere.write_text("")
    no_key = tls(elsewhere, "import-cert", str(good))
    assert no_key.returncode == 1 and "refused: no private key at" in no_key.stderr


def test_import_cert_installs_it_world_readable_and_says_reload(box, tmp_path):
    request = key_and_request(box)
    authority = Authority(tmp_path / "ca")
    target = tls_dir(box) / "appliance.crt"
    good = authority.sign(request, tmp_path / "good.crt")
    done = tls(box, "import-cert", str(good))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:3] == [f"certificate imported to {target}", f"  subject: CN={CN}",
                                            "  issuer:  CN=Hospital Root CA,O=Test Hospital"]
    assert f"  valid until {enddate(good):%Y-%m-%d %H:%M} UTC" in done.stdout
    assert done.stdout.rstrip().endswith("reload the service to use it: systemctl reload appliance")
    assert mode(target) == 0o644
    assert certificates.pem_blocks(target.read_bytes()) == certificates.pem_blocks(good.read_bytes())
    # A refused one leaves the installed certificate as it was.
    before = target.read_bytes()
    assert tls(box, "import-cert", str(authority.sign(request, tmp_path / "old.crt", days=-1))).returncode == 1
    assert target.read_bytes() == before
    # A chain (the certificate, then its CA) and a short validity.
    chain = tmp_path / "chain.pem"
    chain.write_text(authority.sign(request, tmp_path / "short.crt", days=10).read_text()
                     + authority.certificate.read_text())
    done = tls(box, "import-cert", str(chain))
    assert done.returncode == 0, done.stderr
    assert "with 1 CA certificate(s) after it" in done.stdout
    assert "warning: it expires within 30 days" in done.stdout
    assert len(certificates.pem_blocks(target.read_bytes())) == 2


# --- import-ca and show ------------------------------------------------------------------------

def test_import_ca_and_show(box, tmp_path):
    request = key_and_request(box, "--san", f"DNS:{CN}", "--san", "IP:10.0.4.20")
    authority, second = Authority(tmp_path / "ca"), Authority(tmp_path / "ca2", name="Second CA")
    good = authority.sign(request, tmp_path / "good.crt")
    assert tls(box, "import-cert", str(good)).returncode == 0
    bundle = tls_dir(box) / "ca.pem"
    done = tls(box, "import-ca", str(authority.certificate))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"CA bundle {bundle} now holds 1 certificate(s):")
    assert mode(bundle) == 0o644
    both = tmp_path / "both.pem"
    both.write_text(second.certificate.read_text() + authority.certificate.read_text())
    done = tls(box, "import-ca", "--append", str(both))
    assert done.returncode == 0 and "now holds 2 certificate(s)" in done.stdout  # the known one not twice
    refused = tls(box, "import-ca", str(request))  # a request, not a certificate
    assert refused.returncode == 1 and "is not a PEM CA certificate" in refused.stderr
    assert len(certificates.pem_blocks(bundle.read_bytes())) == 2

    shown = tls(box, "show")
    assert shown.returncode == 0, shown.stderr
    installed = tls_dir(box) / "appliance.crt"
    lines = shown.stdout.splitlines()
    assert lines[:4] == [f"certificate: {installed}", f"  subject:      CN={CN}",
                         f"  SANs:         DNS:{CN}, IP:10.0.4.20",
                         "  issuer:       CN=Hospital Root CA,O=Test Hospital"]
    assert re.fullmatch(rf"  valid:        \S+ \S+ UTC to {enddate(installed):%Y-%m-%d %H:%M} UTC \(36[45] days left\)",
                        lines[4])
    assert f"  SHA-256 fingerprint: {fingerprint(installed)}" in lines
    assert f"key: {tls_dir(box) / 'appliance.key'} (mode 0600, owner root), matches the certificate" in lines
    assert f"CA bundle: {bundle}, 2 certificate(s)" in lines
    for ca in (authority, second):
        assert any(line.startswith(f"  {certificates.load_certificate(ca.certificate).subject}, valid until")
                   and line.endswith(f"SHA-256 {fingerprint(ca.certificate)}") for line in lines)
    assert lines[-1].startswith("used by: nothing")

    report = json.loads(tls(box, "show", "--json").stdout)
    assert report["certificate"]["subject"] == f"CN={CN}"
    assert report["certificate"]["sans"] == [f"DNS:{CN}", "IP:10.0.4.20"]
    assert report["certificate"]["not_after"] == f"{enddate(installed):%Y-%m-%dT%H:%M:%SZ}"
    assert report["certificate"]["fingerprint_sha256"] == fingerprint(installed)
    assert report["certificate"]["extended_key_usage"] == ["serverAuth", "clientAuth"]
    assert report["key"]["matches_certificate"] is True
    assert [c["fingerprint_sha256"] for c in report["ca_bundle"]["certificates"]] == [
        fingerprint(authority.certificate), fingerprint(second.certificate)]  # appended after the known one
    assert report["problems"] == []


# --- status with the running service -----------------------------------------------------------

def test_status_warns_of_an_expiring_certificate_and_errs_on_an_expired_one(make_appliance, tmp_path):
    """SE-08: within 30 days of its end the certificate is a WARNING line; once expired, an
    ERROR saying the TLS listeners are off. The service reads the files at each status."""
    tls_port = free_port()
    app = make_appliance({"storage_scp": {"tls_port": tls_port}}, start=False)
    request = key_and_request(app.config_path)
    authority = Authority(tmp_path / "ca")
    expiring = authority.sign(request, tmp_path / "20.crt", days=20)
    assert tls(app.config_path, "import-cert", str(expiring)).returncode == 0
    assert tls(app.config_path, "import-ca", str(authority.certificate)).returncode == 0
    app.start()

    result = service_tool(app.config_path, "status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    [problem] = report["tls"]["problems"]
    assert problem["level"] == "WARNING" and f"the certificate CN={CN} expires on " in problem["message"]
    assert report["tls"]["certificate"]["subject"] == f"CN={CN}" and report["tls"]["certificate"]["days_left"] == 19
    assert {(l["ae"], l["port"], l["tls"]) for l in report["listeners"]} == {
        ("STORAGE-SCP", app.storage_port, False), ("STORAGE-SCP", tls_port, True),
        ("QUERY-RETRIEVE-SCP", app.qr_port, False)}
    text = service_tool(app.config_path, "status").stdout.splitlines()
    assert any(f"STORAGE-SCP EX_STORE_SCP on TLS port {tls_port}" in line for line in text)
    assert any(re.fullmatch(rf"TLS certificate: CN={CN}, valid until \S+ \(19 days left\)", line) for line in text)
    assert any(line.startswith(f"WARNING: the certificate CN={CN} expires on ") and "in 19 days" in line
               for line in text)
    assert not any(line.startswith("ERROR: ") for line in text)

    # Expired since yesterday, put in place by hand (import-cert would refuse it).
    authority.sign(request, tls_dir(app.config_path) / "appliance.crt", days=-1)
    result = service_tool(app.config_path, "status")
    assert result.returncode == 0
    expired = [line for line in result.stdout.splitlines() if line.startswith("ERROR: ")]
    assert len(expired) == 1 and f"the certificate CN={CN} expired on " in expired[0]
    assert expired[0].endswith(f"the TLS listeners are off (STORAGE-SCP port {tls_port}); renew it "
                               "(service-tool tls csr, tls import-cert)")
    assert f"TLS certificate: CN={CN}, valid until" in result.stdout and "(EXPIRED)" in result.stdout
    assert not any(line.startswith("WARNING: ") for line in result.stdout.splitlines())

    # With the service stopped the tool checks the files itself.
    assert app.stop() == 0
    stopped = service_tool(app.config_path, "status")
    assert stopped.returncode == 3
    assert any(line.startswith("ERROR: ") and "expired on" in line for line in stopped.stdout.splitlines())


# --- ae set --tls-port, remote --tls ----------------------------------------------------------

def test_tls_port_and_remote_tls_are_set_with_the_tool(make_appliance, tmp_path):
    """SE-07, SE-10: `ae set --tls-port` has the running service listen for TLS at once;
    `remote add --tls on` flags a remote AE."""
    app = make_appliance(start=False)
    request = key_and_request(app.config_path)
    authority = Authority(tmp_path / "ca")
    assert tls(app.config_path, "import-cert", str(authority.sign(request, tmp_path / "box.crt"))).returncode == 0
    app.start()
    tls_port = free_port()
    done = service_tool(app.config_path, "ae", "set", "storage-scp", "--tls-port", str(tls_port),
                        "--verify-clients", "off")
    assert done.returncode == 0, done.stderr
    assert f"STORAGE-SCP: tls port {tls_port}, verify clients false; saved to" in done.stdout
    assert "the service reloaded the configuration" in done.stdout
    report = json.loads(service_tool(app.config_path, "status", "--json").stdout)
    assert ("STORAGE-SCP", tls_port, True) in {(l["ae"], l["port"], l["tls"]) for l in report["listeners"]}
    assert report["tls"]["problems"] == []  # verify_clients off: no CA bundle needed
    assert f"port {app.storage_port}, TLS port {tls_port}" in service_tool(app.config_path, "ae", "show").stdout
    plain = service_tool(app.config_path, "echo", "127.0.0.1", str(tls_port), "--called", "EX_STORE_SCP")
    assert plain.returncode == 1 and "if this is a TLS port, echo it with TLS" in plain.stdout + plain.stderr
    refused = service_tool(app.config_path, "ae", "set", "storage-scu", "--tls-port", "2762")
    assert refused.returncode == 2 and "never listens" in refused.stderr
    added = service_tool(app.config_path, "remote", "add", "PACS", "--host", "127.0.0.1", "--port", "2762",
                         "--tls", "on", "--tls-subject", "CN=pacs.hospital.example")  # SE-09: pinned
    assert added.returncode == 0, added.stderr
    [listed] = json.loads(service_tool(app.config_path, "remote", "list", "--json").stdout)
    assert (listed["tls"], listed["tls_subject"]) == (True, "CN=pacs.hospital.example")
    assert "(TLS, certificate CN=pacs.hospital.example)" in service_tool(app.config_path, "remote", "list").stdout
    assert service_tool(app.config_path, "remote", "set", "PACS", "--tls", "off", "--tls-subject", "").returncode == 0
    assert "(TLS" not in service_tool(app.config_path, "remote", "list").stdout


def test_help():
    result = service_tool(Path("/nonexistent.toml"), "tls", "--help")
    assert result.returncode == 0
    for command in ("key", "csr", "import-cert", "import-ca", "show"):
        assert command in result.stdout
