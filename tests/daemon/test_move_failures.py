"""C-MOVE when something goes wrong, against the real daemon: the first failure stops the export
with A702 and the list of instances not sent (QM-11, QM-12, D-5), warnings still count as sent
(SU-07), cancel (QM-14), a requester that goes away (QM-15), timeouts (SU-10), association
retries (SU-04), the export slots (SU-03) and an index that cannot answer (QM-13)."""

from __future__ import annotations

import threading

import pytest
from pynetdicom.presentation import build_context

import datasets
import scu
from destinations import Destination, cancel, move, move_contexts, move_identifier
from helpers import free_port, says_why, unread_bytes, wait_for
from query_archive import uid

pytestmark = pytest.mark.index_backends  # C-MOVE on SQLite and on PostgreSQL (IX-01)

PID_1 = [uid("S1.1.1"), uid("S1.1.2"), uid("S1.2.1"), uid("S2.1.1")]  # move order of patient PID-1
PATIENT_1 = move_identifier("PATIENT", PatientID="PID-1")


@pytest.fixture(scope="module")
def requester(move_archive):
    with scu.association(move_archive.qr_port, "EX_QUERY_SCP", move_contexts(), calling="VIEWER") as assoc:
        yield assoc


@pytest.fixture
def destinations():
    """Destination factory; every one made is stopped at teardown."""
    made = []

    def make(title: str, port: int, **kwargs) -> Destination:
        made.append(Destination(title, port, **kwargs))
        return made[-1]

    yield make
    for destination in made:
        destination.stop()


def test_a_failed_instance_stops_the_export_with_a702(move_archive, requester, destinations):
    """QM-11, SU-08: the 3rd C-STORE answered A700: nothing more is sent; A702 with Completed 2
    and Failed 2 (the failed one and the one never attempted), listed by UID; an ALERT line.
    UL-05: the A702's Error Comment gives the reason the service log gives."""
    dest = destinations("DEST", move_archive.destination_ports["DEST"], answer=lambda n: 0xA700 if n == 3 else 0)
    responses = move(requester, PATIENT_1, "DEST", "P")
    assert [(r.status, r.counts) for r in responses] == [
        (0xFF00, (4, 0, 0, 0)), (0xFF00, (3, 1, 0, 0)), (0xFF00, (2, 2, 0, 0)), (0xA702, (None, 2, 2, 0))]
    assert responses[-1].failed_uids == PID_1[2:]
    assert [a.sop_instance for a in dest.arrivals] == PID_1[:3]
    assert dest.released.wait(5)  # SU-08: released, not aborted
    move_archive.wait_log(rf"ALERT appliance.storage_scu: STORAGE-SCU #\d+ EX_STORE_SCU->DEST@127.0.0.1:\d+: export "
                          rf"stopped after 2 of 4 instances: the destination answered C-STORE status 0xA700 to "
                          rf"{PID_1[2]}")
    logged = move_archive.wait_log(r"ERROR appliance.qr_scp: .*VIEWER@.*C-MOVE #\d+ to DEST: 2 sent .* status 0xA702: "
                                   rf"(the destination answered C-STORE status 0xA700 to {PID_1[2]})")
    assert says_why(responses[-1].comment, logged.group(1)), (responses[-1].comment, logged.group(1))


def test_destination_that_aborts_is_a702(move_archive, requester, destinations):
    """SU-11: the destination aborts while the 2nd instance is sent: export failure, logged."""
    dest = destinations("DEST", move_archive.destination_ports["DEST"], abort_at=2)
    responses = move(requester, PATIENT_1, "DEST", "P")
    assert (responses[-1].status, responses[-1].counts, responses[-1].failed_uids) == (
        0xA702, (None, 1, 3, 0), PID_1[1:])
    assert len(dest.arrivals) == 2
    move_archive.wait_log(r"ALERT appliance.storage_scu: .*export stopped after 1 of 4 instances: association "
                          r"aborted by the peer \(A-ABORT\)")


@pytest.mark.parametrize("warning", [0xB000, 0xB006, 0xB007, 0x0107, 0x0116])
def test_warning_statuses_count_as_sent(move_archive, requester, destinations, warning):
    """SU-07, QM-09: a warning is a sent instance, counted as Warning; the final status stays 0000."""
    destinations("DEST", move_archive.destination_ports["DEST"], answer=lambda n: warning if n == 2 else 0)
    responses = move(requester, PATIENT_1, "DEST", "P")
    assert responses[2].counts == (2, 2, 0, 1)
    assert (responses[-1].status, responses[-1].counts) == (0x0000, (None, 4, 0, 1))
    move_archive.wait_log(rf"WARNING appliance.storage_scu: .*C-STORE {PID_1[1]} status 0x{warning:04X}")


