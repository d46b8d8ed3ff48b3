"""C-MOVE against the real daemon, requested with pynetdicom: the exact sequence of responses
and counts (QM-07..QM-16), the validation order (QM-04, QM-05, QM-06, QM-18), and what the
destination sees (QM-02, QM-03, PC-08..PC-10, SU-02, SU-16)."""

from __future__ import annotations

import pytest

import datasets
import scu
from destinations import MOVE_DESTINATIONS
from destinations import Destination, move, move_contexts, move_identifier
from helpers import says_why
from query_archive import uid

pytestmark = pytest.mark.index_backends  # C-MOVE on SQLite and on PostgreSQL (IX-01)

STUDY_S1 = [uid("S1.1.1"), uid("S1.1.2"), uid("S1.2.1")]  # two series, in instance-number order


@pytest.fixture(scope="module")
def requester(move_archive):
    with scu.association(move_archive.qr_port, "EX_QUERY_SCP", move_contexts(), calling="VIEWER") as assoc:
        yield assoc


@pytest.fixture
def dest(move_archive):
    destination = Destination("DEST", move_archive.destination_ports["DEST"])
    yield destination
    destination.stop()


def test_a_study_arrives_with_a_pending_after_each_instance(move_archive, requester, dest):
    """QM-07 initial Pending with the count, QM-08 a Pending per instance, QM-09 final 0000."""
    responses = move(requester, move_identifier("STUDY", StudyInstanceUID=uid("S1")), "DEST")
    assert [(r.status, r.counts) for r in responses] == [
        (0xFF00, (3, 0, 0, 0)), (0xFF00, (2, 1, 0, 0)), (0xFF00, (1, 2, 0, 0)), (0xFF00, (0, 3, 0, 0)),
        (0x0000, (None, 3, 0, 0))]
    assert [a.sop_instance for a in dest.arrivals] == STUDY_S1
    move_archive.wait_log(r"C-MOVE #\d+ to DEST: 3 sent \(0 with warnings\), 0 failed or not sent, in [\d.]+ s, "
                          r"status 0x0000")


def test_sub_operations_carry_our_title_and_the_move_originator(move_archive, requester, dest):
    """QM-02 calling AE = STORAGE-SCU's title; QM-03 Move Originator AE Title and Message ID;
    SU-02 one association for the whole job, released at the end."""
    move(requester, move_identifier("SERIES", StudyInstanceUID=uid("S1"), SeriesInstanceUID=uid("S1.1")), "DEST")
    assert dest.released.wait(5)
    assert {(a.calling, a.originator_title) for a in dest.arrivals} == {("EX_STORE_SCU", "VIEWER")}
    assert len({a.originator_id for a in dest.arrivals}) == 1 and dest.arrivals[0].originator_id is not None
    assert len(dest.proposals) == 1


def test_each_instance_arrives_byte_for_byte(move_archive, requester, dest, tmp_path):
    """SU-15: an instance with nothing to overlay goes out as stored; its SOP class and TS too."""
    move(requester, move_identifier("STUDY", StudyInstanceUID=uid("S3")), "DEST")
    (arrival,) = dest.arrivals
    (path,) = datasets.stored_paths(move_archive, uid("S3.1.1"))
    assert arrival.data == datasets.dataset_bytes(path)
    assert (arrival.sop_class, arrival.transfer_syntax) == (datasets.CT, datasets.ELE)


def test_only_the_classes_of_the_move_set_are_proposed_one_syntax_each(requester, dest):
    """PC-08 (single mode: one TS per context), PC-10 (only the CT class of this study)."""
    move(requester, move_identifier("STUDY", StudyInstanceUID=uid("S1")), "DEST")
    (proposed,) = dest.proposals
    assert sorted(proposed) == sorted([(datasets.CT, [datasets.ELE]), (datasets.CT, [datasets.ILE])])


@pytest.mark.parametrize("model, identifier, expected", [
    ("P", dict(level="PATIENT", PatientID="PID-1"), STUDY_S1 + [uid("S2.1.1")]),
    ("P", dict(level="STUDY", PatientID="PID-1", StudyInstanceUID=uid("S2")), [uid("S2.1.1")]),
    ("P", dict(level="SERIES", PatientID="PID-1", StudyInstanceUID=uid("S1"), SeriesInstanceUID=uid("S1.2")),
     [uid("S1.2.1")]),
    ("P", dict(level="IMAGE", PatientID="PID-1", StudyInstanceUID=uid("S1"), SeriesInstanceUID=uid("S1.1"),
               SOPInstanceUID=uid("S1.1.2")), [uid("S1.1.2")]),
    ("S", dict(level="STUDY", StudyInstanceUID=[uid("S3"), uid("S5")]), [uid("S3.1.1"), uid("S5.1.1")]),
    ("S", dict(level="SERIES", StudyInstanceUID=uid("S1"), SeriesInstanceUID=[uid("S1.2"), uid("S1.1")]), STUDY_S1),
    ("S", dict(level="IMAGE", StudyInstanceUID=uid("S1"), SeriesInstanceUID=uid("S1.1"),
               SOPInstanceUID=[uid("S1.1.2"), uid("S1.1.1")]), STUDY_S1[:2]),
    # A higher-level key that names another study: nothing matches (QM-16).
    ("S", dict(level="SERIES", StudyInstanceUID=uid("S2"), SeriesInstanceUID=uid("S1.1")), []),
], ids=["patient", "p-study", "p-series", "p-image", "study-list", "series-list", "image-list", "wrong-parent"])
def test_levels_and_uid_lists(requester, dest, model, identifier, expected):
    """Both models at every level; UID lists at the level's unique key (QM-05)."""
    identifier = dict(identifier)  # the parameter is shared by both backends' runs
    level = identifier.pop("level")
    responses = move(requester, move_identifier(level, **identifier), "DEST", model)
    assert responses[0].counts == (len(expected), 0, 0, 0)
    assert (responses[-1].status, responses[-1].counts) == (0x0000, (None, len(expected), 0, 0))
    assert sorted(a.sop_instance for a in dest.arrivals) == sorted(expected)


