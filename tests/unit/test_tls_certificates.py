"""appliance.tls.certificates: the service's own DER reader against what `openssl x509` says of
the same certificates (RSA and EC), and the TLS problems `status` reports (SE-08, SE-09, SE-10)."""

from __future__ import annotations

import ipaddress
import re
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from appliance.config import load_dict
from appliance.tls import certificates
from appliance.tls.certificates import CertificateError
from tls_pki import Authority, field, fingerprint, openssl, request_for, self_signed


def openssl_time(certificate: Path, which: str) -> datetime:
    """notBefore/notAfter as openssl prints them with -dateopt iso_8601 ("2026-12-06 22:47:31Z")."""
    text = field(certificate, f"-{which}", "-dateopt", "iso_8601")
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%SZ").replace(tzinfo=timezone.utc)


def openssl_sans(certificate: Path) -> list[str]:
    """`-ext subjectAltName` in the reader's form: "IP Address:2001:DB8:0:..." -> "IP:2001:db8::1"."""
    text = openssl("x509", "-in", str(certificate), "-noout", "-ext", "subjectAltName")
    if "Subject Alternative Name" not in text:
        return []
    names = []
    for entry in text.splitlines()[1].strip().split(", "):
        kind, value = entry.split(":", 1)
        names.append(f"IP:{ipaddress.ip_address(value)}" if kind == "IP Address" else f"{kind}:{value}")
    return names


@pytest.mark.parametrize("key, described", [("rsa:3072", "RSA 3072 bits"), ("rsa:2048", "RSA 2048 bits"),
                                            ("ec", "EC P-256")])
def test_reader_agrees_with_openssl(tmp_path, key, described):
    """Subject and issuer (RFC 4514, escapes), validity, serial, SANs (DNS, IPv4, IPv6),
    extended key usage, CA flag, key type and the SHA-256 fingerprint."""
    certificate, _ = self_signed(
        tmp_path, "box", key=key, subject=r"/C=DE/O=Klinikum Nord, Radiologie/OU=PACS\+Archiv/CN=archive.example",
        extensions=("subjectAltName=DNS:archive.example,IP:10.0.4.20,IP:2001:db8::20",
                    "extendedKeyUsage=serverAuth,clientAuth", "basicConstraints=critical,CA:FALSE"))
    read = certificates.load_certificate(certificate)
    subject = field(certificate, "-subject", "-nameopt", "RFC2253")
    assert read.subject == subject == r"CN=archive.example,OU=PACS\+Archiv,O=Klinikum Nord\, Radiologie,C=DE"
    assert read.issuer == field(certificate, "-issuer", "-nameopt", "RFC2253")
    assert read.not_before == openssl_time(certificate, "startdate")
    assert read.not_after == openssl_time(certificate, "enddate")
    assert read.serial == field(certificate, "-serial")
    assert list(read.sans) == openssl_sans(certificate) == ["DNS:archive.example", "IP:10.0.4.20",
                                                            "IP:2001:db8::20"]
    assert read.extended_key_usage == ("serverAuth", "clientAuth")
    assert read.is_ca is False
    assert read.public_key == described
    text = openssl("x509", "-in", str(certificate), "-noout", "-text")
    openssl_says = f"Public-Key: ({described.split()[1]} bit)" if key.startswith("rsa") else "NIST CURVE: P-256"
    assert openssl_says in text
    assert read.fingerprint == fingerprint(certificate)


def test_ca_flag_generalized_time_and_a_chain_in_order(tmp_path):
    """A CA certificate valid beyond 2049 (its notAfter is a GeneralizedTime, RFC 5280
    4.1.2.5) and a chain file: the box's certificate first, then its CA."""
    authority = Authority(tmp_path / "ca", days=365 * 30)
    ca = certificates.load_certificate(authority.certificate)
    assert ca.is_ca and ca.self_signed and ca.not_after.year >= 2050
    assert ca.not_after == openssl_time(authority.certificate, "enddate")
    assert ca.sans == () and ca.extended_key_usage == ()
    _, key = self_signed(tmp_path, "leaf", key="ec")
    leaf = authority.sign(request_for(key, tmp_path / "leaf.csr", "leaf.example"), tmp_path / "signed.crt", days=10)
    chain = tmp_path / "chain.pem"
    chain.write_text("some text before\n" + leaf.read_text() + authority.certificate.read_text())
    first, second = certificates.load_certificates(chain)
    assert first.subject == "CN=leaf.example" and first.issuer == ca.subject == second.subject
    assert certificates.load_certificate(chain) == first
    assert 9 <= first.days_left() <= 10 and not first.expired()


def test_expired_and_not_a_certificate(tmp_path):
    old, _ = self_signed(tmp_path, "old", key="ec", days=-1)  # notAfter a day ago
    read = certificates.load_certificate(old)
    assert read.expired() and read.days_left() < 0
    assert read.not_after == openssl_time(old, "enddate")
    with pytest.raises(CertificateError, match="no PEM certificate"):
        certificates.read_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    der = certificates.pem_blocks(old.read_bytes())[0]
    assert certificates.parse(der) == read
    with pytest.raises(CertificateError, match="truncated"):
        certificates.parse(der[:200])
    with pytest.raises(CertificateError):
        certificates.parse(b"\x30\x03\x02\x01\x05")  # a SEQUENCE holding one INTEGER
    assert certificates.to_pem(der) in old.read_text()


