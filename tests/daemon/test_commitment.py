"""Storage Commitment Push Model against the real daemon (SC-01..SC-26, PC-13, LG-04), with a
pynetdicom modality that sends N-ACTIONs and receives the N-EVENT-REPORTs on its own
association or on one STORAGE-SCP opens to its listener."""

from __future__ import annotations

import signal
import threading
from io import BytesIO

import pytest
from pynetdicom.dimse_messages import N_EVENT_REPORT_RSP
from pynetdicom.dimse_primitives import N_ACTION, N_EVENT_REPORT
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import P_DATA_TF

import datasets
import pdus
import scu
from commitment_peer import SCPM, SCPM_INSTANCE, Modality, n_action, n_action_status, request
from helpers import dcmtk, free_port, says_why
from query_archive import uid

pytestmark = pytest.mark.index_backends  # Storage Commitment on SQLite and on PostgreSQL (IX-01)

MODALITY = "MODALITY1"
FAST_RETRY = {"report_retry_interval": 0.3, "report_attempts": 2}


def commit_archive(make_appliance, tmp_path, count: int = 3, **storage_scp) -> tuple:
    """An appliance with the modality in its remote AE table and study S60 of `count` CT
    instances stored by the modality; returns (appliance, modality, [(class, instance)])."""
    port = free_port()
    app = make_appliance({"remote_aes": [{"ae_title": MODALITY, "host": "127.0.0.1", "port": port}],
                          "storage_scp": storage_scp})
    references = []
    with scu.association(app.storage_port, app.storage_title, calling=MODALITY) as assoc:
        for n in range(1, count + 1):
            ds = datasets.image(rows=8, columns=8, study_uid=uid("S60"), series_uid=uid("S60.1"),
                                sop_instance_uid=uid(f"S60.1.{n}"), InstanceNumber=str(n))
            assert scu.send_file(assoc, datasets.write(ds, tmp_path / f"{n}.dcm")) == 0
            references.append((datasets.CT, uid(f"S60.1.{n}")))
    return app, Modality(MODALITY, port), references


def acknowledged(app, modality: Modality, transaction_uid: str, references: list) -> None:
    """One N-ACTION on an association of its own, answered 0000; the association released."""
    assoc = modality.associate(app.storage_port)
    try:
        assert n_action(assoc, request(transaction_uid, references)) == 0x0000
    finally:
        assoc.release()


def test_all_committed_is_reported_on_the_same_association(make_appliance, tmp_path):
    """SC-02, SC-06, SC-08, SC-11: N-ACTION-RSP 0000, then event type 1 on that association."""
    app, modality, references = commit_archive(make_appliance, tmp_path)
    report = modality.commit(app.storage_port, "1.2.3.100", references)
    assert (report.event_type, report.transaction_uid, report.own_association) == (1, "1.2.3.100", True)
    assert report.committed == references and report.failed == []
    app.wait_log(r"STORAGE-SCP to MODALITY1: N-EVENT-REPORT transaction 1.2.3.100 \(event type 1, 3 committed, "
                 r"0 failed\) on the N-ACTION's association: status 0x0000, delivered")
    assert app.index_rows("SELECT COUNT(*) FROM commitment_request") == [(0,)]


def test_failures_carry_their_reasons(make_appliance, tmp_path):
    """SC-06, SC-08, SC-10: unknown instance 0112, another class 0119, a class commitment
    does not cover 0122, a file gone from the store 0110; event type 2."""
    app, modality, references = commit_archive(make_appliance, tmp_path)
    (path,) = datasets.stored_paths(app, references[2][1])
    path.unlink()
    asked = [references[0], (datasets.CT, "1.2.3.404"), (datasets.MR, references[1][1]),
             ("1.2.840.10008.5.1.4.1.1.481.1", references[1][1]), references[2]]
    report = modality.commit(app.storage_port, "1.2.3.101", asked)
    assert report.event_type == 2 and report.committed == [references[0]]
    assert report.failed == [(datasets.CT, "1.2.3.404", 0x0112), (datasets.MR, references[1][1], 0x0119),
                             ("1.2.840.10008.5.1.4.1.1.481.1", references[1][1], 0x0122),
                             (datasets.CT, references[2][1], 0x0110)]