def test_destination_down_is_a702_with_every_instance_failed(move_archive, requester):
    """QM-12: the association cannot be opened: the initial Pending, then A702, all failed."""
    responses = move(requester, PATIENT_1, "DOWN", "P")
    assert [(r.status, r.counts) for r in responses] == [(0xFF00, (4, 0, 0, 0)), (0xA702, (None, 0, 4, 0))]
    assert responses[-1].failed_uids == PID_1
    move_archive.wait_log(r"ALERT appliance.storage_scu: STORAGE-SCU #\d+ EX_STORE_SCU->DOWN@127.0.0.1:\d+: export "
                          r"stopped after 0 of 4 instances: no association: cannot connect to 127.0.0.1 port \d+: "
                          r"Connection refused")


def test_destination_that_accepts_no_context_is_a702(move_archive, requester, destinations):
    dest = destinations("DEST", move_archive.destination_ports["DEST"],
                        contexts=[build_context(datasets.MR, [datasets.ILE])])
    responses = move(requester, PATIENT_1, "DEST", "P")
    assert responses[-1].status == 0xA702 and responses[-1].failed_uids == PID_1
    assert dest.arrivals == []
    move_archive.wait_log(r"no association: DEST accepted none of the 2 presentation contexts")


def test_another_transfer_syntax_is_converted_losslessly(move_archive, requester, destinations):
    """PC-12: stored Explicit VR, the destination takes Implicit VR only: same elements, same values."""
    dest = destinations("DEST", move_archive.destination_ports["DEST"],
                        contexts=[build_context(datasets.CT, [datasets.ILE])])
    responses = move(requester, move_identifier("STUDY", StudyInstanceUID=uid("S3")), "DEST")
    assert responses[-1].status == 0x0000
    (arrival,) = dest.arrivals
    assert arrival.transfer_syntax == datasets.ILE
    (path,) = datasets.stored_paths(move_archive, uid("S3.1.1"))
    sent = datasets.read_dataset(arrival.data, implicit_vr=True)
    stored = datasets.read_dataset(datasets.dataset_bytes(path), implicit_vr=False)
    raw = lambda ds: [(tag, ds.get_item(tag).value) for tag in ds.keys()]  # value bytes, unconverted
    assert raw(sent) == raw(stored)
    move_archive.wait_log(rf"C-STORE {uid('S3.1.1')} status 0x0000; converted to {datasets.ILE}")


def test_cancel_halts_after_the_instance_in_progress(move_archive, requester, destinations):
    """QM-14, UL-04: C-CANCEL while the 2nd instance is being stored: it completes, the rest are
    not sent, FE00 with Remaining = instances not sent. The destination answers the 2nd only
    once the C-CANCEL is in the service's socket: the service reads it between two
    sub-operations."""
    cancelled = threading.Event()
    dest = destinations("DEST", move_archive.destination_ports["DEST"],
                        answer=lambda n: 0 if n != 2 or cancelled.wait(10) else 0xA700)

    def cancel_after_first(assoc, responses):
        if len(responses) == 2:  # the Pending after instance 1: instance 2 is on its way
            cancel(assoc, 4242, "P")
            ports = (move_archive.qr_port, assoc.local["port"])
            wait_for(lambda: unread_bytes(*ports), "the C-CANCEL to reach the service's socket")
            cancelled.set()

    responses = move(requester, PATIENT_1, "DEST", "P", on_response=cancel_after_first, msg_id=4242)
    assert [(r.status, r.counts) for r in responses][-1] == (0xFE00, (2, 2, 0, 0))
    assert responses[-1].failed_uids == []
    assert [a.sop_instance for a in dest.arrivals] == PID_1[:2]
    move_archive.wait_log(r"C-MOVE #4242 to DEST: 2 sent \(0 with warnings\), 0 failed or not sent, in [\d.]+ s, "
                          r"status 0xFE00")


