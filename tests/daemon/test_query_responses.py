"""What a C-FIND returns (QF-05, QF-06, CS-03, CS-04, EL-10), cancel (QF-19) and an index that
cannot answer (QF-18), against the real daemon."""

from __future__ import annotations

import socket
import time
from io import BytesIO

import pytest
from pydicom import dcmread

import datasets
import pdus
import query_archive
import scu
from datasets import STUDY_ROOT_FIND as SR
from helpers import says_why
from query_archive import uid
from test_query_matching import identifier

pytestmark = pytest.mark.index_backends  # C-FIND on SQLite and on PostgreSQL (IX-01)


def only_match(assoc, level: str, keys: dict):
    responses = scu.find(assoc, SR, identifier(level, keys))
    assert len(responses) == 2 and responses[-1] == (0x0000, None), responses
    return responses[0]


def test_only_requested_keys_with_index_values(qr):
    """QF-05, QF-06, QF-20: the requested elements and no others, zero-length where the index has
    no value or the key is unsupported; counts of the study's series and instances."""
    keys = {"StudyInstanceUID": uid("S1"), "PatientName": "", "PatientID": "", "PatientSex": "",
            "OtherPatientIDs": "", "StudyDate": "", "StudyTime": "", "StudyDescription": "",
            "ReferringPhysicianName": "", "NumberOfStudyRelatedSeries": "", "NumberOfStudyRelatedInstances": "",
            "NumberOfPatientRelatedStudies": "", "RetrieveAETitle": "", "Modality": ""}
    status, ds = only_match(qr, "STUDY", keys)
    assert status == 0xFF01  # RetrieveAETitle is not supported, Modality is below the level
    assert {e.keyword for e in ds} == set(keys) | {"QueryRetrieveLevel"}
    assert ds.QueryRetrieveLevel == "STUDY"
    assert (str(ds.PatientName), ds.PatientID, ds.PatientSex, ds.OtherPatientIDs) == \
        ("Doe^John", "PID-1", "M", "OTHER-PID-1")
    assert (ds.StudyDate, ds.StudyTime, ds.StudyDescription, str(ds.ReferringPhysicianName)) == \
        ("20240101", "083000", "CT CHEST", "Smith^Anna")
    assert (ds.NumberOfStudyRelatedSeries, ds.NumberOfStudyRelatedInstances, ds.NumberOfPatientRelatedStudies) \
        == (2, 3, 2)
    assert ds.RetrieveAETitle in ("", None) and ds.Modality in ("", None)
    assert "SpecificCharacterSet" not in ds  # all ASCII (CS-03)


def test_counts_at_series_level_and_patient_level(qr):
    status, ds = only_match(qr, "SERIES", {"StudyInstanceUID": uid("S1"), "SeriesInstanceUID": uid("S1.1"),
                                           "NumberOfSeriesRelatedInstances": "", "OperatorsName": "",
                                           "NumberOfStudyRelatedInstances": ""})
    assert status == 0xFF00
    assert (ds.NumberOfSeriesRelatedInstances, ds.NumberOfStudyRelatedInstances) == (2, 3)
    assert str(ds.OperatorsName) == "Op^Erator"
    responses = scu.find(qr, datasets.PATIENT_ROOT_FIND, identifier("PATIENT", {
        "PatientID": "PID-1", "NumberOfPatientRelatedStudies": "", "NumberOfPatientRelatedSeries": "",
        "NumberOfPatientRelatedInstances": ""}))
    ds = responses[0][1]
    assert (ds.NumberOfPatientRelatedStudies, ds.NumberOfPatientRelatedSeries,
            ds.NumberOfPatientRelatedInstances) == (2, 3, 4)


def test_sex_unknown_returned_empty(qr):
    """EL-09/EL-10: 'X' is indexed as U, and U is returned as an empty Patient's Sex."""
    _, ds = only_match(qr, "STUDY", {"PatientID": "PID-4", "PatientSex": ""})
    assert ds.PatientSex in ("", None)


@pytest.mark.parametrize("patient_id,charset,name", [
    ("PID-3", "ISO_IR 100", "Müller^Hans"),
    ("PID-6", "ISO_IR 192", "Παπαδόπουλος^Νίκος"),
])
def test_specific_character_set_added(qr, patient_id, charset, name):
    """CS-01, CS-03, CS-04: non-ASCII values come with the character set that holds them,
    requested or not; Latin-1 when it suffices."""
    _, ds = only_match(qr, "STUDY", {"PatientID": patient_id, "PatientName": ""})
    assert ds.SpecificCharacterSet == charset
    assert str(ds.PatientName) == name


