"""The IHE ATNA audit trail (AU-01..AU-03): the real service, a real syslog collector, DCMTK clients.

A collector (tests/support/syslog_collector.py) listens on loopback over UDP, TCP (octet counting) or
TLS (certificates made here with the `openssl` command); each test provokes an event with a
DICOM client and waits for its message. Every DICOM+RFC3881 message received is checked
against the RELAX NG schema of DICOM PS3.15 A.5.1 (tests/resources/audit-message.rng) and
its syslog header against RFC 5424 (facility authpriv, severity notice, BOM, zoned time).

The spool (AU-02) is tested with the collector down: refused associations with distinct
calling AE titles make messages whose order the test knows; the collector then comes up on
the same port and must receive every one in that order, after a restart too; a small
`spool_max_bytes` must drop the oldest with an ALERT (AU-03 carries that ALERT as well).
"""

from __future__ import annotations

import base64
import getpass
import os
import re
import ssl
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import pytest
from lxml import etree
from pynetdicom.dsutils import decode

import datasets
from helpers import RESOURCES, dcmtk, free_port, service_tool, storescp, wait_for
from syslog_collector import Collector, Message
from tls_pki import Authority

SCHEMA = etree.RelaxNG(etree.parse(str(RESOURCES / "audit-message.rng")))
AUDIT = "DICOM+RFC3881"
ZONED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)\Z")  # A.5.2.5, RFC 5424 6.2.3
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
ILE = "1.2.840.10008.1.2"

APPLICATION_ACTIVITY, BEGIN_TRANSFERRING, INSTANCES_TRANSFERRED = "110100", "110102", "110104"
QUERY, SECURITY_ALERT = "110112", "110113"
APPLICATION_START, APPLICATION_STOP = "110120", "110121"
NODE_AUTHENTICATION, SECURITY_CONFIGURATION = "110126", "110129"
SOURCE, DESTINATION, APPLICATION = "110153", "110152", "110150"


# --- reading what the collector got ------------------------------------------------------------

def xml(message: Message) -> etree._Element:
    """The audit message in `message`, its syslog framing and its schema checked."""
    assert (message.msgid, message.facility, message.severity) == (AUDIT, 10, 5), message
    assert message.bom and message.app_name == "appliance" and message.procid.isdigit(), message
    assert ZONED.match(message.timestamp), message.timestamp
    root = etree.fromstring(message.body)
    assert SCHEMA.validate(root), f"{SCHEMA.error_log}\n{message.text}"
    assert ZONED.match(root.find("EventIdentification").get("EventDateTime"))
    return root


def event(root) -> tuple[str, tuple[str, ...]]:
    """(EventID, EventTypeCodes) of an audit message."""
    identification = root.find("EventIdentification")
    return (identification.find("EventID").get("csd-code"),
            tuple(e.get("csd-code") for e in identification.findall("EventTypeCode")))


def audits(messages: list[Message]) -> list[etree._Element]:
    return [xml(m) for m in messages if m.msgid == AUDIT]


def wait_event(collector: Collector, event_id: str, where=lambda root: True, count: int = 1,
               timeout: float = 15.0) -> list[etree._Element]:
    """The first `count` messages of `event_id` that satisfy `where`, once they have arrived."""
    def found(messages):
        matching = [root for root in audits(messages) if event(root)[0] == event_id and where(root)]
        return matching[:count] if len(matching) >= count else None
    return collector.wait_for(found, f"{count} message(s) {event_id}", timeout)


def participant(root, alternative: str) -> etree._Element:
    """The ActiveParticipant whose AlternativeUserID is `alternative` (e.g. AETITLES=CT_1)."""
    found = [p for p in root.findall("ActiveParticipant") if p.get("AlternativeUserID") == alternative]
    assert len(found) == 1, etree.tostring(root).decode()
    return found[0]


def roles(element) -> list[str]:
    return [r.get("csd-code") for r in element.findall("RoleIDCode")]


