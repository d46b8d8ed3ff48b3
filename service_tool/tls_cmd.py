"""`service-tool tls key|csr|import-cert|import-ca|show`: the box's TLS identity and the CA it trusts (SE-08).

The files are those of `[tls]` (certificate, key, ca_bundle; /etc/appliance/tls on the box).
The key and the certificate signing request are made by Debian's `openssl` command; the
service itself reads the files in process (`appliance.tls.certificates`, Python's `ssl`).

The key is RSA 3072 bits: the TLS 1.2 cipher suites of DICOM's BCP 195 profiles that older
DICOM peers offer (DCMTK's BCP 195 Non-Downgrading profile, for one) authenticate the server
with RSA only, and 3072 bits is the NIST size for security beyond 2030. The CSR asks for both
serverAuth and clientAuth extended key usage, since the box is a TLS server (its listeners,
SE-07) and a TLS client (exports, commitment reports and echoes to a TLS remote AE, SE-10).

Files are replaced atomically (temporary file, fsync, rename): the key with mode 0600 and, when
run as root, owned by the service's user so that the service can read it; the certificate and
CA bundle with mode 0644. Nothing here reloads the service: the installer does, once the files
are complete (`systemctl reload appliance`).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import pwd
import re
import ssl
import subprocess
import sys
from pathlib import Path

from appliance.config import Config, tls_path
from appliance.config.model import dns_name
from appliance.durable import write_bytes
from appliance.tls import certificates
from appliance.tls.certificates import CertificateError
from service_tool.config_cmd import EXIT_INVALID
from service_tool.configuration import load, reading

EXIT_FAILED = 1  # refused or failed; no file was changed
SERVICE_USER = "appliance"  # system/sysusers.d/appliance.conf: the user the service runs as
KEY_BITS = 3072
RELOAD = "reload the service to use it: systemctl reload appliance"
_OPENSSL_TIMEOUT = 60  # s; an RSA 3072 key takes a second or two


def san(text: str) -> str:
    """argparse type: "DNS:name" or "IP:address" (a subjectAltName entry)."""
    kind, _, value = text.partition(":")
    kind = kind.strip().upper()
    if kind == "DNS" and value and dns_name(value) is None:
        return f"DNS:{value.lower()}"
    if kind == "IP":
        try:
            return f"IP:{ipaddress.ip_address(value)}"
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(f"{text!r} is not DNS:NAME or IP:ADDRESS (e.g. DNS:archive.hospital.example, "
                                     "IP:10.0.4.20)")


def common_name(text: str) -> str:
    """argparse type: a CN of 1 to 64 characters (X.520 ub-common-name)."""
    if not text.strip() or len(text) > 64 or any(ord(c) < 32 for c in text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a common name (1 to 64 printable characters)")
    return text.strip()


def register(groups) -> None:
    group = groups.add_parser(
        "tls", help="the box's TLS key and certificate, and the CA bundle it trusts",
        description="Make the box's private key and a certificate signing request, import the certificate "
                    "the hospital CA issued and the CA's certificates, and show them (the [tls] files).")
    commands = group.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)

    key_cmd = commands.add_parser(
        "key", help="make a new private key (RSA 3072 bits)",
        description=f"Make a new RSA {KEY_BITS}-bit private key at tls.key (mode 0600; owned by the "
                    f"service's user '{SERVICE_USER}' when run as root). An existing key is kept unless "
                    "--force is given; a certificate made for the old key stops working. Exit 0 when made, "
                    "1 when refused or failed.")
    key_cmd.add_argument("--force", action="store_true", help="replace an existing key")
    key_cmd.set_defaults(run=make_key)

    csr_cmd = commands.add_parser(
        "csr", help="make a certificate signing request from the key, for the hospital CA",
        description="Make a PKCS #10 certificate signing request for the key at tls.key, with the common "
                    "name, the subject alternative names and extended key usage serverAuth and clientAuth "
                    "(the box is TLS server and client). It goes to stdout, or to FILE with --output. "
                    "Without --san the common name, when it is a DNS name or an IP address, is the SAN too. "
                    "Exit 0 when made, 1 when there is no key or openssl fails.")
    csr_cmd.add_argument("--cn", required=True, type=common_name, metavar="NAME",
                         help="the subject's common name, usually the box's DNS name")
    csr_cmd.add_argument("--san", action="append", type=san, default=[], metavar="DNS:NAME|IP:ADDRESS",
                         help="a subject alternative name (repeatable)")
    csr_cmd.add_argument("--output", type=Path, metavar="FILE", help="write the request to FILE instead of stdout")
    csr_cmd.set_defaults(run=make_csr)

    cert_cmd = commands.add_parser(
        "import-cert", help="install the box's certificate (PEM) issued for its key",
        description="Check that FILE is a PEM certificate (any intermediate CA certificates after it) for "
                    "the key at tls.key, valid now, then copy it to tls.certificate (mode 0644). Exit 0 "
                    "when imported, 1 when refused (the reason is printed; tls.certificate is unchanged).")
    cert_cmd.add_argument("file", type=Path, metavar="FILE", help="the certificate, PEM")
    cert_cmd.set_defaults(run=import_certificate)

    ca_cmd = commands.add_parser(
        "import-ca", help="install the CA certificates (PEM) that peers must chain to",
        description="Check that FILE holds PEM CA certificates and write them to tls.ca_bundle (mode 0644), "
                    "replacing it, or adding to it with --append. TLS clients (verify_clients) and TLS remote "
                    "AEs must present certificates that chain to one of them. Exit 0 when imported, 1 when "
                    "refused.")
    ca_cmd.add_argument("file", type=Path, metavar="FILE", help="CA certificates, PEM")
    ca_cmd.add_argument("--append", action="store_true", help="add them to the bundle instead of replacing it")
    ca_cmd.set_defaults(run=import_ca)

    show_cmd = commands.add_parser(
        "show", help="the certificate, key and CA bundle, and what is wrong with them",
        description="Print the certificate (subject, SANs, issuer, validity, days left, SHA-256 fingerprint), "
                    "whether the key is its key, the CA bundle's certificates, what uses TLS in the "
                    "configuration, and the problems status reports. Exit 0, or 1 for an invalid configuration.")
    show_cmd.add_argument("--json", action="store_true", help="print JSON")
    show_cmd.set_defaults(run=show)


# --- files -----------------------------------------------------------------------------------

def _service_owner() -> tuple[int, int] | None:
    """(uid, gid) of the service's user when run as root and that user exists (on the box)."""
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None
    return user.pw_uid, user.pw_gid