def test_requested_character_set_for_ascii_values_is_empty(qr):
    _, ds = only_match(qr, "STUDY", {"PatientID": "PID-2", "PatientName": "", "SpecificCharacterSet": ""})
    assert ds.SpecificCharacterSet in ("", None)
    assert str(ds.PatientName) == "DOE^JANE"


def test_values_come_from_the_index(appliance, tmp_path):
    """QF-06: an instance whose Patient ID belongs to another name is indexed under a coerced
    ID (EL-06), and C-FIND answers with that ID, not the file's."""
    first = datasets.image(patient_name="First^Person", patient_id="SAME", rows=8, columns=8)
    second = datasets.image(patient_name="Second^Person", patient_id="SAME", rows=8, columns=8)
    with scu.association(appliance.storage_port) as assoc:
        for i, ds in enumerate((first, second)):
            assert scu.send_file(assoc, datasets.write(ds, tmp_path / f"{i}.dcm")) == 0
    with scu.association(appliance.qr_port, "EX_QUERY_SCP", scu.query_contexts()) as assoc:
        _, ds = only_match(assoc, "STUDY", {"PatientName": "Second^Person", "PatientID": ""})
    assert ds.PatientID == "SAME_2"


def test_cancel_stops_matching(make_appliance):
    """QF-19: after C-CANCEL-RQ no further pending responses, then FE00; the service logs it."""
    app = make_appliance(start=False)
    app.start().stop()  # creates the index
    query_archive.fill_index(app, 20000)
    app.start()
    with scu.association(app.qr_port, "EX_QUERY_SCP", scu.query_contexts()) as assoc:
        context_id = next(cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == SR)
        statuses = []
        for status, _ in assoc.send_c_find(identifier("IMAGE", {"StudyInstanceUID": uid("S100"),
                                                               "SeriesInstanceUID": uid("S100.1")}), SR, msg_id=7):
            statuses.append(status.Status)
            if len(statuses) == 1:
                assoc.send_c_cancel(7, context_id)
        assert statuses[-1] == 0xFE00
        assert set(statuses[:-1]) == {0xFF00}
        assert len(statuses) - 1 < 20000
        assert scu.echo_status(assoc) == 0  # the association goes on
    app.wait_log(rf"C-FIND #7 Study Root IMAGE \(StudyInstanceUID equal, SeriesInstanceUID equal\): "
                 rf"cancelled by the peer after {len(statuses) - 1} matches, status 0xFE00")


def test_index_that_cannot_answer(appliance):
    """QF-18, LG-09: the index file removed under the running service (a new connection finds
    no tables): A700, an ALERT line naming the cause, and the service goes on serving. UL-05:
    the A700's Error Comment gives the cause."""
    appliance.remove_index()
    with scu.association(appliance.qr_port, "EX_QUERY_SCP", scu.query_contexts()) as assoc:
        [(final, found)] = scu.find_statuses(assoc, SR, identifier("STUDY", {"PatientID": "X"}))
        assert (final.Status, found) == (0xA700, None)
        assert scu.echo_status(assoc) == 0
    logged = appliance.wait_log(r"ALERT appliance.qr_scp: QUERY-RETRIEVE-SCP #\d+ TEST_SCU@\S+: C-FIND #\d+ Study Root "
                                r"STUDY \(PatientID equal\): status 0xA700 after 0 matches: (the index cannot answer: "
                                r"\w+Error: (no such table|relation .* does not exist).*)")
    assert says_why(final.get("ErrorComment"), logged.group(1)), (final.get("ErrorComment"), logged.group(1))