def test_zero_matches_is_a_pending_then_success_and_no_association(requester, dest):
    """QM-16: Pending with Remaining 0, final 0000 with all counts 0; nothing is opened."""
    responses = move(requester, move_identifier("STUDY", StudyInstanceUID="1.2.3.999"), "DEST")
    assert [(r.status, r.counts) for r in responses] == [(0xFF00, (0, 0, 0, 0)), (0x0000, (None, 0, 0, 0))]
    assert dest.proposals == []


def test_unknown_destination_is_a801_before_the_identifier(move_archive, requester):
    """QM-04, QM-18: A801 even for an identifier that would be A900; logged; nothing sent.
    UL-05: the Error Comment says why; issue 22: the requester's mistake is a WARNING."""
    responses = move(requester, move_identifier("NOLEVEL"), "NOWHERE")
    assert [r.status for r in responses] == [0xA801]
    logged = move_archive.wait_log(r"WARNING appliance.qr_scp: .*VIEWER@.*C-MOVE #\d+ to NOWHERE status 0xA801: "
                                   r"(no remote AE NOWHERE with move_destination = true)")
    assert says_why(responses[0].comment, logged.group(1)), (responses[0].comment, logged.group(1))


@pytest.mark.parametrize("identifier, why", [
    (dict(StudyInstanceUID="1.2.3"), r"Query/Retrieve Level '' is not one of"),
    (dict(level="STUDY"), r"a STUDY retrieve needs StudyInstanceUID"),
    (dict(level="STUDY", StudyInstanceUID=""), r"StudyInstanceUID has no value"),
    (dict(level="STUDY", StudyInstanceUID="1.2.*"), r"StudyInstanceUID '1.2.\*' is not a valid UID"),
    (dict(level="SERIES", SeriesInstanceUID=uid("S1.1")), r"a SERIES retrieve needs StudyInstanceUID"),
    (dict(level="SERIES", StudyInstanceUID=[uid("S1"), uid("S2")], SeriesInstanceUID=uid("S1.1")),
     r"StudyInstanceUID holds a list of 2 values; lists are accepted only for the unique key of the retrieve level"),
    (dict(level="STUDY", StudyInstanceUID=uid("S1"), SeriesInstanceUID=uid("S1.1")),
     r"SeriesInstanceUID has a value below the STUDY level"),
    (dict(level="PATIENT", PatientID="PID-1"), r"Query/Retrieve Level PATIENT is not part of Study Root"),
], ids=["no-level", "no-key", "empty-key", "wildcard", "no-parent", "parent-list", "below-level", "patient-in-sr"])
def test_identifier_errors_are_a900_and_logged(move_archive, requester, dest, identifier, why):
    """QM-05, QM-06: A900 with the reason in the service log (a WARNING: the requester's mistake,
    issue 22) and in the Error Comment (UL-05), and nothing sent."""
    identifier = dict(identifier)
    level = identifier.pop("level", None)
    ds = move_identifier(level, **identifier) if level else move_identifier("", **identifier)
    if not level:
        del ds.QueryRetrieveLevel
    start = len(move_archive.log())
    responses = move(requester, ds, "DEST")
    assert [r.status for r in responses] == [0xA900]
    logged = move_archive.wait_log(rf"WARNING appliance.qr_scp: .*C-MOVE #\d+ to DEST status 0xA900: ({why}.*)",
                                   since=start)
    assert says_why(responses[0].comment, logged.group(1)), (responses[0].comment, logged.group(1))
    assert dest.proposals == []


def test_patient_level_takes_no_list(move_archive, requester, dest):
    """QM-05: lists at STUDY, SERIES and IMAGE level only."""
    responses = move(requester, move_identifier("PATIENT", PatientID=["PID-1", "PID-2"]), "DEST", "P")
    assert [r.status for r in responses] == [0xA900]


def test_other_keys_are_not_used_and_named_in_the_log(move_archive, requester, dest):
    responses = move(requester, move_identifier("STUDY", StudyInstanceUID=uid("S3"), PatientName="X*"), "DEST")
    assert responses[-1].status == 0x0000 and len(dest.arrivals) == 1
    move_archive.wait_log(r"Study Root STUDY \(1 StudyInstanceUID\): 1 instances to send; keys not used: PatientName")


def test_destinations_known_to_the_table(move_archive):
    assert set(move_archive.destination_ports) == set(MOVE_DESTINATIONS)