# --- problems ----------------------------------------------------------------------------------

def config(directory: Path, **sections) -> certificates.Config:
    return load_dict(sections, base_dir=str(directory))


def tls_files(directory: Path, days: int = 365) -> Path:
    """tls/appliance.crt (signed by a CA, valid for `days`), tls/appliance.key, tls/ca.pem."""
    tls = directory / "tls"
    authority = Authority(directory / "ca")
    _, key = self_signed(directory / "made", "box", key="ec")
    tls.mkdir(parents=True)
    shutil.copy(key, tls / "appliance.key")
    authority.sign(request_for(key, directory / "box.csr", "archive.example"), tls / "appliance.crt", days=days)
    shutil.copy(authority.certificate, tls / "ca.pem")
    return tls


def levels(found) -> list[tuple[str, str]]:
    return [(p.level, p.message) for p in found]


def test_no_problems_without_tls_in_use_or_with_good_files(tmp_path):
    assert certificates.problems(config(tmp_path)) == []  # nothing there, but nothing uses TLS
    tls_files(tmp_path)
    used = config(tmp_path, storage_scp={"tls_port": 2762}, remote_aes=[
        {"ae_title": "PACS", "host": "10.0.0.1", "port": 2762, "tls": True}])
    assert certificates.problems(used) == []
    report = certificates.status_report(used)
    assert report["in_use"] and report["certificate"]["subject"] == "CN=archive.example"


def test_expiry_within_30_days_is_a_warning_and_expired_an_error(tmp_path):
    tls = tls_files(tmp_path, days=20)
    used = config(tmp_path, storage_scp={"tls_port": 2762})
    [(level, message)] = levels(certificates.problems(used))
    assert level == "WARNING" and "CN=archive.example expires on" in message and "in 19 days" in message
    # Seen 29 days from now, it has expired: the TLS listeners are off.
    later = datetime.now(timezone.utc) + timedelta(days=29)
    [(level, message)] = levels(certificates.problems(used, now=later))
    assert level == "ERROR" and "expired on" in message
    assert "the TLS listeners are off (STORAGE-SCP port 2762)" in message
    # 31 days of validity are no warning.
    authority = Authority(tmp_path / "ca31")
    authority.sign(tmp_path / "box.csr", tls / "appliance.crt", days=31)
    shutil.copy(authority.certificate, tls / "ca.pem")
    assert certificates.problems(used) == []


def test_missing_and_mismatching_files(tmp_path):
    tls = tls_files(tmp_path)
    listening = config(tmp_path, query_retrieve_scp={"tls_port": 2763})
    (tls / "ca.pem").unlink()
    [(level, message)] = levels(certificates.problems(listening))
    assert level == "WARNING" and "clients are not verified by QUERY-RETRIEVE-SCP" in message
    assert certificates.problems(config(tmp_path, query_retrieve_scp={"tls_port": 2763, "verify_clients": False})) == []
    outgoing = config(tmp_path, remote_aes=[{"ae_title": "PACS", "host": "10.0.0.1", "port": 2762, "tls": True}])
    [(level, message)] = levels(certificates.problems(outgoing))
    assert level == "ERROR" and "no TLS connection to remote AE PACS can be opened" in message
    _, other = self_signed(tmp_path / "other", "other", key="ec")
    shutil.copy(other, tls / "appliance.key")
    assert [(lvl, "the private key is not the certificate's" in m) for lvl, m in levels(
        certificates.problems(listening))][0] == ("ERROR", True)
    (tls / "appliance.key").unlink()
    assert any(lvl == "ERROR" and "no private key at" in m for lvl, m in levels(certificates.problems(listening)))
    (tls / "appliance.crt").write_text("not a certificate\n")
    assert any(lvl == "ERROR" and "cannot read the certificate" in m and "the TLS listeners are off" in m
               for lvl, m in levels(certificates.problems(listening)))
    (tls / "appliance.crt").unlink()
    [first, *_] = levels(certificates.problems(listening))
    assert first[0] == "ERROR" and re.search(r"no certificate at .*appliance\.crt \(tls\.certificate\): the TLS "
                                             r"listeners are off \(QUERY-RETRIEVE-SCP port 2763\)", first[1])


def test_pinned_subjects_compare_as_names():
    """SE-09: remote_aes[].tls_subject against a certificate's RFC 4514 subject: spaces after
    the separators do not count; values, order and escaped commas do."""
    same = certificates.same_subject
    assert same("CN=ct1.example,O=Hospital", "CN=ct1.example, O=Hospital")
    assert same(r"CN=Doe\, Jane,O=H", r"CN=Doe\, Jane, O=H")
    assert not same("CN=ct1.example,O=Hospital", "CN=ct2.example,O=Hospital")
    assert not same("CN=ct1.example,O=Hospital", "O=Hospital,CN=ct1.example")
    assert not same(r"CN=Doe\, Jane", "CN=Doe,CN=Jane")
