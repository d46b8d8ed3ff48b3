"""The Security section: the security profiles (bit-preserving storage, DICOM over TLS per AE
and per remote AE, the audit trail) and each listening AE's association checks (SE-01..SE-03,
SE-07..SE-10, AU-01)."""

from __future__ import annotations

from urllib.parse import urlsplit

from appliance.config import tls_path
from appliance.config.model import Config, calling_allow_list
from appliance.dicom.admission import SERVICE_TOOL
from service_tool.render import Block, BulletList, Heading, Paragraph, Table
from service_tool.statement.common import SCU, SECTION

TLS_PROFILE = "BCP 195 Non-Downgrading TLS Secure Transport Connection Profile"
AUDIT_FORMAT = "Audit Trail Message Format Profile"
# audit.collector scheme -> (transmission profile, its description)
AUDIT_TRANSPORT = {
    "tls": ("Audit Trail Message Transmission Profile - SYSLOG-TLS",
            "They go as RFC 5424 syslog messages over TLS (RFC 5425), as IHE ATNA's Record Audit Event "
            "transaction sends them. The collector's certificate must chain to the CA bundle (tls.ca_bundle) "
            "and the product presents its own certificate (tls.certificate)."),
    "udp": ("Audit Trail Message Transmission Profile - SYSLOG-UDP",
            "They go as RFC 5424 syslog messages over UDP (RFC 5426), as IHE ATNA's Record Audit Event "
            "transaction sends them. A datagram lost on the network is lost."),
    "tcp": ("none (syslog over TCP without TLS)",
            "They go as RFC 5424 syslog messages over plain TCP with octet counting (RFC 6587), which no DICOM "
            "transmission profile defines; offered for collectors without TLS."),
}


def blocks(config: Config) -> list[Block]:
    rows = []
    for name, section in SECTION.items():
        ae = getattr(config, section)
        allowed = calling_allow_list(config, section)
        rows.append([name, ae.ae_title.strip() if ae.check_called_ae else "not checked",
                     ", ".join(allowed) if allowed else "any", ", ".join(ae.accepted_addresses) or "any"])
    return [
        Heading(2, "Security"),
        Heading(3, "Security Profiles"),
        Paragraph("Bit-preserving storage: an instance received in an explicit VR transfer syntax is stored "
                  "unchanged and exported unchanged when the destination accepts that transfer syntax and the "
                  "database holds no changed value for it, so digital signatures it carries stay valid."),
        *transport(config),
        *audit_trail(config),
        Heading(3, "Association Level Security"),
        Paragraph("Both SCP AEs always check the Application Context Name. Each can check the Called AE Title "
                  "(storage_scp.check_called_ae, query_retrieve_scp.check_called_ae), admit only listed Calling "
                  "AE Titles (accepted_calling_aes, plus the remote AEs flagged store or query) and only listed "
                  "IP addresses or networks (accepted_addresses). The lists are separate per AE; an empty list "
                  "admits any peer. Over TLS the same checks apply after the handshake."),
        Paragraph(f"One request passes both allow-lists whatever they hold: the diagnostic C-ECHO of the "
                  f"product's own service tool (service-tool echo --local), which calls as {SERVICE_TOOL} from "
                  "the machine itself (a loopback address, or the address it was called on) and proposes only the "
                  "Verification SOP Class, so that its association can carry nothing but C-ECHO. The Called AE "
                  "Title check, the pinned certificates and the limits apply to it as to any peer."),
        Table("Association Level Security", ["Application Entity", "Required Called AE Title",
                                             "Admitted Calling AE Titles", "Admitted IP Addresses"], rows),
    ]


def _verification(config: Config, verify_clients: bool) -> str:
    """SE-09: what a TLS client of this AE must present, with the CA bundle as installed now."""
    if not verify_clients:
        return "None: any client is accepted without a certificate (verify_clients = false)"
    if not tls_path(config, "ca_bundle").exists():
        return ("None for now: verify_clients is set, but no CA bundle is installed (tls.ca_bundle), so no "
                "client can be verified")
    return "Required: a certificate that chains to a CA of the CA bundle (tls.ca_bundle)"


