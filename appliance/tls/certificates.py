"""The box's TLS files as `status` and `service-tool tls` see them (SE-08, SE-09, SE-10).

The running service spawns no process, and the project has no crypto library but the standard
`ssl` module, which cannot parse a certificate from a file. So this module reads X.509
certificates itself: a small DER reader (ITU-T X.690) for the fields an installer checks,
subject, issuer, subject alternative names, validity, extended key usage, CA flag and public
key type, plus the SHA-256 fingerprint of the DER bytes. It verifies no signature: the TLS
handshake does that (`appliance.tls.contexts`).

`problems(config)` gives what is wrong with the configured files for the TLS in use: a missing
or unreadable certificate or key, a key that is not the certificate's, a certificate that has
expired (the TLS listeners stay off, ERROR) or expires within `EXPIRY_WARNING_DAYS` (WARNING),
and a missing CA bundle (clients are not verified; no outgoing TLS association can be opened).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
import ssl
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from appliance.config import tls_path
from appliance.config.model import Config

EXPIRY_WARNING_DAYS = 30  # SE-08: a certificate expiring sooner is a WARNING in `status`

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.*?)-----END CERTIFICATE-----", re.DOTALL)

# Attribute types as RFC 4514 (and `openssl -nameopt RFC2253`) name them; others print as OIDs.
_ATTRIBUTES = {
    "2.5.4.3": "CN", "2.5.4.4": "SN", "2.5.4.5": "serialNumber", "2.5.4.6": "C", "2.5.4.7": "L", "2.5.4.8": "ST",
    "2.5.4.9": "street", "2.5.4.10": "O", "2.5.4.11": "OU", "2.5.4.12": "title", "2.5.4.42": "GN",
    "2.5.4.46": "dnQualifier", "2.5.4.65": "pseudonym", "0.9.2342.19200300.100.1.1": "UID",
    "0.9.2342.19200300.100.1.25": "DC", "1.2.840.113549.1.9.1": "emailAddress",
}
_KEY_PURPOSES = {"1.3.6.1.5.5.7.3.1": "serverAuth", "1.3.6.1.5.5.7.3.2": "clientAuth",
                 "1.3.6.1.5.5.7.3.3": "codeSigning", "1.3.6.1.5.5.7.3.4": "emailProtection",
                 "1.3.6.1.5.5.7.3.8": "timeStamping", "1.3.6.1.5.5.7.3.9": "OCSPSigning",
                 "2.5.29.37.0": "anyExtendedKeyUsage"}
_CURVES = {"1.2.840.10045.3.1.7": "P-256", "1.3.132.0.34": "P-384", "1.3.132.0.35": "P-521"}
_RSA, _EC, _ED25519, _ED448 = "1.2.840.113549.1.1.1", "1.2.840.10045.2.1", "1.3.101.112", "1.3.101.113"
_SAN, _BASIC_CONSTRAINTS, _EXTENDED_KEY_USAGE = "2.5.29.17", "2.5.29.19", "2.5.29.37"

# Universal tags (X.690 8.1.2).
_BOOLEAN, _INTEGER, _BIT_STRING, _OCTET_STRING, _NULL, _OID = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
_SEQUENCE, _SET, _UTC_TIME, _GENERALIZED_TIME = 0x30, 0x31, 0x17, 0x18
_STRINGS = {0x0C: "utf-8", 0x12: "ascii", 0x13: "ascii", 0x14: "latin-1", 0x16: "ascii", 0x1A: "ascii",
            0x1C: "utf-32-be", 0x1E: "utf-16-be"}


class CertificateError(ValueError):
    """Not a certificate this reader understands; the message says what is wrong."""


@dataclass(frozen=True)
class Certificate:
    """What an installer checks of an X.509 certificate."""

    subject: str  # RFC 4514: most specific first, "CN=archive.example,O=Hospital,C=DE"
    issuer: str
    serial: str  # hexadecimal, as `openssl x509 -serial` prints it
    not_before: datetime  # UTC (aware)
    not_after: datetime
    sans: tuple[str, ...]  # "DNS:name", "IP:10.0.4.20", "email:...", "URI:..."
    extended_key_usage: tuple[str, ...]  # "serverAuth", "clientAuth", or dotted OIDs; () = no restriction
    is_ca: bool  # basicConstraints cA
    public_key: str  # "RSA 3072 bits", "EC P-256", "Ed25519"
    fingerprint: str  # SHA-256 of the DER bytes, "AB:CD:...", as `openssl x509 -fingerprint -sha256`

    @property
    def self_signed(self) -> bool:
        return self.subject == self.issuer

    def seconds_left(self, now: datetime | None = None) -> float:
        return (self.not_after - (now or datetime.now(timezone.utc))).total_seconds()

    def days_left(self, now: datetime | None = None) -> int:
        """Whole days until notAfter (negative once expired)."""
        return int(self.seconds_left(now) // 86400)

    def expired(self, now: datetime | None = None) -> bool:
        return self.seconds_left(now) < 0

    def not_yet_valid(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(timezone.utc)) < self.not_before

    def to_dict(self, now: datetime | None = None) -> dict:
        """For JSON (status, `tls show --json`): times in ISO 8601 UTC, days left added."""
        return {"subject": self.subject, "issuer": self.issuer, "serial": self.serial,
                "not_before": _iso(self.not_before), "not_after": _iso(self.not_after),
                "days_left": self.days_left(now), "sans": list(self.sans),
                "extended_key_usage": list(self.extended_key_usage), "is_ca": self.is_ca,
                "public_key": self.public_key, "fingerprint_sha256": self.fingerprint}


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- PEM and DER -----------------------------------------------------------------------------

def same_subject(a: str, b: str) -> bool:
    """Two RFC 4514 subjects are the same name, spaces after the separators aside (a subject
    pinned in the configuration against one read from a certificate, SE-09)."""
    def key(text: str) -> list[str]:
        return [part.strip() for part in re.split(r"(?<!\\)[,+]", text.strip())]
    return key(a) == key(b)


def pem_blocks(data: bytes | str) -> list[bytes]:
    """The DER bytes of every "CERTIFICATE" PEM block in `data`, in order (text around them,
    such as `openssl x509 -text` output, is ignored)."""
    if isinstance(data, str):
        data = data.encode("utf-8", "replace")
    blocks = []
    for match in _PEM.finditer(data):
        try:
            blocks.append(base64.b64decode(b"".join(match.group(1).split()), validate=True))
        except (binascii.Error, ValueError) as exc:
            raise CertificateError(f"a PEM certificate block is not valid base64 ({exc})") from None
    return blocks


def to_pem(der: bytes) -> str:
    text = base64.b64encode(der).decode("ascii")
    lines = [text[i:i + 64] for i in range(0, len(text), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the element at `pos` (DER: definite lengths)."""
    if pos + 2 > end:
        raise CertificateError("truncated DER element")
    tag, length = data[pos], data[pos + 1]
    if tag & 0x1F == 0x1F:
        raise CertificateError("unsupported DER tag number")
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > end:
            raise CertificateError("invalid DER length")
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    if pos + length > end:
        raise CertificateError("truncated DER element")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out, pos = [], start
    while pos < end:
        element = _tlv(data, pos, end)
        out.append(element)
        pos = element[2]
    return out


