"""Presentation contexts each local AE accepts, derived from the configuration (requirements §3)."""

from __future__ import annotations

from pynetdicom.presentation import PresentationContext, build_context

from appliance.config.model import QueryRetrieveSCP, StorageSCP
from appliance.dicom import uids


def storage_scp_contexts(scp: StorageSCP) -> list[PresentationContext]:
    """PC-01..PC-04. The TS order is the preference: pynetdicom, as acceptor, picks the first
    of its own list that the requestor proposed, so JPEG-B > ELE > ILE gives PC-03."""
    contexts = [build_context(uids.VERIFICATION, [uids.EXPLICIT_LE, uids.IMPLICIT_LE])]  # D-10
    for sop_class in scp.sop_classes:
        syntaxes = [ts for ts in scp.transfer_syntaxes
                    if ts != uids.JPEG_BASELINE or sop_class in scp.jpeg_sop_classes]  # PC-02
        contexts.append(build_context(sop_class, syntaxes))
    return contexts


def query_retrieve_scp_contexts(_qr: QueryRetrieveSCP) -> list[PresentationContext]:
    """PC-05: Verification with Implicit VR Little Endian only (FIND and MOVE: later issues)."""
    return [build_context(uids.VERIFICATION, [uids.IMPLICIT_LE])]