def test_an_instance_stored_after_the_request_is_not_committed(make_appliance, tmp_path):
    """SC-07: decided at receipt, never cached."""
    app, modality, references = commit_archive(make_appliance, tmp_path, count=1)
    late = datasets.image(rows=8, columns=8, study_uid=uid("S60"), series_uid=uid("S60.1"),
                          sop_instance_uid=uid("S60.1.9"))
    assoc = modality.associate(app.storage_port)
    try:
        assert n_action(assoc, request("1.2.3.102", references + [(datasets.CT, uid("S60.1.9"))])) == 0x0000
        (report,) = modality.wait_for(1)
        assert scu.send_file(assoc, datasets.write(late, tmp_path / "late.dcm")) == 0
    finally:
        assoc.release()
    assert report.failed == [(datasets.CT, uid("S60.1.9"), 0x0112)]


@pytest.mark.parametrize("change, code, why", [
    (lambda ds: ds, 0x0123, "Action Type ID 2 is not 1"),
    (lambda ds: delattr(ds, "TransactionUID"), 0x0120, "Transaction UID is missing"),
    (lambda ds: setattr(ds, "TransactionUID", ""), 0x0121, "Transaction UID is empty"),
    (lambda ds: delattr(ds, "ReferencedSOPSequence"), 0x0120, "Referenced SOP Sequence is missing"),
    (lambda ds: setattr(ds, "ReferencedSOPSequence", []), 0x0121, "Referenced SOP Sequence is empty"),
    (lambda ds: delattr(ds.ReferencedSOPSequence[1], "ReferencedSOPInstanceUID"), 0x0120,
     "Referenced SOP Instance UID is missing in item 2"),
    (lambda ds: setattr(ds.ReferencedSOPSequence[0], "ReferencedSOPClassUID", ""), 0x0121,
     "Referenced SOP Class UID is empty in item 1"),
], ids=["action-type", "no-transaction", "empty-transaction", "no-sequence", "empty-sequence", "no-instance",
        "empty-class"])
def test_invalid_requests_are_refused_and_not_kept(make_appliance, tmp_path, change, code, why):
    """SC-01, SC-04, SC-05: the status with the reason in its Error Comment (UL-05), a line with
    that reason (a WARNING: the requester's mistake, issue 22), and no report."""
    app, modality, references = commit_archive(make_appliance, tmp_path, count=2)
    ds = request("1.2.3.103", references)
    change(ds)
    assoc = modality.associate(app.storage_port)
    try:
        refused = n_action_status(assoc, ds, action_type=2 if code == 0x0123 else 1)
    finally:
        assoc.release()
    assert refused.Status == code
    logged = app.wait_log(rf"WARNING appliance.commitment: .*N-ACTION #1 \(Storage Commitment\) status 0x{code:04X}: "
                          rf"({why}.*)")
    assert says_why(refused.get("ErrorComment"), logged.group(1)), (refused.get("ErrorComment"), logged.group(1))
    assert app.index_rows("SELECT COUNT(*) FROM commitment_request") == [(0,)] and modality.received == []


def test_a_request_the_index_cannot_keep_is_0110_with_an_alert(make_appliance, tmp_path):
    """SC-03, LG-09: the index file removed under the running service: 0110, an ALERT naming
    the cause (the service's own problem), the same reason in the Error Comment (UL-05)."""
    app, modality, references = commit_archive(make_appliance, tmp_path, count=1)
    app.remove_index()
    assoc = modality.associate(app.storage_port)
    try:
        refused = n_action_status(assoc, request("1.2.3.104", references))
    finally:
        assoc.release()
    assert refused.Status == 0x0110
    logged = app.wait_log(r"ALERT appliance.commitment: .*N-ACTION #1 \(Storage Commitment\) transaction 1.2.3.104 "
                          r"status 0x0110: (the request cannot be kept: .*)")
    assert says_why(refused.get("ErrorComment"), logged.group(1)), (refused.get("ErrorComment"), logged.group(1))
    assert modality.received == []