def transport(config: Config) -> list[Block]:
    """Secure Transport Connection Profiles: TLS per listening AE (SE-07, SE-09) and per remote AE (SE-10)."""
    listening = {name: getattr(config, section) for name, section in SECTION.items()}
    outgoing = [ae for ae in config.remote_aes if ae.tls]
    blocks: list[Block] = [Heading(4, "Secure Transport Connection Profiles")]
    if not outgoing and not any(ae.tls_port for ae in listening.values()):
        return blocks + [Paragraph("DICOM over TLS is not offered: no SCP AE has a TLS port (tls_port) and no "
                                   "remote AE is flagged tls. Every association uses plain TCP.")]
    blocks += [
        Paragraph(f"The {TLS_PROFILE} (DICOM PS3.15 Annex B) is supported:"),
        BulletList([
            "TLS 1.2 and TLS 1.3 only; a peer that offers only TLS 1.1 or older fails the handshake.",
            "In TLS 1.2 only ephemeral key exchange (ECDHE or DHE) with AES-GCM or ChaCha20-Poly1305 "
            "cipher suites; TLS 1.3's own suites (all AEAD). No TLS compression, no renegotiation.",
            "The product presents the certificate tls.certificate with its private key tls.key, both as "
            "TLS server and as TLS client.",
            "A failed handshake is logged with the peer's address and the reason and never becomes an "
            "association.",
        ]),
    ]
    rows = []
    for name, ae in listening.items():
        if ae.tls_port:
            rows.append([name, "Server (accepts)", str(ae.tls_port), _verification(config, ae.verify_clients),
                         f"{SECTION[name]}.tls_port, {SECTION[name]}.verify_clients"])
        else:
            rows.append([name, "Server (accepts)", "not offered", "-", f"{SECTION[name]}.tls_port"])
    rows.append([SCU, "Client (requests)", "the remote AE's port",
                 "The remote AE's certificate must chain to the CA bundle (tls.ca_bundle); its host name is not "
                 "checked", "remote_aes[].tls"])
    blocks.append(Table("DICOM over TLS per Application Entity", ["Application Entity", "TLS Role", "TLS Port",
                                                                  "Peer Certificate Verification",
                                                                  "Configuration Keys"], rows))
    if config.remote_aes:
        blocks += [
            Paragraph(f"Associations the product requests ({SCU}'s C-MOVE exports, Storage Commitment reports "
                      "on a new association, the service tool's C-ECHO) use TLS to the remote AEs flagged tls "
                      "(remote_aes[].tls), and plain TCP to the others."),
            Paragraph("A remote AE with a pinned certificate subject (remote_aes[].tls_subject) must present "
                      "that certificate both ways: associations calling with its title are accepted only over "
                      "TLS with it (else rejected 1/1/3), and the product's own associations to it end after "
                      "the handshake when another certificate answers."),
            Table("Transport per Remote AE", ["AE Title", "Host", "TCP Port", "Transport", "Pinned Certificate"],
                  [[ae.ae_title.strip(), ae.host, str(ae.port), "TLS" if ae.tls else "TCP (no TLS)",
                    ae.tls_subject or "-"] for ae in config.remote_aes]),
        ]
    return blocks


def audit_trail(config: Config) -> list[Block]:
    """Audit Trail Profiles (AU-01): the message format and the transmission to the collector."""
    collector = config.audit.collector
    blocks: list[Block] = [Heading(4, "Audit Trail Profiles")]
    if not collector:
        return blocks + [Paragraph(f"The audit trail is not offered: no audit record repository is configured "
                                   f"(audit.collector), so no audit messages are sent. Neither the {AUDIT_FORMAT} "
                                   "nor an audit trail transmission profile is supported as configured.")]
    parts = urlsplit(collector)
    profile, how = AUDIT_TRANSPORT[parts.scheme]
    source = config.audit.source_id or "the machine name"
    blocks += [
        Paragraph(f"The product is an IHE ATNA Secure Application: it sends audit messages of the {AUDIT_FORMAT} "
                  "(DICOM PS3.15 A.5, audit message XML) for application start and stop, security alerts "
                  "(an association refused for security reasons, a failed TLS handshake, a configuration "
                  "change), instances received and sent, queries, and the start of each C-MOVE. " + how),
        Table("Audit Trail", ["Item", "Value", "Configuration Key"], [
            ["Message format", f"{AUDIT_FORMAT} (PS3.15 A.5)", "(none)"],
            ["Transmission", profile, "audit.collector"],
            ["Audit record repository", f"{parts.hostname} port {parts.port} ({parts.scheme.upper()})",
             "audit.collector"],
            ["AuditSourceID", source, "audit.source_id"],
            ["Spool while the repository is unreachable",
             f"{config.audit.spool_max_bytes} bytes; beyond it the oldest messages are dropped, with an alert"
             + ("; over UDP only a datagram the host cannot send waits there: one lost on the way is not "
                "noticed" if parts.scheme == "udp" else ""),
             "audit.spool_max_bytes"],
        ]),
        # PS3.15 A.5.2.1: how the participants are identified in the messages.
        Table("Audit Message Identifiers", ["Participant", "UserID", "AlternativeUserID"], [
            ["This product (each AE)", "the service's process ID", "AETITLES= the AE's title"],
            ["A remote DICOM node", "its AE title (its IP address when no association was requested)",
             "AETITLES= its AE title"],
            ["Network access point", "NetworkAccessPointID: a remote node's IP address (type 2), this "
                                     "product's machine name (type 1)", ""],
        ]),
    ]
    return blocks
