"""Presentation contexts each local AE accepts, derived from the configuration (requirements §3)."""

from __future__ import annotations

from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import register_uid, uid_to_service_class

from appliance.config.model import QueryRetrieveSCP, StorageSCP
from appliance.codes import uids


def storage_scp_contexts(scp: StorageSCP) -> list[PresentationContext]:
    """PC-01..PC-04, and Storage Commitment Push Model as SCP (SC-01, SC-25). The TS order is the preference: pynetdicom, as acceptor, picks the first
    of its own list that the requestor proposed, so JPEG-B > ELE > ILE gives PC-03."""
    contexts = [build_context(uids.VERIFICATION, [uids.EXPLICIT_LE, uids.IMPLICIT_LE]),  # D-10
                build_context(uids.STORAGE_COMMITMENT_PUSH, [uids.EXPLICIT_LE, uids.IMPLICIT_LE])]  # SC-25
    for sop_class in scp.sop_classes:
        _ensure_storage_class(sop_class)
        syntaxes = [ts for ts in scp.transfer_syntaxes
                    if ts != uids.JPEG_BASELINE or sop_class in scp.jpeg_sop_classes]  # PC-02
        contexts.append(build_context(sop_class, syntaxes))
    return contexts


def _ensure_storage_class(sop_class: str) -> None:
    """pynetdicom aborts the association on a C-STORE whose SOP class it does not map to its
    Storage service class, and its table lacks retired classes the matrix accepts (USr
    1.2.840.10008.5.1.4.1.1.6, USMFr 1.2.840.10008.5.1.4.1.1.3) and any added by AE-16."""
    if uid_to_service_class(sop_class) is not StorageServiceClass:
        register_uid(sop_class, "Storage_" + sop_class.replace(".", "_"), StorageServiceClass)


def query_retrieve_scp_contexts(_qr: QueryRetrieveSCP) -> list[PresentationContext]:
    """PC-05: Verification and Patient/Study Root FIND and MOVE, Implicit VR Little Endian only.
    No SOP Class Extended Negotiation answer: relational queries and retrieves are not offered
    (PC-07)."""
    return [build_context(sop_class, [uids.IMPLICIT_LE])
            for sop_class in (uids.VERIFICATION, uids.PATIENT_ROOT_FIND, uids.STUDY_ROOT_FIND,
                              uids.PATIENT_ROOT_MOVE, uids.STUDY_ROOT_MOVE)]
