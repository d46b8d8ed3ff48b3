"""Presentation contexts each local AE accepts, derived from the configuration (requirements §3)."""

from __future__ import annotations

from pynetdicom.presentation import PresentationContext, build_context

from appliance.config.model import QueryRetrieveSCP, StorageSCP
from appliance.codes import uids


def storage_scp_contexts(scp: StorageSCP) -> list[PresentationContext]:
    """PC-01..PC-04, and Storage Commitment Push Model as SCP (SC-01, SC-25). The TS order is the preference: the negotiation (pynetdicom's) picks the first of
    the acceptor's list that the requestor proposed, so JPEG-B > ELE > ILE gives PC-03."""
    contexts = [build_context(uids.VERIFICATION, [uids.EXPLICIT_LE, uids.IMPLICIT_LE]),  # D-10
                build_context(uids.STORAGE_COMMITMENT_PUSH, [uids.EXPLICIT_LE, uids.IMPLICIT_LE])]  # SC-25
    for sop_class in scp.sop_classes:
        syntaxes = [ts for ts in scp.transfer_syntaxes
                    if ts != uids.JPEG_BASELINE or sop_class in scp.jpeg_sop_classes]  # PC-02
        contexts.append(build_context(sop_class, syntaxes))
    return contexts


def query_retrieve_scp_contexts(_qr: QueryRetrieveSCP) -> list[PresentationContext]:
    """PC-05: Verification and Patient/Study Root FIND and MOVE, Implicit VR Little Endian only.
    No SOP Class Extended Negotiation answer: relational queries and retrieves are not offered
    (PC-07)."""
    return [build_context(sop_class, [uids.IMPLICIT_LE])
            for sop_class in (uids.VERIFICATION, uids.PATIENT_ROOT_FIND, uids.STUDY_ROOT_FIND,
                              uids.PATIENT_ROOT_MOVE, uids.STUDY_ROOT_MOVE)]
