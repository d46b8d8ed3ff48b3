"""Certificates for the TLS tests and benchmarks, made with the `openssl` command-line tool: a
hospital CA that signs requests or issues key and certificate at once (valid, expiring or
expired), self-signed RSA and EC certificates, and what `openssl x509` says of a certificate,
to compare with."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def openssl(*args: str, stdin: bytes | None = None) -> str:
    done = subprocess.run(["openssl", *args], input=stdin, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout.decode()


@dataclass(frozen=True)
class Issued:
    certificate: Path
    key: Path


class Authority:
    """A self-signed CA (RSA 2048, quick to make) in `directory`."""

    def __init__(self, directory: Path, name: str = "Hospital Root CA", days: int = 3650):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        slug = name.lower().replace(" ", "-")
        self.certificate, self.key = directory / f"{slug}.crt", directory / f"{slug}.key"
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key), "-out",
                str(self.certificate), "-days", str(days), "-subj", f"/O=Test Hospital/CN={name}",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def sign(self, request: Path, out: Path, days: int = 365) -> Path:
        """A certificate for the CSR `request`, with its extensions; `days` = -1: expired a day ago."""
        openssl("x509", "-req", "-in", str(request), "-CA", str(self.certificate), "-CAkey", str(self.key),
                "-CAcreateserial", "-copy_extensions", "copy", "-days", str(days), "-out", str(out))
        return out

    def sign_between(self, request: Path, out: Path, start: str, end: str) -> Path:
        """A certificate for the CSR `request` valid from `start` to `end` (YYYYMMDDHHMMSSZ), e.g.
        one not valid yet: `openssl x509` has no start date before OpenSSL 3.4, `openssl ca` has."""
        database = self.directory / "ca-database"
        database.mkdir(exist_ok=True)
        (database / "index.txt").touch()
        if not (database / "serial").exists():
            (database / "serial").write_text("1000\n")
        config = self.directory / "ca.cnf"
        config.write_text(f"[ca]\ndefault_ca = test\n[test]\ndatabase = {database}/index.txt\n"
                          f"new_certs_dir = {database}\nserial = {database}/serial\ndefault_md = sha256\n"
                          "policy = any\ncopy_extensions = copy\nunique_subject = no\n[any]\ncommonName = supplied\n")
        openssl("ca", "-batch", "-config", str(config), "-cert", str(self.certificate), "-keyfile", str(self.key),
                "-in", str(request), "-out", str(out), "-startdate", start, "-enddate", end)
        return out

    def issue(self, name: str, days: int = 365, san: str = "IP:127.0.0.1,DNS:localhost",
              between: tuple[str, str] | None = None) -> Issued:
        """An EC P-256 key and a certificate for CN=`name`, for both server and client use (a
        DICOM node is both); `days` = -1: expired a day ago; `between`: (start, end) instead."""
        key, request = self.directory / f"{name}.key", self.directory / f"{name}.csr"
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key),
                "-out", str(request), "-subj", f"/CN={name}", "-addext", f"subjectAltName={san}",
                "-addext", "extendedKeyUsage=serverAuth,clientAuth")
        out = self.directory / f"{name}.crt"
        return Issued(self.sign_between(request, out, *between) if between else self.sign(request, out, days), key)


def self_signed(directory: Path, name: str, key: str = "rsa:3072", days: int = 365, subject: str | None = None,
                extensions: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """(certificate, key) of a self-signed certificate; `key` as `openssl req -newkey` takes it
    ("rsa:3072", "ec" with P-256)."""
    directory.mkdir(parents=True, exist_ok=True)
    certificate, private = directory / f"{name}.crt", directory / f"{name}.key"
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if key == "ec" else ["-newkey", key]
    added = [arg for extension in extensions for arg in ("-addext", extension)]
    if days > 0:
        openssl("req", "-x509", *new_key, "-nodes", "-keyout", str(private), "-out", str(certificate), "-days",
                str(days), "-subj", subject or f"/CN={name}", *added)
    else:  # `req -x509` takes no -days below 1; `x509 -req -days -1` makes one that expired a day ago
        request = directory / f"{name}.csr"
        openssl("req", "-new", *new_key, "-nodes", "-keyout", str(private), "-out", str(request), "-subj",
                subject or f"/CN={name}", *added)
        openssl("x509", "-req", "-in", str(request), "-key", str(private), "-days", str(days), "-copy_extensions",
                "copy", "-out", str(certificate))
    return certificate, private


def request_for(key: Path, out: Path, cn: str) -> Path:
    """A CSR for an existing key, made directly with openssl (not with the service tool)."""
    openssl("req", "-new", "-key", str(key), "-subj", f"/CN={cn}", "-out", str(out))
    return out


def fingerprint(certificate: Path) -> str:
    """`openssl x509 -fingerprint -sha256`: "AB:CD:..."."""
    return openssl("x509", "-in", str(certificate), "-noout", "-fingerprint", "-sha256").strip().split("=", 1)[1]


def field(certificate: Path, *option: str) -> str:
    """One `openssl x509 -noout OPTION` line's value (after "name=")."""
    return openssl("x509", "-in", str(certificate), "-noout", *option).strip().split("=", 1)[1]
