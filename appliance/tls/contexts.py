"""TLS contexts for DICOM connections, both directions (SE-07, SE-09, SE-10).

The profile is PS3.15 B.9's BCP 195 Non-Downgrading TLS Secure Transport Connection Profile
(DCMTK's default, `+py`): TLS 1.2 or 1.3 only; in TLS 1.2 only ephemeral key exchange
(ECDHE, DHE) with AEAD ciphers (AES-GCM, ChaCha20-Poly1305), as RFC 9325 (BCP 195)
recommends; no compression and no renegotiation. TLS 1.3's own suites are all AEAD.

The files are read each time a context is made (a listener's start, a reload, each outgoing
association), so a renewed certificate takes effect without a restart.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from appliance.config import tls_path
from appliance.config.model import Config
from appliance.tls.certificates import CertificateError, load_certificate, parse, same_subject

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL"
PROFILE = "BCP 195 Non-Downgrading TLS Profile (TLS 1.2 and 1.3)"


class TlsUnavailable(Exception):
    """The configured files do not make a usable context; the message names the file and key."""


def _base(purpose: int) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose == ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return context


def _identity(context: ssl.SSLContext, certificate: Path, key: Path) -> None:
    try:
        context.load_cert_chain(certificate, key)
    except FileNotFoundError as exc:
        raise TlsUnavailable(f"{exc.filename} does not exist (tls.certificate / tls.key; "
                             "service-tool tls key, tls csr, tls import-cert)") from None
    except OSError as exc:
        raise TlsUnavailable(f"cannot read {exc.filename or certificate}: {exc.strerror} "
                             "(tls.certificate / tls.key)") from None
    except ssl.SSLError as exc:
        raise TlsUnavailable(f"{certificate} and {key} are not a PEM certificate and its private key "
                             f"({exc.reason or exc}; tls.certificate / tls.key)") from None


def _trust(context: ssl.SSLContext, bundle: Path) -> None:
    try:
        context.load_verify_locations(cafile=bundle)
    except OSError as exc:
        raise TlsUnavailable(f"cannot read {bundle}: {exc.strerror} (tls.ca_bundle)") from None
    except ssl.SSLError as exc:
        raise TlsUnavailable(f"{bundle} holds no PEM CA certificate ({exc.reason or exc}; tls.ca_bundle)") from None


def server_context(config: Config, verify_clients: bool) -> tuple[ssl.SSLContext, bool]:
    """A listener's context and whether it verifies clients: with `verify_clients` and an
    existing CA bundle, a client must present a certificate that chains to it (SE-09). A
    certificate expired or not valid yet makes none (SE-08): OpenSSL would serve it, and every
    client refuse it."""
    context = _base(ssl.Purpose.CLIENT_AUTH)
    # TLS 1.3 session tickets cost a fifth of the server's handshake CPU (1.9 -> 1.55 s per 1000
    # associations, bench/tls.py); without them a client that would resume a session does a
    # full handshake instead, which is what the DICOM clients tested here do anyway.
    context.num_tickets = 0
    certificate = tls_path(config, "certificate")
    _identity(context, certificate, tls_path(config, "key"))
    try:
        own = load_certificate(certificate)
    except (OSError, CertificateError) as exc:
        raise TlsUnavailable(f"{certificate} cannot be read as a certificate: {exc} (tls.certificate)") from None
    if own.expired():
        raise TlsUnavailable(f"the certificate {certificate} ({own.subject}) expired on "
                             f"{own.not_after:%Y-%m-%d %H:%M} UTC (tls.certificate; service-tool tls csr, "
                             "tls import-cert, then systemctl reload appliance)")
    if own.not_yet_valid():
        raise TlsUnavailable(f"the certificate {certificate} ({own.subject}) is not valid before "
                             f"{own.not_before:%Y-%m-%d %H:%M} UTC (tls.certificate; is the clock right?)")
    bundle = tls_path(config, "ca_bundle")
    verifying = verify_clients and bundle.exists()
    if verifying:
        _trust(context, bundle)
        context.verify_mode = ssl.CERT_REQUIRED
    return context, verifying


def client_context(config: Config) -> ssl.SSLContext:
    """The context of an association the box requests (SE-10). Host names are not checked:
    DICOM peers are configured by IP address as often as by name, and the CA bundle is the
    hospital's own."""
    return requester_context(tls_path(config, "certificate"), tls_path(config, "key"), tls_path(config, "ca_bundle"))


def requester_context(certificate: Path, key: Path, bundle: Path, check_hostname: bool = False) -> ssl.SSLContext:
    """A client's context: the box presents `certificate` when it exists, and the peer's
    certificate must chain to `bundle` (and name the host, with `check_hostname`, as the audit
    trail's collector must, RFC 5425 5.2)."""
    context = _base(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if not bundle.exists():
        raise TlsUnavailable(f"{bundle} does not exist, so no peer can be verified (tls.ca_bundle; "
                             "service-tool tls import-ca)")
    _trust(context, bundle)
    if certificate.exists():
        _identity(context, certificate, key)
    return context


def describe(sock: ssl.SSLSocket, subject: str | None = None) -> str:
    """"TLSv1.3 TLS_AES_256_GCM_SHA384, peer certificate CN=..." for the log; the subject as
    `client_subject` gives it (read again when not given), the form remote_aes[].tls_subject
    and `service-tool tls show` use."""
    cipher = sock.cipher()
    text = f"{sock.version()} {cipher[0] if cipher else ''}".strip()
    subject = client_subject(sock) if subject is None else subject
    return f"{text}, peer certificate {subject}" if subject else text


def client_subject(sock: ssl.SSLSocket) -> str:
    """The subject of the certificate the peer presented (RFC 4514, as `service-tool tls show`
    prints it), "" without one."""
    der = sock.getpeercert(binary_form=True)
    if not der:
        return ""
    try:
        return parse(der).subject
    except CertificateError:  # OpenSSL verified it, so this reader's limit: the pin cannot match
        return "(a certificate this service cannot read)"


def check_subject(sock: ssl.SSLSocket, pinned: str) -> str | None:
    """Why the peer's certificate is not the one pinned (SE-09), None when it is or none is."""
    if not pinned:
        return None
    subject = client_subject(sock)
    return None if same_subject(subject, pinned) else \
        f"the peer's certificate is {subject or '(none)'}, not {pinned} (remote_aes[].tls_subject)"


def handshake_failure(exc: ssl.SSLError) -> str:
    """Why a handshake failed, in the installer's words."""
    reason = exc.reason or ""
    if reason in ("UNSUPPORTED_PROTOCOL", "VERSION_TOO_LOW", "TLSV1_ALERT_PROTOCOL_VERSION"):
        return "the peer offers only TLS 1.1 or older; TLS 1.2 or 1.3 is required"
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return "the client presented no certificate (verify_clients = true)"
    if reason == "CERTIFICATE_VERIFY_FAILED":
        return f"the peer's certificate is not trusted: {getattr(exc, 'verify_message', '') or reason} (tls.ca_bundle)"
    if reason == "NO_SHARED_CIPHER":
        return "no cipher suite in common (BCP 195: ECDHE or DHE with AES-GCM or ChaCha20-Poly1305)"
    if reason.startswith("TLSV1_ALERT_") or reason.startswith("SSLV3_ALERT_"):
        alert = reason.split("_ALERT_", 1)[1].replace("_", " ").lower()
        return f"the peer ended the handshake with the alert \"{alert}\" (it does not trust this box's certificate?)"
    return reason.replace("_", " ").lower() or str(exc)
