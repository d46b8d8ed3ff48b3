"""What QUERY-RETRIEVE-SCP negotiates: presentation contexts, extended negotiation, C-ECHO
(PC-05, PC-06, PC-07, VE-02; QF-01, QF-03).

Each context's result is read from the A-ASSOCIATE-AC as pynetdicom's requestor decodes it
(`Association.accepted_contexts` / `rejected_contexts`, matched to what was proposed by
presentation context ID); the AC's user information items from the A-ASSOCIATE-AC primitive
(`Association.acceptor`). A context that must be refused is always proposed next to one that
is accepted: with no accepted context the whole association is rejected (AS-07).
"""

from __future__ import annotations

import re

import pytest
from pydicom.dataset import Dataset
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation
from pynetdicom.presentation import build_context

import datasets
import scu
from helpers import Appliance, wait_for

QR_TITLE = "EX_QUERY_SCP"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"

ACCEPTED = (0, [datasets.ILE])  # result 0 with Implicit VR Little Endian
ABSTRACT_SYNTAX_NOT_SUPPORTED = (3, None)
TRANSFER_SYNTAXES_NOT_SUPPORTED = (4, None)
SUCCESS, IDENTIFIER_DOES_NOT_MATCH = 0x0000, 0xA900
RELATIONAL = b"\x01"  # Service-class-application-information byte 1: relational queries (PS3.4 C.5.1.1)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """One running appliance (empty archive) for the module."""
    started = Appliance(tmp_path_factory.mktemp("query_negotiation") / "appliance").start()
    yield started
    assert started.stop() == 0, started.log()


def results(assoc) -> list[tuple[int, list[str] | None]]:
    """Per proposed context, in proposal order: (result, [accepted TS]) or (result, None)."""
    answered = {cx.context_id: cx for cx in assoc.accepted_contexts + assoc.rejected_contexts}
    out = []
    for proposed in assoc.requestor.requested_contexts:
        cx = answered[proposed.context_id]
        out.append((cx.result, list(cx.transfer_syntax) if cx.result == 0 else None))
    return out


def identifier(**elements) -> Dataset:
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def test_query_retrieve_scp_accepts_verification_and_find_with_implicit_le_only(app):
    """PC-05: VER, PR-FIND and SR-FIND are accepted with ILE (also when ELE is offered in the
    same context: ILE is chosen); a context offering only ELE gets result 4, Verification
    included (D-10: QUERY-RETRIEVE-SCP keeps ILE only). QF-01: both FIND contexts answer."""
    contexts = [
        build_context(datasets.VERIFICATION, [datasets.ILE]),
        build_context(datasets.PATIENT_ROOT_FIND, [datasets.ILE]),
        build_context(datasets.STUDY_ROOT_FIND, [datasets.ILE]),
        build_context(datasets.PATIENT_ROOT_FIND, [datasets.ELE, datasets.ILE]),
        build_context(datasets.STUDY_ROOT_FIND, [datasets.ELE]),
        build_context(datasets.PATIENT_ROOT_FIND, [datasets.ELE]),
        build_context(datasets.VERIFICATION, [datasets.ELE]),
    ]
    with scu.association(app.qr_port, QR_TITLE, contexts) as assoc:
        assert results(assoc) == [ACCEPTED] * 4 + [TRANSFER_SYNTAXES_NOT_SUPPORTED] * 3
        assert scu.find(assoc, datasets.PATIENT_ROOT_FIND,
                        identifier(QueryRetrieveLevel="PATIENT", PatientID="NOBODY")) == [(SUCCESS, None)]
        assert scu.find(assoc, datasets.STUDY_ROOT_FIND,
                        identifier(QueryRetrieveLevel="STUDY", PatientID="NOBODY")) == [(SUCCESS, None)]


def test_query_retrieve_scp_refuses_storage_classes(app):
    """PC-06: every storage SOP class of the STORAGE-SCP matrix (CT Image Storage among them)
    and Storage Commitment Push Model proposed to QUERY-RETRIEVE-SCP get result 3, whatever
    the transfer syntaxes."""
    refused = [build_context(sop_class, [datasets.ILE]) for sop_class in datasets.ALL_STORAGE]
    refused += [build_context(datasets.CT, [datasets.ELE, datasets.ILE]),
                build_context(STORAGE_COMMITMENT_PUSH, [datasets.ILE])]
    contexts = [build_context(datasets.STUDY_ROOT_FIND, [datasets.ILE]), *refused]
    with scu.association(app.qr_port, QR_TITLE, contexts) as assoc:
        assert results(assoc) == [ACCEPTED] + [ABSTRACT_SYNTAX_NOT_SUPPORTED] * len(refused)