def objects(root, id_type: str) -> list[etree._Element]:
    return [o for o in root.findall("ParticipantObjectIdentification")
            if o.find("ParticipantObjectIDTypeCode").get("csd-code") == id_type]


def detail(element, kind: str) -> str:
    found = [d for d in element.findall("ParticipantObjectDetail") if d.get("type") == kind]
    assert len(found) == 1
    return base64.b64decode(found[0].get("value")).decode("utf-8")


def classes(study) -> dict[str, int]:
    return {c.get("UID"): int(c.get("NumberOfInstances")) for c in study.findall("ParticipantObjectDescription/SOPClass")}


def refused_caller(root) -> str:
    """The calling AE title of a Node Authentication alert."""
    return root.find("ParticipantObjectIdentification/ParticipantObjectName").text or ""


def refuse(app, calling: str) -> None:
    """An association refused for its called AE title (AS-04): one Security Alert."""
    dcmtk("echoscu", "-aet", calling, "-aec", "NOT_THIS_BOX", "127.0.0.1", str(app.storage_port))
    app.wait_log(rf"{calling}@127\.0\.0\.1:\d+: association rejected")


def spool_files(app) -> list[Path]:
    directory = app.data_dir / "audit-spool"
    return sorted(directory.glob("*.msg")) if directory.exists() else []


def audited(overrides: dict, url: str) -> dict:
    return {**overrides, "audit": {**overrides.get("audit", {}), "collector": url}}


# --- every event, over TCP ------------------------------------------------------------------------

def study_files(directory: Path) -> dict[str, list[Path]]:
    """Study A of patient P-A (3 CT, 1 MR) and study B of patient P-B (2 CT)."""
    directory.mkdir()
    made = {"A": [], "B": []}
    study_a, study_b = "1.2.826.0.1.3680043.9.7433.90.1", "1.2.826.0.1.3680043.9.7433.90.2"
    for n, sop_class in enumerate((datasets.CT, datasets.CT, datasets.CT, datasets.MR)):
        ds = datasets.image(sop_class, rows=8, columns=8, patient_id="P-A", patient_name="Alpha^Anne",
                            study_uid=study_a, StudyDescription="HEAD", AccessionNumber="ACC-A")
        made["A"].append(datasets.write(ds, directory / f"a{n}.dcm"))
    for n in range(2):
        ds = datasets.image(datasets.CT, rows=8, columns=8, patient_id="P-B", patient_name="Beta", study_uid=study_b)
        made["B"].append(datasets.write(ds, directory / f"b{n}.dcm"))
    return made