@pytest.mark.parametrize("release_at", ["after-the-response", "instead-of-answering"])
def test_a_peer_that_releases_gets_the_report_on_a_new_association(make_appliance, tmp_path, modalities,
                                                                     release_at):
    """SC-12, SC-13, SC-14, SC-26, PC-13: a modality (a raw socket here) releases right after
    the N-ACTION-RSP, or answers the report with an A-RELEASE-RQ; the release is answered,
    and STORAGE-SCP calls the modality's listener under its own title, proposing SCPM with
    itself as SCP, and delivers the report there."""
    app, modality, references = commit_archive(make_appliance, tmp_path)
    modalities.append(modality.listen())
    n_action_rq = N_ACTION()
    n_action_rq.MessageID, n_action_rq.ActionTypeID = 7, 1
    n_action_rq.RequestedSOPClassUID, n_action_rq.RequestedSOPInstanceUID = SCPM, SCPM_INSTANCE
    n_action_rq.ActionInformation = BytesIO(encode(request("1.2.3.104", references), True, True))
    with pdus.associated(app.storage_port, (SCPM, (datasets.ILE,)), calling=MODALITY) as sock:
        sock.sendall(b"".join(pdus.p_data(n_action_rq)))
        reader = pdus.Reader(sock)
        assert reader.pdu()[:1] == b"\x04"  # the N-ACTION-RSP
        if release_at == "instead-of-answering":
            assert reader.pdu()[:1] == b"\x04"  # the N-EVENT-REPORT-RQ, not answered
        sock.sendall(pdus.RELEASE_RQ)
        while (pdu := reader.pdu())[:1] == b"\x04":  # a report that was already on its way
            pass
        assert pdu[:1] == b"\x06", pdu  # A-RELEASE-RP
    (report,) = modality.wait_for(1)
    assert (report.own_association, report.calling, report.event_type, report.committed) == (
        False, "EX_STORE_SCP", 1, references)
    (proposed,) = modality.proposals
    assert sorted(proposed) == sorted([(SCPM, [datasets.ELE]), (SCPM, [datasets.ILE])])
    app.wait_log(r"INFO appliance.commitment: STORAGE-SCP to MODALITY1@127.0.0.1:\d+: N-EVENT-REPORT transaction "
                 r"1.2.3.104 \(event type 1, 3 committed, 0 failed\) over a new association: status 0x0000, delivered")
    app.wait_log(r"STORAGE-SCP #\d+ MODALITY1@\S+: association released")


def test_always_new_association_when_configured(make_appliance, tmp_path, modalities):
    """SC-15, SC-16, SC-21, SC-22: with the option on, reports never use the modality's
    association. 50 requests acknowledged while its listener is down wait together and then
    arrive over one new association."""
    app, modality, references = commit_archive(make_appliance, tmp_path, count=1,
                                               always_new_association_for_reports=True,
                                               report_retry_interval=2.0, report_attempts=5)
    assoc = modality.associate(app.storage_port)
    try:
        for n in range(50):
            assert n_action(assoc, request(f"1.2.3.2{n:02d}", references), msg_id=n + 1) == 0x0000
    finally:
        assoc.release()
    app.wait_log(r"N-EVENT-REPORT transaction 1.2.3.249 .* failed \(attempt 1 of 6\): no association")
    modalities.append(modality.listen())
    received = modality.wait_for(50)
    assert all(not r.own_association and r.calling == "EX_STORE_SCP" for r in received)
    assert sorted(r.transaction_uid for r in received) == sorted(f"1.2.3.2{n:02d}" for n in range(50))
    assert len(modality.proposals) == 1


def test_a_listener_that_is_down_gets_the_report_when_it_comes_up(make_appliance, tmp_path, modalities):
    """SC-20: failed attempts are logged and retried report_retry_interval apart."""
    app, modality, references = commit_archive(make_appliance, tmp_path, always_new_association_for_reports=True,
                                               **FAST_RETRY)
    acknowledged(app, modality, "1.2.3.105", references)
    app.wait_log(r"N-EVENT-REPORT transaction 1.2.3.105 .* failed \(attempt 1 of 3\): no association: cannot connect")
    modalities.append(modality.listen())
    (report,) = modality.wait_for(1)
    assert report.transaction_uid == "1.2.3.105" and not report.own_association