def test_responses_fit_a_small_peer_maximum_pdu(archive_appliance):
    """PS3.8 9.3.5: the Pending messages the handler encodes itself (appliance.dicom.dimse) are
    fragmented to the peer's maximum PDU length: a raw peer accepting 64-byte PDUs receives no
    longer PDU and reassembles every identifier whole."""
    request = pdus.request(called="EX_QUERY_SCP", contexts=((SR, (datasets.ILE,)),), max_length=64)
    query = identifier("STUDY", {"PatientName": "DOE*", "ReferringPhysicianName": "", "StudyDescription": ""})
    with pdus.connect(archive_appliance.qr_port) as sock:
        sock.sendall(request)
        assert pdus.read_pdu(sock)[:1] == b"\x02"
        sock.sendall(b"".join(pdus.p_data(pdus.c_find(SR, query))))
        reader, found, data, statuses = pdus.Reader(sock), [], b"", []
        while not statuses or statuses[-1] != 0x0000:
            pdu = reader.pdu()
            assert pdu[:1] == b"\x04" and len(pdu) - 6 <= 64, pdu
            for control, fragment in pdus.pdvs(pdu):
                if control & 1:  # a command set: the status is the last element (0000,0900)
                    statuses += [int.from_bytes(fragment[-2:], "little")] if control & 2 else []
                else:
                    data += fragment
                    if control & 2:
                        found.append(dcmread(BytesIO(data), force=True))
                        data = b""
        sock.sendall(pdus.RELEASE_RQ)
    assert statuses == [0xFF00] * 4 + [0x0000]
    assert sorted((str(ds.PatientName), ds.StudyDescription) for ds in found) == [
        ("DOE^JANE", "ct chest"), ("Doe^John", "CT CHEST"), ("Doe^John", "MR_HEAD"), ("Doering", "CT CHEST")]


def test_storing_goes_on_while_a_query_streams(make_appliance, tmp_path):
    """A C-FIND whose reader has stopped reading keeps its SQLite read open (rows are streamed);
    in WAL mode that must not hold up a C-STORE on the other AE (ST-06's commit) nor a C-ECHO."""
    app = make_appliance(start=False)
    app.start().stop()
    query_archive.fill_index(app, 20000)
    app.start()
    query = identifier("IMAGE", {"StudyInstanceUID": uid("S100"), "SeriesInstanceUID": uid("S100.1")})
    with pdus.connect(app.qr_port) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(pdus.request(called="EX_QUERY_SCP", contexts=((SR, (datasets.ILE,)),)))
        assert pdus.read_pdu(sock)[:1] == b"\x02"
        sock.sendall(b"".join(pdus.p_data(pdus.c_find(SR, query))))  # and read nothing more
        app.wait_log(r"QUERY-RETRIEVE-SCP #\d+ TEST_SCU@\S+: association accepted")
        path = datasets.write(datasets.image(rows=8, columns=8), tmp_path / "during.dcm")
        started = time.monotonic()
        with scu.association(app.storage_port) as assoc:
            assert scu.send_file(assoc, path) == 0x0000
        assert time.monotonic() - started < 5
        assert scu.echo(app.qr_port, "EX_QUERY_SCP") == 0x0000
    assert app.index_rows("SELECT count(*) FROM instance") == [(20001,)]


def test_a_query_longer_than_the_idle_timeout_keeps_its_association(make_appliance):
    """CF-24: the idle timeout is about silence. A C-FIND whose responses take longer than it to
    go out is traffic: the association stays open for the next request. The slowness is the
    test's own, so that it holds on any machine: the requester reads its responses slowly
    through a small receive window, and the service's send buffer is small, so the service
    waits to send for 5 idle timeouts before the final response can go."""
    idle = 0.1
    app = make_appliance({"query_retrieve_scp": {"idle_timeout": idle},
                          "network": {"socket_buffer_size": 4096}}, start=False)
    app.start().stop()
    query_archive.fill_index(app, 2000)  # ~400 KB of responses: far more than both buffers hold
    app.start()
    query = identifier("IMAGE", {"StudyInstanceUID": uid("S100"), "SeriesInstanceUID": uid("S100.1")})
    with pdus.associated(app.qr_port, (SR, (datasets.ILE,)), called="EX_QUERY_SCP", receive_buffer=4096) as sock:
        sock.sendall(b"".join(pdus.p_data(pdus.c_find(SR, query))))
        reader, started, final = pdus.Reader(sock), time.monotonic(), None
        while final is None:
            if time.monotonic() - started < 5 * idle:
                time.sleep(idle / 10)  # the slow reader, on purpose
            for control, fragment in pdus.pdvs(reader.pdu()):
                if control == 0x03 and fragment[-2:] == b"\0\0":  # a command set with status 0000
                    final = time.monotonic() - started
        assert final > 5 * idle, "the responses went out faster than the slow reader takes them in"
        sock.sendall(b"".join(pdus.c_echo(2)))
        answer = reader.pdu()
        assert answer[:1] == b"\x04", f"no C-ECHO response but {answer[:1].hex()}: the association was aborted"
        sock.sendall(pdus.RELEASE_RQ)
        assert reader.pdu()[:1] == b"\x06"
    assert "Network timeout" not in app.log()