def _expect(element: tuple[int, int, int], tag: int, what: str) -> tuple[int, int, int]:
    if element[0] != tag:
        raise CertificateError(f"{what}: expected tag 0x{tag:02X}, found 0x{element[0]:02X}")
    return element


def _oid(body: bytes) -> str:
    if not body:
        raise CertificateError("empty OBJECT IDENTIFIER")
    arcs, value = [], 0
    for byte in body:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(map(str, [first, arcs[0] - 40 * first, *arcs[1:]]))


def _time(tag: int, body: bytes) -> datetime:
    text = body.decode("ascii", "replace")
    try:
        if tag == _UTC_TIME:  # YYMMDDHHMMSSZ; RFC 5280 4.1.2.5.1: 50..99 are 19xx
            moment = datetime.strptime(text, "%y%m%d%H%M%SZ")
            year = moment.year % 100
            moment = moment.replace(year=(1900 if year >= 50 else 2000) + year)
        elif tag == _GENERALIZED_TIME:  # YYYYMMDDHHMMSS[.fff]Z
            moment = datetime.strptime(re.sub(r"\.\d+Z$", "Z", text), "%Y%m%d%H%M%SZ")
        else:
            raise CertificateError(f"validity: unexpected tag 0x{tag:02X}")
    except ValueError:
        raise CertificateError(f"validity: {text!r} is not a UTC time") from None
    return moment.replace(tzinfo=timezone.utc)


def _escape(value: str) -> str:
    """RFC 4514 2.4: a value's special characters escaped."""
    out = re.sub(r'([,+"\\<>;])', r"\\\1", value).replace("\0", "\\00")
    if out.startswith(("#", " ")):
        out = "\\" + out
    if out.endswith(" ") and not out.endswith("\\ "):
        out = out[:-1] + "\\ "
    return out