def test_every_event_reaches_a_tcp_collector(make_appliance, tmp_path):
    """AU-01, AU-03: start; a reload through the service tool; associations refused for the
    called AE title and the calling-AE allow-list; instances received (one message per study
    when the association ends); a C-FIND; a C-MOVE sent (Begin Transferring, then Instances
    Transferred) and one that fails (its failure, and the service's ALERT line); stop."""
    dest_port, down_port = free_port(), free_port()
    remote = [{"ae_title": "DEST", "host": "127.0.0.1", "port": dest_port},
              {"ae_title": "DOWN", "host": "127.0.0.1", "port": down_port}]
    with Collector("tcp", free_port()) as collector:
        app = make_appliance(audited({"remote_aes": remote}, collector.url))
        pid = str(app.proc.pid)

        start, = wait_event(collector, APPLICATION_ACTIVITY)
        assert event(start) == (APPLICATION_ACTIVITY, (APPLICATION_START,))
        application = participant(start, "AETITLES=EX_STORE_SCP;EX_QUERY_SCP;EX_STORE_SCU")
        assert application.get("UserID") == pid and roles(application) == [APPLICATION]

        # A reload the service tool asks for: the calling-AE allow-list is a security setting.
        result = service_tool(app.config_path, "access", "allow", "STORAGE-SCP", "--calling", "CT_1")
        assert result.returncode == 0, result.stderr
        change, = wait_event(collector, SECURITY_ALERT, lambda r: SECURITY_CONFIGURATION in event(r)[1])
        assert change.find("EventIdentification").get("EventOutcomeIndicator") == "0"
        subject, = objects(change, "12")  # (12, RFC-3881, "URI"): the configuration file
        assert subject.get("ParticipantObjectID") == app.config_path.resolve().as_uri()
        assert "storage_scp.accepted_calling_aes" in detail(subject, "Alert Description")

        # Refused: the called AE title (AS-04), then a calling AE not in the allow-list (AS-05).
        refuse(app, "INTRUDER")
        dcmtk("echoscu", "-aet", "OTHER", "-aec", "EX_STORE_SCP", "127.0.0.1", str(app.storage_port))
        for calling, requirement in (("INTRUDER", "AS-04"), ("OTHER", "AS-05")):
            alert, = wait_event(collector, SECURITY_ALERT, lambda r, c=calling: refused_caller(r) == c)
            assert event(alert)[1] == (NODE_AUTHENTICATION,)
            assert alert.find("EventIdentification").get("EventOutcomeIndicator") == "4"
            peer = participant(alert, f"AETITLES={calling}")
            assert peer.get("NetworkAccessPointID") == "127.0.0.1" and peer.get("NetworkAccessPointTypeCode") == "2"
            node, = objects(alert, "110182")
            assert node.get("ParticipantObjectID") == "127.0.0.1"
            assert f"calling AE {calling}" in detail(node, "Alert Description")
            assert requirement in detail(node, "Alert Description")
            assert participant(alert, "AETITLES=EX_STORE_SCP").get("UserID") == pid

        # Two studies on one association: one message each, when the association has ended.
        files = study_files(tmp_path / "files")
        result = dcmtk("storescu", "-aet", "CT_1", "-aec", "EX_STORE_SCP", "127.0.0.1", str(app.storage_port),
                       *map(str, files["A"] + files["B"]))
        assert result.returncode == 0, result.stderr
        received = wait_event(collector, INSTANCES_TRANSFERRED, count=2)
        by_patient = {objects(r, "2")[0].get("ParticipantObjectID"): r for r in received}
        assert set(by_patient) == {"P-A", "P-B"}
        a = by_patient["P-A"]
        assert a.find("EventIdentification").get("EventActionCode") == "C"
        study, = objects(a, "110180")
        assert study.get("ParticipantObjectID") == "1.2.826.0.1.3680043.9.7433.90.1"
        assert classes(study) == {datasets.CT: 3, datasets.MR: 1}
        assert study.find("ParticipantObjectDescription/Accession").get("Number") == "ACC-A"
        assert objects(a, "2")[0].findtext("ParticipantObjectName") == "Alpha^Anne"
        sender, receiver = participant(a, "AETITLES=CT_1"), participant(a, "AETITLES=EX_STORE_SCP")
        assert roles(sender) == [SOURCE] and sender.get("UserIsRequestor") == "true"
        assert roles(receiver) == [DESTINATION] and receiver.get("UserID") == pid
        assert classes(objects(by_patient["P-B"], "110180")[0]) == {datasets.CT: 2}

        # A C-FIND: the SOP class queried, the identifier as sent, its transfer syntax.
        dcmtk("findscu", "-S", "-aet", "VIEWER", "-aec", "EX_QUERY_SCP", "-k", "QueryRetrieveLevel=STUDY",
              "-k", "PatientID=P-A", "-k", "StudyInstanceUID", "127.0.0.1", str(app.qr_port))
        query, = wait_event(collector, QUERY)
        sop, = objects(query, "110181")
        assert sop.get("ParticipantObjectID") == STUDY_ROOT_FIND
        syntax = detail(sop, "TransferSyntax")
        identifier = decode(BytesIO(base64.b64decode(sop.findtext("ParticipantObjectQuery"))), syntax == ILE, True)
        assert identifier.PatientID == "P-A" and identifier.QueryRetrieveLevel == "STUDY"
        assert roles(participant(query, "AETITLES=VIEWER")) == [SOURCE]
        assert roles(participant(query, "AETITLES=EX_QUERY_SCP")) == [DESTINATION]

        # A C-MOVE of study A to DEST: Begin Transferring, then what was sent.
        (tmp_path / "dest").mkdir()
        with storescp(dest_port, "DEST", tmp_path / "dest"):
            result = dcmtk("movescu", "-S", "-aet", "MOVER", "-aec", "EX_QUERY_SCP", "-aem", "DEST",
                           "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID=1.2.826.0.1.3680043.9.7433.90.1",
                           "127.0.0.1", str(app.qr_port))
            assert result.returncode == 0, result.stderr
        begin, = wait_event(collector, BEGIN_TRANSFERRING)
        sent, = wait_event(collector, INSTANCES_TRANSFERRED,
                           lambda r: r.find("EventIdentification").get("EventActionCode") == "R")
        for root in (begin, sent):
            assert roles(participant(root, "AETITLES=EX_STORE_SCU")) == [SOURCE]
            destination = participant(root, "AETITLES=DEST")
            assert roles(destination) == [DESTINATION] and destination.get("NetworkAccessPointID") == "127.0.0.1"
            assert participant(root, "AETITLES=MOVER").get("UserIsRequestor") == "true"
            assert classes(objects(root, "110180")[0]) == {datasets.CT: 3, datasets.MR: 1}
            assert objects(root, "2")[0].get("ParticipantObjectID") == "P-A"
        assert sent.find("EventIdentification").get("EventOutcomeIndicator") == "0"

        # A C-MOVE to a destination that does not listen: a failed transfer, and the ALERT line.
        dcmtk("movescu", "-S", "-aet", "MOVER", "-aec", "EX_QUERY_SCP", "-aem", "DOWN",
              "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID=1.2.826.0.1.3680043.9.7433.90.2",
              "127.0.0.1", str(app.qr_port))
        failed, = wait_event(collector, INSTANCES_TRANSFERRED,
                             lambda r: r.find("EventIdentification").get("EventOutcomeIndicator") == "4")
        assert "no association" in failed.findtext("EventIdentification/EventOutcomeDescription")
        assert classes(objects(failed, "110180")[0]) == {datasets.CT: 2}
        alarm = collector.wait_for(lambda found: [m for m in found if m.msgid == "ALERT"], "the ALERT line")[0]
        assert (alarm.facility, alarm.severity, alarm.bom) == (3, 1, True)
        assert alarm.text.startswith("ALERT appliance.storage_scu: ") and "export stopped" in alarm.text

        assert app.stop() == 0
        stop, = wait_event(collector, APPLICATION_ACTIVITY, lambda r: APPLICATION_STOP in event(r)[1])
        assert participant(stop, "AETITLES=EX_STORE_SCP;EX_QUERY_SCP;EX_STORE_SCU").get("UserID") == pid
        assert not collector.malformed and not collector.truncated


