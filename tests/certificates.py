"""A throw-away PKI for the TLS tests, made with the `openssl` command-line tool: a CA, and
certificates it (or another CA) signs, valid, expiring or expired."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@dataclass(frozen=True)
class Issued:
    certificate: Path
    key: Path


class Authority:
    """A self-signed CA in `directory` (ca.crt, ca.key) that issues EC P-256 certificates."""

    def __init__(self, directory: Path, name: str = "Test Hospital CA"):
        self.directory = directory = directory.resolve()
        directory.mkdir(parents=True, exist_ok=True)
        slug = name.lower().replace(" ", "-")
        self.certificate, self.key = directory / f"{slug}.crt", directory / f"{slug}.key"
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", str(self.key), "-out", str(self.certificate), "-subj", f"/CN={name}", "-days", "365",
                 cwd=directory)

    def issue(self, name: str, days: int = 365, san: str = "IP:127.0.0.1,DNS:localhost") -> Issued:
        """A certificate for CN=`name`, for both server and client use; `days` may be negative
        (expired yesterday: -1)."""
        key, request, certificate = (self.directory / f"{name}{suffix}" for suffix in (".key", ".csr", ".crt"))
        extensions = self.directory / f"{name}.ext"
        extensions.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\n")
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key),
                 "-out", str(request), "-subj", f"/CN={name}", cwd=self.directory)
        _openssl("x509", "-req", "-in", str(request), "-CA", str(self.certificate), "-CAkey", str(self.key),
                 "-CAcreateserial", "-out", str(certificate), "-days", str(days), "-extfile", str(extensions),
                 cwd=self.directory)
        return Issued(certificate, key)