def test_export_goes_on_when_the_requester_aborts(move_archive, destinations):
    """QM-15: the requester aborts after the first Pending; every instance still arrives and the
    log says the answers could not be delivered."""
    aborted = threading.Event()
    dest = destinations("DEST", move_archive.destination_ports["DEST"],
                        answer=lambda n: 0 if n != 2 or aborted.wait(10) else 0xA700)

    def abort_after_first(assoc, responses):
        if len(responses) == 2:
            assoc.abort()
            aborted.set()
            return True

    with scu.association(move_archive.qr_port, "EX_QUERY_SCP", move_contexts(), calling="GONE") as assoc:
        move(assoc, PATIENT_1, "DEST", "P", on_response=abort_after_first)
    assert [a.sop_instance for a in dest.wait_for(4)] == PID_1
    move_archive.wait_log(r"GONE@\S+: C-MOVE #\d+ to DEST: 4 sent \(0 with warnings\), 0 failed or not sent, in "
                          r"[\d.]+ s, status 0x0000 \(the requester's association is gone: not delivered\)")


def small_archive(make_appliance, overrides: dict, destinations: dict[str, int], tmp_path) -> tuple:
    """An appliance with `overrides`, `destinations` (title -> port) in its remote AE table and
    one study of three CT instances; returns (appliance, study UID, instance UIDs)."""
    remote = [{"ae_title": title, "host": "127.0.0.1", "port": port} for title, port in destinations.items()]
    app = make_appliance({"remote_aes": remote, **overrides})
    study, series = uid("S30"), uid("S30.1")
    instances = [uid(f"S30.1.{n}") for n in (1, 2, 3)]
    with scu.association(app.storage_port, app.storage_title) as assoc:
        for n, sop_instance in enumerate(instances, start=1):
            ds = datasets.image(study_uid=study, series_uid=series, sop_instance_uid=sop_instance, InstanceNumber=str(n))
            assert scu.send_file(assoc, datasets.write(ds, tmp_path / f"{n}.dcm")) == 0
    return app, study, instances


def test_no_answer_within_the_dimse_timeout_aborts(make_appliance, destinations, tmp_path):
    """SU-10: no C-STORE-RSP within storage_scu.dimse_timeout: A-ABORT, A702, logged."""
    port = free_port()
    app, study, instances = small_archive(make_appliance, {"storage_scu": {"dimse_timeout": 0.5}}, {"SLOW": port},
                                          tmp_path)
    gone = threading.Event()
    dest = destinations("SLOW", port, answer=lambda n: 0 if n == 1 else (gone.wait(10), 0)[1])
    with scu.association(app.qr_port, "EX_QUERY_SCP", move_contexts()) as assoc:
        responses = move(assoc, move_identifier("STUDY", StudyInstanceUID=study), "SLOW")
    assert (responses[-1].status, responses[-1].counts) == (0xA702, (None, 1, 2, 0))
    assert responses[-1].failed_uids == instances[1:]
    app.wait_log(r"ALERT appliance.storage_scu: .*export stopped after 1 of 3 instances: no C-STORE-RSP within "
                 r"0.5 s \(storage_scu.dimse_timeout\)")
    gone.set()  # the destination's handler returns; its association has been aborted meanwhile
    wait_for(lambda: dest.released.is_set(), "the destination to see the abort")


def test_a_destination_that_stops_inside_a_pdu_is_aborted(make_appliance, destinations, tmp_path):
    """SU-11: the destination sends part of a PDU and then nothing: after timeouts.pdu_gap the
    association is aborted and the export fails (A702), logged."""
    port = free_port()
    app, study, instances = small_archive(make_appliance, {"timeouts": {"pdu_gap": 0.5}}, {"STALL": port}, tmp_path)
    gone = threading.Event()
    destinations("STALL", port, stall_at=2, answer=lambda n: 0 if n == 1 else (gone.wait(10), 0)[1])
    with scu.association(app.qr_port, "EX_QUERY_SCP", move_contexts()) as assoc:
        responses = move(assoc, move_identifier("STUDY", StudyInstanceUID=study), "STALL")
    gone.set()
    assert (responses[-1].status, responses[-1].counts, responses[-1].failed_uids) == (
        0xA702, (None, 1, 2, 0), instances[1:])
    app.wait_log(r"ALERT appliance.storage_scu: .*export stopped after 1 of 3 instances: no data for 0.5 s inside "
                 r"a PDU \(\d+ of \d+ bytes received; timeouts.pdu_gap\)")


def test_opening_is_retried_then_fails(make_appliance, tmp_path):
    """SU-04: open_retries more attempts, open_retry_delay apart, each logged; then A702."""
    app, study, _ = small_archive(make_appliance, {"storage_scu": {"open_retries": 2, "open_retry_delay": 0.1}},
                                  {"DOWN": free_port()}, tmp_path)
    with scu.association(app.qr_port, "EX_QUERY_SCP", move_contexts()) as assoc:
        responses = move(assoc, move_identifier("STUDY", StudyInstanceUID=study), "DOWN")
    assert responses[-1].status == 0xA702
    log = app.log()
    assert "attempt 1 of 3 failed (cannot connect" in log and "attempt 2 of 3 failed" in log
    assert "attempt 3 of 3" not in log and "export stopped after 0 of 3 instances: no association" in log