def test_udp_collector_gets_one_datagram_per_message(make_appliance):
    """AU-01: RFC 5426, each message one datagram (the collector parses each as one message)."""
    with Collector("udp", free_port()) as collector:
        app = make_appliance(audited({}, collector.url))
        wait_event(collector, APPLICATION_ACTIVITY)
        refuse(app, "UDP_PEER")
        alert, = wait_event(collector, SECURITY_ALERT)
        assert refused_caller(alert) == "UDP_PEER"
        assert not collector.malformed


# --- TLS ------------------------------------------------------------------------------------------------

@pytest.fixture
def pki(tmp_path) -> SimpleNamespace:
    """A hospital CA with the collector's certificate (for 127.0.0.1) and the box's, and another
    CA with a certificate for the same address that the box must not trust."""
    hospital = Authority(tmp_path / "hospital", "Hospital CA")
    return SimpleNamespace(ca=hospital, collector=hospital.issue("collector", san="IP:127.0.0.1"),
                           box=hospital.issue("appliance-box"),
                           impostor=Authority(tmp_path / "other", "Other CA").issue("impostor", san="IP:127.0.0.1"))


def server_context(pki: SimpleNamespace, issued) -> ssl.SSLContext:
    """The collector's side: its certificate, and a client certificate from the hospital CA required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(issued.certificate, issued.key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(pki.ca.certificate)
    return context


def test_tls_collector_is_verified_and_sees_the_box_certificate(make_appliance, pki):
    """AU-01 (RFC 5425): the box checks the collector's certificate against tls.ca_bundle, so
    an impostor on the collector's address gets nothing and the messages wait in the spool
    (AU-02); the real collector then gets them in order, and the box's certificate."""
    port = free_port()
    tls = {"certificate": str(pki.box.certificate), "key": str(pki.box.key), "ca_bundle": str(pki.ca.certificate)}
    with Collector("tls", port, server_context(pki, pki.impostor)) as impostor:
        app = make_appliance(audited({"tls": tls}, f"tls://127.0.0.1:{port}"))
        refuse(app, "BEFORE_TRUST")
        wait_for(lambda: len(spool_files(app)) >= 2, "two messages in the spool")
        app.wait_log("audit: the collector tls://127.0.0.1:\\d+ cannot be reached")
        assert impostor.connections and not impostor.messages
    with Collector("tls", port, server_context(pki, pki.collector)) as collector:
        wait_event(collector, APPLICATION_ACTIVITY)
        alert, = wait_event(collector, SECURITY_ALERT)
        assert refused_caller(alert) == "BEFORE_TRUST"
        assert [event(r)[0] for r in audits(collector.messages)][:2] == [APPLICATION_ACTIVITY, SECURITY_ALERT]
        subject = dict(item for rdn in collector.messages[0].peer_certificate["subject"] for item in rdn)
        assert subject["commonName"] == "appliance-box"
        wait_for(lambda: not spool_files(app), "the spool to empty")