def test_a_report_is_abandoned_after_the_last_attempt(make_appliance, tmp_path):
    app, modality, references = commit_archive(make_appliance, tmp_path, always_new_association_for_reports=True,
                                               **FAST_RETRY)
    acknowledged(app, modality, "1.2.3.106", references)
    app.wait_log(r"ERROR appliance.commitment: STORAGE-SCP to MODALITY1: N-EVENT-REPORT transaction 1.2.3.106 "
                 r"\(event type 1, 3 committed, 0 failed\) abandoned after 3 failed attempts")
    assert app.index_rows("SELECT COUNT(*) FROM commitment_request") == [(0,)]


def test_an_acknowledged_request_survives_a_kill(make_appliance, tmp_path, modalities):
    """SC-24: the report is out on the modality's association but not yet answered when the
    service is killed; after the restart it is delivered over a new association."""
    app, modality, references = commit_archive(make_appliance, tmp_path)
    answered = threading.Event()
    modality.answer = lambda report: (answered.wait(10), 0x0000)[1] if report.own_association else 0x0000
    assoc = modality.associate(app.storage_port)
    try:
        assert n_action(assoc, request("1.2.3.107", references)) == 0x0000
        modality.wait_for(1)
        app.signal(signal.SIGKILL)
        app.proc.wait(10)
    finally:
        answered.set()
        assoc.abort()
    modalities.append(modality.listen())
    app.start()
    first, again = modality.wait_for(2)
    assert first.own_association and not again.own_association
    assert (again.transaction_uid, again.event_type, again.committed) == ("1.2.3.107", 1, references)
    app.wait_log(r"WARNING appliance.commitment: 1 commitment reports held by associations before the stop are due now")


def test_a_thousand_instances_in_one_request(make_appliance, tmp_path):
    """SC-06, SC-08, SC-21 at scale: 1,000 stored instances, every file read again, one report."""
    app, modality, references = commit_archive(make_appliance, tmp_path, count=0)
    files = tmp_path / "many"
    files.mkdir()
    for n in range(1, 1001):
        ds = datasets.image(rows=8, columns=8, study_uid=uid("S61"), series_uid=uid("S61.1"),
                            sop_instance_uid=uid(f"S61.1.{n}"), InstanceNumber=str(n))
        datasets.write(ds, files / f"{n}.dcm")
        references.append((datasets.CT, uid(f"S61.1.{n}")))
    stored = dcmtk("storescu", "-aet", MODALITY, "-aec", "EX_STORE_SCP", "--scan-directories", "127.0.0.1",
                   str(app.storage_port), str(files), timeout=120)
    assert stored.returncode == 0, stored.stderr
    assoc = modality.associate(app.storage_port)
    try:
        assert n_action(assoc, request("1.2.3.108", references)) == 0x0000
        (report,) = modality.wait_for(1, timeout=60)
    finally:
        assoc.release()
    assert report.event_type == 1 and sorted(report.committed) == sorted(references) and report.failed == []
    app.wait_log(r"transaction 1.2.3.108: 1000 instances, 1000 committed, 0 not \(none failed\), decided and kept in "
                 r"\d+ ms")


def test_report_answers_warning_delivers_failure_retries(make_appliance, tmp_path, modalities):
    """SC-18, SC-19, LG-04: 0107 is delivered with a warning; any other failure status is an
    error, and the report goes again after the retry interval."""
    app, modality, references = commit_archive(make_appliance, tmp_path, always_new_association_for_reports=True,
                                               **FAST_RETRY)
    answers = iter([0x0107, 0xC000, 0x0000])
    modality.answer = lambda report: next(answers)
    modalities.append(modality.listen())
    assoc = modality.associate(app.storage_port)
    try:
        assert n_action(assoc, request("1.2.3.109", references)) == 0x0000
        modality.wait_for(1)
        assert n_action(assoc, request("1.2.3.110", references), msg_id=2) == 0x0000
        modality.wait_for(3)
    finally:
        assoc.release()
    app.wait_log(r"WARNING appliance.commitment: STORAGE-SCP to MODALITY1@\S+: N-EVENT-REPORT transaction 1.2.3.109 .* "
                 r"status 0x0107, delivered")
    app.wait_log(r"ERROR appliance.commitment: STORAGE-SCP to MODALITY1: N-EVENT-REPORT transaction 1.2.3.110 .* "
                 r"failed \(attempt 1 of 3\): over a new association to \S+ the answer was status 0xC000")
    app.wait_log(r"N-EVENT-REPORT transaction 1.2.3.110 .* status 0x0000, delivered")
    assert [r.transaction_uid for r in modality.received] == ["1.2.3.109", "1.2.3.110", "1.2.3.110"]