def _replace(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> None:
    """`path` written atomically with `mode` (and `owner`), its directory made first."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    write_bytes(path, data, mode, owner)


def _openssl(*args: str, stdin: bytes | None = None) -> bytes:
    """Run `openssl ARGS`; its stdout, or RuntimeError with its message."""
    try:
        done = subprocess.run(["openssl", *args], input=stdin, capture_output=True, timeout=_OPENSSL_TIMEOUT)
    except FileNotFoundError:
        raise RuntimeError("the openssl command is not installed (Debian package openssl)") from None
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"openssl {args[0]} did not finish within {_OPENSSL_TIMEOUT} s") from None
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"openssl {args[0]} failed: {message[-1] if message else f'exit {done.returncode}'}")
    return done.stdout


def _when(moment) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


# --- key and CSR -----------------------------------------------------------------------------

def make_key(args: argparse.Namespace) -> int:
    config = load(args.config)
    if config is None:
        return EXIT_INVALID
    path = tls_path(config, "key")
    if path.exists() and not args.force:
        print(f"refused: a key exists at {path} (tls.key); --force replaces it, and the certificate made for it "
              "then stops working", file=sys.stderr)
        return EXIT_FAILED
    owner = _service_owner()
    try:
        pem = _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{KEY_BITS}")
        _replace(path, pem, 0o600, owner)
    except (RuntimeError, OSError) as exc:
        print(f"key not made: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"new RSA {KEY_BITS}-bit private key written to {path} (mode 0600, owner "
          f"{SERVICE_USER if owner else pwd.getpwuid(os.geteuid()).pw_name})")
    certificate = tls_path(config, "certificate")
    if certificate.exists():
        print(f"note: the certificate {certificate} was made for the old key and no longer matches: make a "
              "request (service-tool tls csr) and import the new certificate")
    else:
        print("next: service-tool tls csr --cn NAME [--san DNS:NAME|IP:ADDRESS ...]")
    return 0


def _subject(cn: str) -> str:
    """`openssl req -subj` form: "/" separates attributes and "+" values of one RDN, so they
    (and "\\") are escaped in the value."""
    return "/CN=" + re.sub(r"([\\/+])", r"\\\1", cn)


def _default_sans(cn: str) -> list[str]:
    """Without --san, the CN itself when it is a DNS name or an IP address (clients that check
    host names read only the SAN)."""
    for candidate in (f"IP:{cn}", f"DNS:{cn}"):
        try:
            return [san(candidate)]
        except argparse.ArgumentTypeError:
            continue
    return []


def make_csr(args: argparse.Namespace) -> int:
    config = load(args.config)
    if config is None:
        return EXIT_INVALID
    key = tls_path(config, "key")
    if not key.exists():
        print(f"no key at {key} (tls.key): make one first with service-tool tls key", file=sys.stderr)
        return EXIT_FAILED
    sans = list(dict.fromkeys(args.san)) or _default_sans(args.cn)
    extensions = ["-addext", "basicConstraints=critical,CA:FALSE",
                  "-addext", "keyUsage=critical,digitalSignature,keyEncipherment",
                  "-addext", "extendedKeyUsage=serverAuth,clientAuth"]
    if sans:
        extensions += ["-addext", "subjectAltName=" + ",".join(sans)]
    try:
        pem = _openssl("req", "-new", "-key", str(key), "-sha256", "-utf8", "-subj", _subject(args.cn), *extensions)
        if args.output is not None:
            _replace(args.output, pem, 0o644)
    except (RuntimeError, OSError) as exc:
        print(f"request not made: {exc}", file=sys.stderr)
        return EXIT_FAILED
    described = f"CN={args.cn}, SAN {', '.join(sans) or 'none'}, extended key usage serverAuth and clientAuth"
    if args.output is None:
        sys.stdout.write(pem.decode("ascii"))
        print(f"certificate signing request for {described}; have the hospital CA sign it, then "
              "service-tool tls import-cert FILE", file=sys.stderr)
    else:
        print(f"certificate signing request written to {args.output}: {described}")
        print("have the hospital CA sign it, then: service-tool tls import-cert FILE")
    return 0


# --- imports ---------------------------------------------------------------------------------

def _read_pem(path: Path, what: str) -> tuple[list[bytes], list[certificates.Certificate]] | None:
    """The DER blocks and certificates of a PEM file, or None after printing why not."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"refused: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return None
    try:
        blocks = certificates.pem_blocks(data)
        if not blocks:
            raise CertificateError("no \"-----BEGIN CERTIFICATE-----\" block in it")
        return blocks, [certificates.parse(der) for der in blocks]
    except CertificateError as exc:
        hint = ""
        try:
            certificates.parse(data)
            hint = f" (it is DER: convert it with openssl x509 -inform der -in {path} -out {path.stem}.pem)"
        except CertificateError:
            pass
        print(f"refused: {path} is not a PEM {what}: {exc}{hint}", file=sys.stderr)
        return None


def import_certificate(args: argparse.Namespace) -> int:
    config = load(args.config)
    if config is None:
        return EXIT_INVALID
    read = _read_pem(args.file, "certificate")
    if read is None:
        return EXIT_FAILED
    blocks, chain = read
    mine, key, target = chain[0], tls_path(config, "key"), tls_path(config, "certificate")
    if mine.expired():
        print(f"refused: the certificate {mine.subject} in {args.file} expired on {_when(mine.not_after)}",
              file=sys.stderr)
        return EXIT_FAILED
    if mine.not_yet_valid():
        print(f"refused: the certificate {mine.subject} in {args.file} is not valid before "
              f"{_when(mine.not_before)} (is the box's clock right?)", file=sys.stderr)
        return EXIT_FAILED
    if not key.exists():
        print(f"refused: no private key at {key} (tls.key); the certificate must be issued for this box's key: "
              "service-tool tls key, then tls csr", file=sys.stderr)
        return EXIT_FAILED
    if (why := certificates.key_mismatch(args.file, key)) is not None:
        print(f"refused: the certificate {mine.subject} in {args.file} does not match the key {key} (tls.key): "
              f"{why}; was it issued for this box's request (service-tool tls csr)?", file=sys.stderr)
        return EXIT_FAILED
    try:
        _replace(target, "".join(map(certificates.to_pem, blocks)).encode("ascii"), 0o644)
    except OSError as exc:
        print(f"certificate not imported: {exc}", file=sys.stderr)
        return EXIT_FAILED
    intermediates = f", with {len(chain) - 1} CA certificate(s) after it" if len(chain) > 1 else ""
    print(f"certificate imported to {target}{intermediates}")
    print(f"  subject: {mine.subject}")
    print(f"  issuer:  {mine.issuer}")
    print(f"  valid until {_when(mine.not_after)} ({mine.days_left()} days)")
    if mine.days_left() < certificates.EXPIRY_WARNING_DAYS:
        print(f"warning: it expires within {certificates.EXPIRY_WARNING_DAYS} days: status reports a WARNING "
              "until it is renewed")
    for usage, who in (("serverAuth", "TLS clients that check it refuse the box's TLS listeners"),
                       ("clientAuth", "TLS remote AEs that check it refuse the box as a client")):
        if mine.extended_key_usage and usage not in mine.extended_key_usage:
            print(f"warning: its extended key usage ({', '.join(mine.extended_key_usage)}) lacks {usage}: {who}")
    print(RELOAD)
    return 0


def import_ca(args: argparse.Namespace) -> int:
    config = load(args.config)
    if config is None:
        return EXIT_INVALID
    read = _read_pem(args.file, "CA certificate")
    if read is None:
        return EXIT_FAILED
    target = tls_path(config, "ca_bundle")
    blocks, authorities = read
    if args.append and target.exists():
        try:
            kept = certificates.pem_blocks(target.read_bytes())
        except (OSError, CertificateError) as exc:
            print(f"refused: cannot read the CA bundle {target} to add to it: {getattr(exc, 'strerror', None) or exc}",
                  file=sys.stderr)
            return EXIT_FAILED
        known = {certificates.parse(der).fingerprint for der in kept}
        added = [(der, c) for der, c in zip(blocks, authorities) if c.fingerprint not in known]
        blocks = kept + [der for der, _ in added]
        authorities = [certificates.parse(der) for der in kept] + [c for _, c in added]
    text = "".join(map(certificates.to_pem, blocks))
    try:  # what the service will do with it (appliance.tls.contexts)
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text)
    except ssl.SSLError as exc:
        print(f"refused: OpenSSL cannot use {args.file} as CA certificates ({exc.reason or exc})", file=sys.stderr)
        return EXIT_FAILED
    try:
        _replace(target, text.encode("ascii"), 0o644)
    except OSError as exc:
        print(f"CA certificates not imported: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"CA bundle {target} now holds {len(authorities)} certificate(s):")
    for authority in authorities:
        print(f"  {authority.subject}, valid until {_when(authority.not_after)}, SHA-256 {authority.fingerprint}")
        if not authority.is_ca:
            print("    warning: not a CA certificate (basicConstraints): it verifies no certificate but itself")
        if authority.expired():
            print("    warning: expired: peers whose certificates chain only to it are refused")
    print(RELOAD)
    return 0


# --- show ------------------------------------------------------------------------------------

def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def report(config: Config) -> dict:
    """What `tls show` prints, as JSON."""
    paths = {k: tls_path(config, k) for k in ("certificate", "key", "ca_bundle")}
    certificate: dict = {"path": str(paths["certificate"]), "present": paths["certificate"].exists()}
    if certificate["present"]:
        try:
            chain = certificates.load_certificates(paths["certificate"])
            certificate |= chain[0].to_dict()
            certificate["chain"] = [c.subject for c in chain[1:]]
        except (OSError, CertificateError) as exc:
            certificate["error"] = getattr(exc, "strerror", None) or str(exc)
    key: dict = {"path": str(paths["key"]), "present": paths["key"].exists()}
    if key["present"]:
        status = paths["key"].stat()
        key |= {"mode": f"{status.st_mode & 0o777:04o}", "owner": _owner(status.st_uid)}
        if certificate.get("subject"):
            why = certificates.key_mismatch(paths["certificate"], paths["key"])
            key |= {"matches_certificate": why is None, **({"error": why} if why else {})}
    bundle: dict = {"path": str(paths["ca_bundle"]), "present": paths["ca_bundle"].exists(), "certificates": []}
    if bundle["present"]:
        try:
            bundle["certificates"] = [c.to_dict() for c in certificates.load_certificates(paths["ca_bundle"])]
        except (OSError, CertificateError) as exc:
            bundle["error"] = getattr(exc, "strerror", None) or str(exc)
    use = certificates.tls_use(config)
    return {"certificate": certificate, "key": key, "ca_bundle": bundle,
            "in_use": {"listeners": [{"ae": ae, "tls_port": port, "verify_clients": verify}
                                     for ae, port, verify in use.listeners],
                       "remote_aes": list(use.remote_aes), "audit_collector": use.audit},
            "problems": [p.to_dict() for p in certificates.problems(config)]}


def _iso_text(value: str) -> str:
    """"2026-12-06T22:47:31Z" -> "2026-12-06 22:47 UTC" (minutes are enough)."""
    return value[:16].replace("T", " ") + " UTC"


def _text(r: dict) -> list[str]:
    c, k, b = r["certificate"], r["key"], r["ca_bundle"]
    lines = []
    if not c["present"]:
        lines.append(f"certificate: none at {c['path']} (service-tool tls key, tls csr, tls import-cert)")
    elif "error" in c:
        lines.append(f"certificate: {c['path']} cannot be read: {c['error']}")
    else:
        lines += [f"certificate: {c['path']}",
                  f"  subject:      {c['subject']}",
                  f"  SANs:         {', '.join(c['sans']) or 'none'}",
                  f"  issuer:       {c['issuer']}{' (self-signed)' if c['issuer'] == c['subject'] else ''}",
                  f"  valid:        {_iso_text(c['not_before'])} to {_iso_text(c['not_after'])} "
                  f"({c['days_left']} days left)" if c["days_left"] >= 0 else
                  f"  valid:        {_iso_text(c['not_before'])} to {_iso_text(c['not_after'])} (EXPIRED)",
                  f"  key usage:    {', '.join(c['extended_key_usage']) or 'any (no extended key usage)'}",
                  f"  public key:   {c['public_key']}",
                  f"  SHA-256 fingerprint: {c['fingerprint_sha256']}"]
        lines += [f"  then CA:      {subject}" for subject in c["chain"]]
    if not k["present"]:
        lines.append(f"key: none at {k['path']} (service-tool tls key)")
    else:
        match = ("" if "matches_certificate" not in k else
                 ", matches the certificate" if k["matches_certificate"] else f": {k['error']}")
        lines.append(f"key: {k['path']} (mode {k['mode']}, owner {k['owner']}){match}")
    if not b["present"]:
        lines.append(f"CA bundle: none at {b['path']} (service-tool tls import-ca)")
    elif "error" in b:
        lines.append(f"CA bundle: {b['path']} cannot be read: {b['error']}")
    else:
        lines.append(f"CA bundle: {b['path']}, {len(b['certificates'])} certificate(s)")
        for a in b["certificates"]:
            state = "EXPIRED" if a["days_left"] < 0 else f"{a['days_left']} days left"
            lines.append(f"  {a['subject']}, valid until {_iso_text(a['not_after'])} ({state}), "
                         f"SHA-256 {a['fingerprint_sha256']}")
    use = r["in_use"]
    verified = b["present"] and "error" not in b  # SE-09: verify_clients needs the CA bundle
    users = [f"{l['ae']} TLS port {l['tls_port']} (clients "
             f"{'verified' if l['verify_clients'] and verified else 'not verified'})" for l in use["listeners"]]
    users += [f"remote AE {title}" for title in use["remote_aes"]]
    users += ["the audit collector (tls://)"] if use["audit_collector"] else []
    lines.append(f"used by: {', '.join(users)}" if users else
                 "used by: nothing (no tls_port, no remote AE with tls = true, no tls:// audit collector)")
    lines += [f"{p['level']}: {p['message']}" for p in r["problems"]]
    return lines


def show(args: argparse.Namespace) -> int:
    config = reading(args.config)
    if config is None:
        return EXIT_INVALID
    result = report(config)
    print(json.dumps(result, indent=2) if args.json else "\n".join(_text(result)))
    return 0