# --- the spool (AU-02) --------------------------------------------------------------------------------------

def test_collector_down_then_up_gets_every_message_in_order(make_appliance):
    """AU-02: messages made while the TCP collector is down are spooled on disk and reach it,
    all and in order, once it listens again; later ones follow them."""
    port = free_port()
    app = make_appliance(audited({}, f"tcp://127.0.0.1:{port}"))
    callers = [f"CALLER_{n}" for n in range(1, 7)]
    for calling in callers:
        refuse(app, calling)
    wait_for(lambda: len(spool_files(app)) == 1 + len(callers), "every message in the spool")
    status = service_tool(app.config_path, "status")
    assert f"audit trail: to tcp://127.0.0.1:{port}\nWARNING: {1 + len(callers)} audit messages (" in status.stdout, \
        status.stdout
    with Collector("tcp", port) as collector:
        wait_event(collector, SECURITY_ALERT, count=len(callers))
        refuse(app, "CALLER_AFTER")
        wait_event(collector, SECURITY_ALERT, count=len(callers) + 1)
        roots = audits(collector.messages)
        assert event(roots[0]) == (APPLICATION_ACTIVITY, (APPLICATION_START,))
        assert [refused_caller(r) for r in roots[1:]] == callers + ["CALLER_AFTER"]
        assert not spool_files(app) and not collector.truncated