def test_storage_scp_refuses_query_retrieve_classes(app):
    """PC-06: PR-FIND, SR-FIND (and the MOVE classes) proposed to STORAGE-SCP get result 3,
    with ILE or ELE."""
    refused = [build_context(sop_class, [datasets.ILE]) for sop_class in
               (datasets.PATIENT_ROOT_FIND, datasets.STUDY_ROOT_FIND, PATIENT_ROOT_MOVE, STUDY_ROOT_MOVE)]
    refused += [build_context(datasets.STUDY_ROOT_FIND, [datasets.ELE, datasets.ILE])]
    contexts = [build_context(datasets.CT, [datasets.ILE]), *refused]
    with scu.association(app.storage_port, app.storage_title, contexts) as assoc:
        assert results(assoc) == [ACCEPTED] + [ABSTRACT_SYNTAX_NOT_SUPPORTED] * len(refused)


def test_relational_queries_are_not_negotiated(app):
    """PC-07: SOP Class Extended Negotiation asking for relational queries (byte 1 = 1) for
    SR-FIND and PR-FIND is not granted: the A-ASSOCIATE-AC omits the item or answers 0 (not
    supported). QF-01, QF-03: the association stays hierarchical — a query without the unique
    key of a higher level gets A900 (logged, QF-17), the same query with it is answered."""
    items = []
    for sop_class in (datasets.STUDY_ROOT_FIND, datasets.PATIENT_ROOT_FIND):
        item = SOPClassExtendedNegotiation()
        item.sop_class_uid = sop_class
        item.service_class_application_information = RELATIONAL
        items.append(item)
    with scu.association(app.qr_port, QR_TITLE, scu.query_contexts(), calling="RELATIONAL", ext_neg=items) as assoc:
        assert results(assoc) == [ACCEPTED] * 3
        answers = {str(item.sop_class_uid): item.service_class_application_information
                   for item in assoc.acceptor.primitive.user_information
                   if isinstance(item, SOPClassExtendedNegotiation)}
        assert all(info[:1] == b"\x00" for info in answers.values()), answers

        relational = [
            (datasets.STUDY_ROOT_FIND, identifier(QueryRetrieveLevel="SERIES", Modality="CT", SeriesInstanceUID="")),
            (datasets.STUDY_ROOT_FIND, identifier(QueryRetrieveLevel="IMAGE", StudyInstanceUID="1.2.3",
                                                  SOPInstanceUID="")),
            (datasets.PATIENT_ROOT_FIND, identifier(QueryRetrieveLevel="STUDY", StudyDate="20240101",
                                                    StudyInstanceUID="")),
        ]
        for sop_class, query in relational:
            assert scu.find(assoc, sop_class, query) == [(IDENTIFIER_DOES_NOT_MATCH, None)], query
        refusals = r"WARNING [\w.]+: QUERY-RETRIEVE-SCP #\d+ RELATIONAL@127\.0\.0\.1:\d+: C-FIND #\d+ status 0xA900: "
        wait_for(lambda: len(re.findall(refusals, app.log())) == len(relational), "three A900 log lines")
        hierarchical = identifier(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2.3", Modality="CT",
                                  SeriesInstanceUID="")
        assert scu.find(assoc, datasets.STUDY_ROOT_FIND, hierarchical) == [(SUCCESS, None)]


def test_query_retrieve_scp_answers_c_echo(app):
    """VE-02: C-ECHO on the ILE Verification context of QUERY-RETRIEVE-SCP answers 0000."""
    with scu.association(app.qr_port, QR_TITLE, scu.query_contexts(), calling="VE02_SCU") as assoc:
        assert scu.echo_status(assoc) == SUCCESS
    app.wait_log(r"QUERY-RETRIEVE-SCP #\d+ VE02_SCU@127\.0\.0\.1:\d+: [^\n]*C-ECHO status 0x0000")