def _name(data: bytes, start: int, end: int) -> str:
    """A Name as RFC 4514 writes it: the RDNs in reverse order, multi-valued ones joined by "+"."""
    rdns = []
    for rdn in _children(data, start, end):
        _expect(rdn, _SET, "name")
        parts = []
        for attribute in _children(data, rdn[1], rdn[2]):
            oid_element, value = _children(data, *_expect(attribute, _SEQUENCE, "name attribute")[1:])[:2]
            oid = _oid(data[oid_element[1]:oid_element[2]])
            tag, body = value[0], data[value[1]:value[2]]
            if oid in _ATTRIBUTES and tag in _STRINGS:
                parts.append(f"{_ATTRIBUTES[oid]}={_escape(body.decode(_STRINGS[tag], 'replace'))}")
            else:  # RFC 4514 2.4: an unknown type's value as "#" and its DER in hexadecimal
                parts.append(f"{oid}=#{data[oid_element[2]:value[2]].hex()}")
        rdns.append("+".join(reversed(parts)))  # as OpenSSL prints a multi-valued RDN reversed
    return ",".join(reversed(rdns))


def _general_names(data: bytes, start: int, end: int) -> tuple[str, ...]:
    names = []
    for tag, s, e in _children(data, start, end):
        body = data[s:e]
        if tag == 0x82:
            names.append("DNS:" + body.decode("ascii", "replace"))
        elif tag == 0x87:
            try:
                names.append(f"IP:{ipaddress.ip_address(body)}")
            except ValueError:
                names.append("IP:<invalid>")
        elif tag == 0x81:
            names.append("email:" + body.decode("ascii", "replace"))
        elif tag == 0x86:
            names.append("URI:" + body.decode("ascii", "replace"))
        elif tag == 0xA4:
            names.append("DirName:" + _name(data, *_expect(_tlv(data, s, e), _SEQUENCE, "directory name")[1:]))
        else:
            names.append("othername:<unsupported>")
    return tuple(names)


def _public_key(data: bytes, start: int, end: int) -> str:
    algorithm, key = _children(data, start, end)[:2]
    parts = _children(data, algorithm[1], algorithm[2])
    oid = _oid(data[parts[0][1]:parts[0][2]])
    if oid == _RSA:
        _expect(key, _BIT_STRING, "RSA public key")
        rsa = _expect(_tlv(data, key[1] + 1, key[2]), _SEQUENCE, "RSA public key")
        modulus = _children(data, rsa[1], rsa[2])[0]
        return f"RSA {int.from_bytes(data[modulus[1]:modulus[2]], 'big').bit_length()} bits"
    if oid == _EC:
        curve = _oid(data[parts[1][1]:parts[1][2]]) if len(parts) > 1 and parts[1][0] == _OID else "?"
        return f"EC {_CURVES.get(curve, curve)}"
    return {_ED25519: "Ed25519", _ED448: "Ed448"}.get(oid, oid)


def parse(der: bytes) -> Certificate:
    """A DER-encoded X.509 certificate (RFC 5280 4.1); CertificateError when it is not one."""
    try:
        return _parse(der)
    except CertificateError:
        raise
    except IndexError:
        raise CertificateError("a required certificate field is missing") from None
    except (ValueError, UnicodeError) as exc:
        raise CertificateError(f"a certificate field is malformed ({exc})") from None