def test_a_restart_sends_the_spool_first(make_appliance):
    """AU-02: what the spool holds when the service stops (its Application Stop included) is sent
    after the next start, before anything of the new run."""
    port = free_port()
    app = make_appliance(audited({}, f"tcp://127.0.0.1:{port}"))
    first_pid = str(app.proc.pid)
    refuse(app, "OLD_1")
    refuse(app, "OLD_2")
    assert app.stop() == 0
    assert len(spool_files(app)) == 4  # start, two alerts, stop
    with Collector("tcp", port) as collector:
        app.start()
        found = collector.wait_count(5)
        roots = audits(found)
        assert [event(r) for r in roots] == [(APPLICATION_ACTIVITY, (APPLICATION_START,)),
                                             (SECURITY_ALERT, (NODE_AUTHENTICATION,)),
                                             (SECURITY_ALERT, (NODE_AUTHENTICATION,)),
                                             (APPLICATION_ACTIVITY, (APPLICATION_STOP,)),
                                             (APPLICATION_ACTIVITY, (APPLICATION_START,))]
        assert [refused_caller(r) for r in roots[1:3]] == ["OLD_1", "OLD_2"]
        assert [m.procid for m in found] == [first_pid] * 4 + [str(app.proc.pid)]
        wait_for(lambda: not spool_files(app), "the spool to empty")


def test_a_full_spool_drops_the_oldest_with_an_alert(make_appliance):
    """AU-02: beyond audit.spool_max_bytes the oldest messages go, with an ALERT line in the
    service log; the collector later gets the newest ones in order and the ALERTs (AU-03),
    the last one counting every message dropped."""
    port = free_port()
    limit = 5000  # two or three messages
    app = make_appliance(audited({"audit": {"spool_max_bytes": limit}}, f"tcp://127.0.0.1:{port}"))
    callers = [f"FULL_{n:02d}" for n in range(1, 9)]
    for calling in callers:
        refuse(app, calling)
    app.wait_log(r"ALERT appliance\.audit: audit: the spool is full \(audit\.spool_max_bytes 5000\): the \d+ "
                 r"oldest messages were dropped")
    wait_for(lambda: spool_files(app) and b"FULL_08" in spool_files(app)[-1].read_bytes(), "the last alert spooled")
    assert sum(p.stat().st_size for p in spool_files(app)) <= limit
    with Collector("tcp", port) as collector:
        summary = collector.wait_for(lambda found: [m for m in found if m.msgid == "ALERT" and "in all" in m.text],
                                     "the ALERT counting the dropped messages")[0]
        dropped = int(re.search(r"audit: (\d+) messages in all were dropped", summary.text).group(1))
        got = [refused_caller(r) for r in audits(collector.messages)
               if event(r)[0] == SECURITY_ALERT]
        assert got and got[-1] == "FULL_08" and got == callers[len(callers) - len(got):]
        assert dropped >= len(callers) + 1 - len(got)  # the Application Start went too
        assert summary.severity == 1 and collector.messages[-1] is summary
    assert app.log().count("the spool is full") == 1


# --- the calls other parts make: a TLS handshake that failed; deletions and edits (MG-02, MG-03) ----------

def test_a_failed_tls_handshake_gives_a_node_authentication_alert(make_appliance, pki):
    """AU-01, SE-07: plain DICOM on the TLS port, refused before any A-ASSOCIATE-RQ (so no AE
    titles): a Security Alert naming the peer by its address, with the reason."""
    tls = {"certificate": str(pki.box.certificate), "key": str(pki.box.key), "ca_bundle": str(pki.ca.certificate)}
    with Collector("tcp", free_port()) as collector:
        app = make_appliance(audited({"tls": tls, "storage_scp": {"tls_port": free_port()}}, collector.url))
        wait_event(collector, APPLICATION_ACTIVITY)
        assert dcmtk("echoscu", "-aec", "EX_STORE_SCP", "127.0.0.1",
                     str(app.config["storage_scp"]["tls_port"])).returncode != 0
        alert, = wait_event(collector, SECURITY_ALERT)
    assert event(alert) == (SECURITY_ALERT, (NODE_AUTHENTICATION,))
    assert alert.find("EventIdentification").get("EventOutcomeIndicator") == "4"
    peer, = [p for p in alert.findall("ActiveParticipant") if p.get("UserID") == "127.0.0.1"]
    assert peer.get("NetworkAccessPointID") == "127.0.0.1" and peer.get("UserIsRequestor") == "false"
    node, = objects(alert, "110182")
    assert node.get("ParticipantObjectID") == "127.0.0.1"
    assert detail(node, "Alert Description").startswith(
        "TLS connection refused: the peer did not start a TLS handshake on the TLS port")
    assert participant(alert, "AETITLES=EX_STORE_SCP").get("UserID") == str(app.proc.pid)