def test_a_retry_reaches_a_destination_that_came_up(make_appliance, destinations, tmp_path):
    port = free_port()
    app, study, instances = small_archive(make_appliance, {"storage_scu": {"open_retries": 3, "open_retry_delay": 0.3}},
                                          {"LATE": port}, tmp_path)
    started = []

    def start_late(assoc, responses):
        if not started:  # after the initial Pending: the first attempt is already refused
            app.wait_log(r"attempt 1 of 4 failed")
            started.append(destinations("LATE", port))

    with scu.association(app.qr_port, "EX_QUERY_SCP", move_contexts()) as assoc:
        responses = move(assoc, move_identifier("STUDY", StudyInstanceUID=study), "LATE", on_response=start_late)
    assert (responses[-1].status, responses[-1].counts) == (0x0000, (None, 3, 0, 0))
    assert [a.sop_instance for a in started[0].arrivals] == instances


def test_exports_beyond_max_associations_wait(make_appliance, destinations, tmp_path):
    """SU-03: with storage_scu.max_associations 1 two C-MOVEs take turns; both complete."""
    port = free_port()
    app, study, _ = small_archive(make_appliance, {"storage_scu": {"max_associations": 1}}, {"ONE": port}, tmp_path)
    go = threading.Event()
    dest = destinations("ONE", port, answer=lambda n: (go.wait(10), 0)[1])
    results = {}

    def run(name):
        with scu.association(app.qr_port, "EX_QUERY_SCP", move_contexts(), calling=name) as assoc:
            results[name] = move(assoc, move_identifier("STUDY", StudyInstanceUID=study), "ONE")[-1].status

    threads = [threading.Thread(target=run, args=(name,)) for name in ("FIRST", "SECOND")]
    for thread in threads:
        thread.start()
    app.wait_log(r"waiting for a free export association \(storage_scu.max_associations 1\)")
    go.set()
    for thread in threads:
        thread.join(20)
    assert results == {"FIRST": 0, "SECOND": 0}
    assert len(dest.arrivals) == 6 and dest.most_at_once == 1


def test_a_missing_file_is_a702_and_an_alert(make_appliance, destinations, tmp_path):
    """QM-12: an instance whose file cannot be read stops the export there."""
    port = free_port()
    app, study, instances = small_archive(make_appliance, {}, {"DEST": port}, tmp_path)
    (path,) = datasets.stored_paths(app, instances[1])
    path.unlink()
    dest = destinations("DEST", port)
    with scu.association(app.qr_port, "EX_QUERY_SCP", move_contexts()) as assoc:
        responses = move(assoc, move_identifier("STUDY", StudyInstanceUID=study), "DEST")
    assert (responses[-1].status, responses[-1].counts) == (0xA702, (None, 1, 2, 0))
    assert [a.sop_instance for a in dest.arrivals] == instances[:1]
    app.wait_log(rf"ALERT appliance.storage_scu: .*export stopped after 1 of 3 instances: stored file {path.name} "
                 r"cannot be read")


def test_index_that_cannot_answer_is_a701(appliance):
    """QM-13: the index is gone: A701 with an ALERT line; the service goes on (C-ECHO). UL-05:
    the A701's Error Comment gives the cause."""
    appliance.remove_index()
    appliance.write_config({**appliance.config, "remote_aes": [{"ae_title": "DEST", "host": "127.0.0.1", "port": 1}]})
    appliance.signal(__import__("signal").SIGHUP)
    appliance.wait_log(r"configuration reloaded")
    with scu.association(appliance.qr_port, "EX_QUERY_SCP", move_contexts()) as assoc:
        responses = move(assoc, move_identifier("STUDY", StudyInstanceUID="1.2.3"), "DEST")
        assert [r.status for r in responses] == [0xA701]
        assert scu.echo_status(assoc) == 0
    logged = appliance.wait_log(r"ALERT appliance.qr_scp: .*C-MOVE #\d+ to DEST Study Root STUDY "
                                r"\(1 StudyInstanceUID\): status 0xA701: (the index cannot list the matches: "
                                r"\w+Error.*)")
    assert says_why(responses[0].comment, logged.group(1)), (responses[0].comment, logged.group(1))