def test_a_report_not_answered_in_time_goes_over_a_new_association(make_appliance, tmp_path, modalities):
    """SC-23: no N-EVENT-REPORT-RSP within the AE's idle timeout on the modality's association:
    A-ABORT, and the report is delivered over a new one."""
    app, modality, references = commit_archive(make_appliance, tmp_path, idle_timeout=1.0)
    answered = threading.Event()
    modality.answer = lambda report: (answered.wait(10), 0x0000)[1] if report.own_association else 0x0000
    modalities.append(modality.listen())
    assoc = modality.associate(app.storage_port)
    try:
        assert n_action(assoc, request("1.2.3.111", references)) == 0x0000
        first, again = modality.wait_for(2)
    finally:
        answered.set()
        assoc.abort()
    assert first.own_association and not again.own_association and again.transaction_uid == "1.2.3.111"
    app.wait_log(r"no N-EVENT-REPORT-RSP within 1 s \(storage_scp.idle_timeout\); association aborted")


def test_requests_sent_while_a_report_is_out_are_answered_after_it(make_appliance, tmp_path):
    """SC-22: a second N-ACTION arrives while the first report waits for its answer; it is
    served once that answer is in, and its own report follows (a raw-socket modality)."""
    def n_action_pdus(transaction: str, message_id: int) -> bytes:
        rq = N_ACTION()
        rq.MessageID, rq.ActionTypeID, rq.RequestedSOPClassUID, rq.RequestedSOPInstanceUID = \
            message_id, 1, SCPM, SCPM_INSTANCE
        rq.ActionInformation = BytesIO(encode(request(transaction, references), True, True))
        return b"".join(pdus.p_data(rq))

    def report_rsp_pdu(message_id: int) -> bytes:
        rsp = N_EVENT_REPORT()
        rsp.MessageIDBeingRespondedTo, rsp.Status, rsp.AffectedSOPClassUID = message_id, 0, SCPM
        message = N_EVENT_REPORT_RSP()
        message.primitive_to_message(rsp)
        pdu = P_DATA_TF()
        (primitive,) = message.encode_msg(1, 16384)
        pdu.from_primitive(primitive)
        return pdu.encode()

    def command(pdu: bytes):
        (control, data), = [(c, d) for c, d in pdus.pdvs(pdu)]
        assert control & 1, "a command set"
        return decode(BytesIO(data), True, True)

    app, modality, references = commit_archive(make_appliance, tmp_path, count=1)
    with pdus.associated(app.storage_port, (SCPM, (datasets.ILE,)), calling=MODALITY) as sock:
        reader = pdus.Reader(sock)
        sock.sendall(n_action_pdus("1.2.3.112", 1))
        assert command(reader.pdu()).CommandField == 0x8130  # N-ACTION-RSP
        report = command(reader.pdu())
        assert report.CommandField == 0x0100  # N-EVENT-REPORT-RQ
        reader.pdu()  # its Event Information
        sock.sendall(n_action_pdus("1.2.3.113", 2))  # before answering the report
        sock.sendall(report_rsp_pdu(report.MessageID))
        second = command(reader.pdu())
        assert (second.CommandField, second.MessageIDBeingRespondedTo) == (0x8130, 2)
        assert command(reader.pdu()).CommandField == 0x0100  # the second report
        sock.sendall(pdus.RELEASE_RQ)
    app.wait_log(r"N-EVENT-REPORT transaction 1.2.3.112 .* on the N-ACTION's association: status 0x0000, delivered")
    app.wait_log(r"N-ACTION #2 \(Storage Commitment\) transaction 1.2.3.113: 1 instances, 1 committed")