def _parse(der: bytes) -> Certificate:
    certificate = _expect(_tlv(der, 0, len(der)), _SEQUENCE, "certificate")
    tbs = _expect(_children(der, certificate[1], certificate[2])[0], _SEQUENCE, "tbsCertificate")
    fields = _children(der, tbs[1], tbs[2])
    if fields[0][0] == 0xA0:  # [0] EXPLICIT version
        fields = fields[1:]
    serial = _expect(fields[0], _INTEGER, "serial number")
    issuer = _expect(fields[2], _SEQUENCE, "issuer")
    validity = _children(der, *_expect(fields[3], _SEQUENCE, "validity")[1:])
    subject = _expect(fields[4], _SEQUENCE, "subject")
    key_info = _expect(fields[5], _SEQUENCE, "subjectPublicKeyInfo")
    sans: tuple[str, ...] = ()
    usages: tuple[str, ...] = ()
    is_ca = False
    for tag, s, e in fields[6:]:
        if tag != 0xA3:  # [1], [2]: unique identifiers
            continue
        extensions = _expect(_tlv(der, s, e), _SEQUENCE, "extensions")
        for extension in _children(der, extensions[1], extensions[2]):
            parts = _children(der, *_expect(extension, _SEQUENCE, "extension")[1:])
            oid = _oid(der[parts[0][1]:parts[0][2]])
            value = _expect(parts[-1], _OCTET_STRING, "extension value")
            inner = _tlv(der, value[1], value[2])
            if oid == _SAN:
                sans = _general_names(der, *_expect(inner, _SEQUENCE, "subjectAltName")[1:])
            elif oid == _EXTENDED_KEY_USAGE:
                usages = tuple(_KEY_PURPOSES.get(o, o) for o in (
                    _oid(der[s2:e2]) for _, s2, e2 in _children(der, *_expect(inner, _SEQUENCE, "EKU")[1:])))
            elif oid == _BASIC_CONSTRAINTS:
                flags = _children(der, *_expect(inner, _SEQUENCE, "basicConstraints")[1:])
                is_ca = bool(flags) and flags[0][0] == _BOOLEAN and der[flags[0][1]:flags[0][2]] != b"\x00"
    return Certificate(
        subject=_name(der, subject[1], subject[2]), issuer=_name(der, issuer[1], issuer[2]),
        serial=_serial(der[serial[1]:serial[2]]),
        not_before=_time(validity[0][0], der[validity[0][1]:validity[0][2]]),
        not_after=_time(validity[1][0], der[validity[1][1]:validity[1][2]]),
        sans=sans, extended_key_usage=usages, is_ca=is_ca, public_key=_public_key(der, key_info[1], key_info[2]),
        fingerprint=":".join(f"{b:02X}" for b in hashlib.sha256(der[:certificate[2]]).digest()))


def _serial(body: bytes) -> str:
    """The INTEGER's bytes in hexadecimal without DER's leading zero byte (as OpenSSL prints it)."""
    return (body[1:] if len(body) > 1 and body[0] == 0 else body).hex().upper()


def read_pem(data: bytes | str) -> list[Certificate]:
    """Every certificate of a PEM text, in order; CertificateError when it holds none."""
    blocks = pem_blocks(data)
    if not blocks:
        raise CertificateError("no PEM certificate (\"-----BEGIN CERTIFICATE-----\") in it")
    return [parse(der) for der in blocks]


def load_certificates(path: Path) -> list[Certificate]:
    """The certificates in a PEM file (a chain, a CA bundle); OSError or CertificateError."""
    return read_pem(Path(path).read_bytes())


def load_certificate(path: Path) -> Certificate:
    """The first certificate of a PEM file: the box's own, before any intermediates."""
    return load_certificates(path)[0]