def test_deletion_and_patient_record_messages_follow_the_schema():
    """AU-01: the builders the study delete and edit commands call give schema-valid
    messages with the codes of PS3.15 A.5.3.8 and A.5.3.14; a message without the name or
    query the schema requires is refused, so the schema check can fail."""
    import datetime

    from appliance.audit import messages as m

    when = datetime.datetime.now().astimezone()
    operator = m.Participant("root@box", True, name="root")
    process = m.Participant(str(os.getpid()), False, alternative=m.ae_titles("EX_STORE_SCP"), address="box")
    study = m.Study("1.2.3.4", ((datasets.CT, 12),), "ACC-9", "CT CHEST")
    deleted = etree.fromstring(m.study_deleted("box", when, m.SUCCESS, (operator, process), (study,),
                                               m.Patient("P-9", "Doe^Jane")))
    edited = etree.fromstring(m.patient_record("box", when, "U", m.SUCCESS, (operator,), m.Patient("P-9", "Roe^Jane")))
    for root in (deleted, edited):
        assert SCHEMA.validate(root), SCHEMA.error_log
    assert event(deleted) == ("110105", ()) and deleted.find("EventIdentification").get("EventActionCode") == "D"
    assert classes(objects(deleted, "110180")[0]) == {datasets.CT: 12}
    assert event(edited) == ("110110", ()) and edited.find("EventIdentification").get("EventActionCode") == "U"
    assert objects(edited, "2")[0].findtext("ParticipantObjectName") == "Roe^Jane"
    nameless = etree.fromstring(etree.tostring(deleted).replace(b"<ParticipantObjectName>CT CHEST</ParticipantObjectName>",
                                                                b""))
    assert not SCHEMA.validate(nameless)


def test_a_study_edit_and_a_deletion_are_audited(make_appliance, tmp_path):
    """AU-01, MG-02, MG-03: `service-tool study edit` gives a Patient Record update with the
    new name, `study delete` a DICOM Study Deleted with what went; both name the operator."""
    with Collector("udp", free_port()) as collector:
        app = make_appliance(audited({}, collector.url))
        files = study_files(tmp_path / "files")
        result = dcmtk("storescu", "-aec", "EX_STORE_SCP", "127.0.0.1", str(app.storage_port), *map(str, files["A"]))
        assert result.returncode == 0, result.stderr
        study_a = "1.2.826.0.1.3680043.9.7433.90.1"
        result = service_tool(app.config_path, "study", "edit", study_a, "--set", "PatientName=Alpha^Anna")
        assert result.returncode == 0, result.stderr
        edited, = wait_event(collector, "110110")
        assert edited.find("EventIdentification").get("EventActionCode") == "U"
        assert objects(edited, "2")[0].findtext("ParticipantObjectName") == "Alpha^Anna"
        result = service_tool(app.config_path, "study", "delete", study_a, "--yes")
        assert result.returncode == 0, result.stderr
        deleted, = wait_event(collector, "110105")
        assert deleted.find("EventIdentification").get("EventActionCode") == "D"
        study, = objects(deleted, "110180")
        assert study.get("ParticipantObjectID") == study_a and classes(study) == {datasets.CT: 3, datasets.MR: 1}
        assert objects(deleted, "2")[0].get("ParticipantObjectID") == "P-A"
        operator = os.environ.get("SUDO_USER") or getpass.getuser()  # as the tool names who asks
        for root in (edited, deleted):
            people = [p for p in root.findall("ActiveParticipant") if p.get("UserIsRequestor") == "true"]
            assert [p.get("UserID") for p in people] == [operator]
