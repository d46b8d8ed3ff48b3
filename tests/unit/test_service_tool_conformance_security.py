"""The conformance statement's security section from the live configuration: DICOM over TLS
per AE (ports, the BCP 195 profile, client verification), TLS per remote AE, and the audit
trail (IHE ATNA message format and transmission profile), or "not offered" when off
(SE-07, SE-09, SE-10, AU-01)."""

from __future__ import annotations

from test_service_tool_conformance import html_tables, markdown_tables, statement
from tls_pki import Authority


def test_statement_says_tls_and_audit_are_not_offered_when_off(tmp_path):
    text = statement(tmp_path, "")
    assert "DICOM over TLS is not offered: no SCP AE has a TLS port (tls_port) and no remote AE is flagged tls" in text
    assert "The audit trail is not offered: no audit record repository is configured (audit.collector)" in text
    tables = markdown_tables(text)
    assert "DICOM over TLS per Application Entity" not in tables and "Audit Trail" not in tables
    assert {row["Application Entity"]: (row["TCP Port"], row["DICOM TLS Port"])
            for row in tables["Application Entity Configuration"]} == {
        "STORAGE-SCU": ("none (ephemeral source port)", "none (see Security)"), "STORAGE-SCP": ("4000", "off"),
        "QUERY-RETRIEVE-SCP": ("5000", "off")}


TLS_ON = """
[storage_scp]
tls_port = 2762
[query_retrieve_scp]
port = 0
tls_port = 2763
verify_clients = false
[audit]
collector = "udp://arr.hospital.example:514"
source_id = "RAD_ARCHIVE_1"
[[remote_aes]]
ae_title = "PACS"
host = "10.0.0.1"
port = 2762
tls = true
tls_subject = "CN=pacs.hospital.example"
[[remote_aes]]
ae_title = "VIEWER"
host = "10.0.0.2"
port = 104
"""


def test_statement_security_section_with_tls_and_audit_on(tmp_path):
    text = statement(tmp_path, TLS_ON)
    tables = markdown_tables(text)
    assert "The BCP 195 Non-Downgrading TLS Secure Transport Connection Profile (DICOM PS3.15 Annex B) is supported" \
        in text
    assert "TLS 1.2 and TLS 1.3 only" in text and "ECDHE or DHE" in text and "ChaCha20-Poly1305" in text
    per_ae = {row["Application Entity"]: row for row in tables["DICOM over TLS per Application Entity"]}
    assert per_ae["STORAGE-SCP"]["TLS Port"] == "2762"
    # SE-09: verify_clients is set, but there is no CA bundle yet.
    assert per_ae["STORAGE-SCP"]["Peer Certificate Verification"].startswith("None for now: verify_clients is set")
    assert per_ae["QUERY-RETRIEVE-SCP"]["TLS Port"] == "2763"
    assert per_ae["QUERY-RETRIEVE-SCP"]["Peer Certificate Verification"].startswith("None: any client is accepted")
    assert per_ae["STORAGE-SCU"]["TLS Role"] == "Client (requests)"
    assert [list(row.values()) for row in tables["Transport per Remote AE"]] == [
        ["PACS", "10.0.0.1", "2762", "TLS", "CN=pacs.hospital.example"],
        ["VIEWER", "10.0.0.2", "104", "TCP (no TLS)", "-"]]
    audit = {row["Item"]: row["Value"] for row in tables["Audit Trail"]}
    assert audit["Message format"] == "Audit Trail Message Format Profile (PS3.15 A.5)"
    assert audit["Transmission"] == "Audit Trail Message Transmission Profile - SYSLOG-UDP"
    assert audit["Audit record repository"] == "arr.hospital.example port 514 (UDP)"
    assert audit["AuditSourceID"] == "RAD_ARCHIVE_1"
    assert audit["Spool while the repository is unreachable"].endswith("one lost on the way is not noticed")
    identifiers = {row["Participant"]: row["UserID"] for row in tables["Audit Message Identifiers"]}
    assert identifiers["This product (each AE)"] == "the service's process ID"  # PS3.15 A.5.2.1
    assert "IHE ATNA" in text
    ports = {row["Application Entity"]: (row["TCP Port"], row["DICOM TLS Port"])
             for row in tables["Application Entity Configuration"]}
    assert ports["STORAGE-SCP"] == ("4000", "2762") and ports["QUERY-RETRIEVE-SCP"] == ("off", "2763")
    assert "QUERY-RETRIEVE-SCP listens for DICOM over TLS only, on port 2763 (no unencrypted port)." in text
    assert "STORAGE-SCP listens on port 4000, and for DICOM over TLS on port 2762." in text
    assert html_tables(statement(tmp_path, TLS_ON, "html")) == tables

    # With a CA bundle installed, STORAGE-SCP's clients must chain to it; a TLS collector.
    (tmp_path / "tls").mkdir()
    Authority(tmp_path / "ca").certificate.replace(tmp_path / "tls" / "ca.pem")
    tables = markdown_tables(statement(tmp_path, TLS_ON.replace("udp://arr.hospital.example:514",
                                                                "tls://arr.hospital.example:6514")))
    per_ae = {row["Application Entity"]: row for row in tables["DICOM over TLS per Application Entity"]}
    assert per_ae["STORAGE-SCP"]["Peer Certificate Verification"].startswith("Required: a certificate that chains")
    audit = {row["Item"]: row["Value"] for row in tables["Audit Trail"]}
    assert audit["Transmission"] == "Audit Trail Message Transmission Profile - SYSLOG-TLS"
    assert audit["Audit record repository"] == "arr.hospital.example port 6514 (TLS)"