def key_mismatch(certificate: Path, key: Path) -> str | None:
    """None when `key` is the private key of the first certificate in `certificate`, else why
    not (OpenSSL's own check in `load_cert_chain`, in process: no subprocess)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certificate, key)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            return "the private key is not the certificate's"
        if exc.reason == "NO_CERTIFICATE_ASSIGNED":  # OpenSSL's word for a key of another type (RSA, EC)
            return "the private key is not the certificate's (not even of its type)"
        return f"OpenSSL cannot use them ({exc.reason or exc})"
    except OSError as exc:
        return f"cannot read {exc.filename or key}: {exc.strerror}"
    return None


# --- problems for status ---------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    level: str  # "WARNING" or "ERROR"
    message: str

    def to_dict(self) -> dict:
        return {"level": self.level, "message": self.message}


@dataclass(frozen=True)
class Use:
    """What uses the TLS files in a configuration."""

    listeners: tuple[tuple[str, int, bool], ...]  # (AE, TLS port, verify_clients)
    remote_aes: tuple[str, ...]  # titles of the remote AEs with tls = true
    audit: bool  # the audit trail goes to a tls:// collector

    def __bool__(self) -> bool:
        return bool(self.listeners or self.remote_aes or self.audit)


def tls_use(config: Config) -> Use:
    listeners = tuple((name, ae.tls_port, ae.verify_clients)
                      for name, ae in (("STORAGE-SCP", config.storage_scp),
                                       ("QUERY-RETRIEVE-SCP", config.query_retrieve_scp)) if ae.tls_port)
    return Use(listeners, tuple(ae.ae_title.strip() for ae in config.remote_aes if ae.tls),
               config.audit.collector.startswith("tls://"))


def _outgoing(use: Use) -> str:
    what = [f"remote AE{'s' if len(use.remote_aes) > 1 else ''} {', '.join(use.remote_aes)}"] if use.remote_aes else []
    return " and ".join(what + (["the audit collector"] if use.audit else []))


def problems(config: Config, now: datetime | None = None) -> list[Problem]:
    """What is wrong with the configured TLS files for the TLS the configuration uses (a TLS
    listener, a remote AE with tls = true, a tls:// audit collector); [] when it uses none."""
    use = tls_use(config)
    if not use:
        return []
    now = now or datetime.now(timezone.utc)
    found: list[Problem] = []
    certificate, key, bundle = (tls_path(config, k) for k in ("certificate", "key", "ca_bundle"))
    listeners = ", ".join(f"{name} port {port}" for name, port, _ in use.listeners)
    # Without a usable certificate of its own the box has no TLS listener; a TLS client
    # connection goes without one, which a peer that wants client certificates refuses.
    own = (f"the TLS listeners are off ({listeners})" if use.listeners
           else f"the box presents no certificate to {_outgoing(use)}")
    try:
        mine = load_certificate(certificate)
    except FileNotFoundError:
        found.append(Problem("ERROR", f"no certificate at {certificate} (tls.certificate): {own}; make one with "
                                      "service-tool tls key, tls csr and tls import-cert"))
        mine = None
    except (OSError, CertificateError) as exc:
        found.append(Problem("ERROR", f"cannot read the certificate {certificate} (tls.certificate): "
                                      f"{getattr(exc, 'strerror', None) or exc}: {own}"))
        mine = None
    if mine is not None:
        until = mine.not_after.strftime("%Y-%m-%d %H:%M UTC")
        if mine.expired(now):
            found.append(Problem("ERROR", f"the certificate {mine.subject} expired on {until}: {own}; "
                                          "renew it (service-tool tls csr, tls import-cert)"))
        elif mine.not_yet_valid(now):
            found.append(Problem("ERROR", f"the certificate {mine.subject} is not valid before "
                                          f"{mine.not_before.strftime('%Y-%m-%d %H:%M UTC')} (is the clock "
                                          f"right?): {own}"))
        elif mine.seconds_left(now) < EXPIRY_WARNING_DAYS * 86400:
            found.append(Problem("WARNING", f"the certificate {mine.subject} expires on {until}, in "
                                            f"{mine.days_left(now)} days: renew it (service-tool tls csr, "
                                            "tls import-cert, then systemctl reload appliance)"))
        if not key.exists():
            found.append(Problem("ERROR", f"no private key at {key} (tls.key): {own}"))
        elif (why := key_mismatch(certificate, key)) is not None:
            found.append(Problem("ERROR", f"{certificate} and {key} (tls.certificate, tls.key): {why}: {own}"))
    try:
        authorities = load_certificates(bundle)
    except FileNotFoundError:
        authorities = None
        verifying = [name for name, _, verify in use.listeners if verify]
        if verifying:
            found.append(Problem("WARNING", f"no CA bundle at {bundle} (tls.ca_bundle): clients are not verified "
                                            f"by {', '.join(verifying)} (verify_clients); import the hospital "
                                            "CA with service-tool tls import-ca"))
        if use.remote_aes or use.audit:
            found.append(Problem("ERROR", f"no CA bundle at {bundle} (tls.ca_bundle): no TLS connection to "
                                          f"{_outgoing(use)} can be opened; service-tool tls import-ca"))
    except (OSError, CertificateError) as exc:
        authorities = None
        found.append(Problem("ERROR", f"cannot read the CA bundle {bundle} (tls.ca_bundle): "
                                      f"{getattr(exc, 'strerror', None) or exc}"))
    for authority in authorities or ():
        if authority.expired(now):
            found.append(Problem("WARNING", f"the CA certificate {authority.subject} in {bundle} expired on "
                                            f"{authority.not_after.strftime('%Y-%m-%d')}: peers whose "
                                            "certificates chain only to it are refused"))
    return found


def status_report(config: Config, now: datetime | None = None) -> dict:
    """The `tls` part of `status` (service side, and the tool's own when the service is down):
    whether TLS is used, the certificate's subject and validity when it can be read, and
    `problems`."""
    use = tls_use(config)
    try:
        mine = load_certificate(tls_path(config, "certificate")).to_dict(now) if use else None
    except (OSError, CertificateError):
        mine = None
    return {"in_use": bool(use), "certificate": mine, "problems": [p.to_dict() for p in problems(config, now)]}
