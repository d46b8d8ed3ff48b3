"""The STORAGE-SCU AE specification: the contexts it proposes (from `StorageSCU.proposals`
itself), what STORAGE-SCP accepts that it cannot send, and how C-STORE answers are handled."""

from __future__ import annotations

from pathlib import Path

from appliance.config.model import Config
from appliance.codes import status, uids
from appliance.dicom import contexts
from appliance.dicom.storage_scu import US_COUNTERPARTS, WARNINGS, StorageSCU
from appliance.query.retrieve import Item
from service_tool.render import Block, BulletList, Heading, Paragraph, Table
from service_tool.statement.association import association_policies
from service_tool.statement.common import (CONTEXT_HEADER, QR, SCP, SCU, code, context_rows, retries, seconds,
                                           sop_class_table, status_table, uid_name)


def _scu_proposals(config: Config):
    """What STORAGE-SCU proposes for a move set with one instance of every class it may send,
    from `StorageSCU.proposals` itself. The stored transfer syntax is left unknown (""), so each
    class's syntaxes come in the code's own order."""
    exports = StorageSCU(Path(config.base_dir))
    exports.configure(config)
    return exports.proposals([Item(sop_instance_uid="", file_sop_instance_uid="", sop_class_uid=sop_class,
                                   transfer_syntax_uid="", path="", size=0, index_values={})
                              for sop_class in config.storage_scu.sop_classes])


def _not_retrievable(config: Config, proposals) -> list[str]:
    """(Class, transfer syntax) pairs STORAGE-SCP accepts that STORAGE-SCU cannot send, directly or
    as the US counterpart (SU-09). Compared by exact syntax: STORAGE-SCU proposes both Little
    Endian syntaxes for every class, so converting between them (PC-12) adds nothing here."""
    scu = config.storage_scu
    proposed = {(p.abstract_syntax, ts) for p in proposals for ts in p.transfer_syntaxes}
    gaps = []
    for context in contexts.storage_scp_contexts(config.storage_scp):
        sop_class = context.abstract_syntax
        if sop_class not in config.storage_scp.sop_classes:
            continue  # Verification, Storage Commitment
        classes = {sop_class} | ({US_COUNTERPARTS[sop_class]} if scu.us_conversion and sop_class in US_COUNTERPARTS
                                 else set())
        for ts in context.transfer_syntax:
            if not any((c, ts) in proposed for c in classes):
                gaps.append(f"{uid_name(sop_class)} ({sop_class}) in {uid_name(ts)}")
    return gaps


def specification(config: Config) -> list[Block]:
    scu, timeouts = config.storage_scu, config.timeouts
    proposals = _scu_proposals(config)
    pairs = [(uids.VERIFICATION, uids.IMPLICIT_LE)] + [(p.abstract_syntax, ts) for p in proposals
                                                       for ts in p.transfer_syntaxes]
    mode = ("one presentation context per row (storage_scu.context_mode = single): the destination's answer "
            "shows every transfer syntax it accepts" if scu.context_mode == "single" else
            "one presentation context per SOP class carrying all of its transfer syntaxes, the stored one first "
            "(storage_scu.context_mode = multiple): the destination picks one")
    conversion = ("The retired and current US classes stand in for each other: an instance whose class the "
                  "destination did not accept is sent as the counterpart class if that was accepted, with "
                  "only the SOP Class UID changed (storage_scu.us_conversion = true)." if scu.us_conversion else
                  "Retired and current US classes are not converted into each other "
                  "(storage_scu.us_conversion = false).")
    gaps = _not_retrievable(config, proposals)
    blocks = [
        Heading(3, f"{SCU} Application Entity Specification"),
        Heading(4, "SOP Classes"),
        Paragraph(f"{SCU} provides Standard Conformance to these SOP classes (storage_scu.sop_classes):"),
        sop_class_table(SCU, [(uids.VERIFICATION, "Yes", "No")] + [(c, "Yes", "No") for c in scu.sop_classes]),
        Paragraph(conversion),
        Heading(4, "Association Establishment Policies"),
        *association_policies(
            SCU,
            [Paragraph(f"{SCU} only requests associations, and only when {QR} hands it a C-MOVE. It never accepts "
                       "one. The DICOM Application Context Name is always proposed.")],
            [["Maximum number of simultaneous associations", f"{scu.max_associations} (configurable)"]],
            [Paragraph("The limit counts every destination together; there is no separate limit per destination. "
                       "A C-MOVE beyond it waits for a free association. An association that cannot be opened "
                       f"{retries(scu.open_retries, scu.open_retry_delay)} (storage_scu.open_retries, "
                       "storage_scu.open_retry_delay); then the C-MOVE ends with A702.")],
            uids.IMPLEMENTATION_UID_QR_SCU,
            [Paragraph(f"{SCU} and {QR} send the same Implementation Class UID. The service tool's diagnostic "
                       f"C-ECHO sends it too, except when it calls from {SCP}'s title.")]),
        Heading(4, "Association Initiation Policy"),
        Heading(5, "Activity: Send Images Requested by an External Peer AE"),
        Heading(6, "Description and Sequencing of Activity"),
        BulletList([
            f"A peer asks {QR} to retrieve a study, series or images (C-MOVE-RQ).",
            f"{QR} hands the matching instances to {SCU}.",
            f"{SCU} opens one association to the Move Destination, with the address from the remote AE table.",
            f"{SCU} sends the instances one at a time (C-STORE), in the order study, series, Instance Number.",
            f"{SCU} releases the association. The first instance that cannot be sent stops the export; "
            "nothing is retried.",
        ]),
        Heading(6, "Proposed Presentation Contexts"),
        Paragraph(f"{SCU} proposes the contexts below, but only for the SOP classes of the instances being "
                  f"moved (and their US counterparts); {mode}. Verification is proposed only by the service "
                  "tool's diagnostic C-ECHO."),
        Table(f"Proposed Presentation Contexts for {SCU} AE", CONTEXT_HEADER, context_rows(pairs, "SCU")),
    ]
    if gaps:
        blocks.append(Paragraph(f"As configured, {SCP} accepts instances that {SCU} cannot send, so a C-MOVE "
                                "that includes one ends with A702: " + "; ".join(gaps) + "."))
    warnings = ", ".join(code(c) for c in sorted(WARNINGS))
    blocks += [
        Heading(6, "SOP Specific Conformance for Verification SOP Class"),
        Paragraph("Verification is used as SCU only by the service tool (service-tool echo), to test a "
                  "destination's title, address and port. The service never sends C-ECHO on its own."),
        Heading(6, "SOP Specific Conformance for Image SOP Classes"),
        Paragraph("An instance is sent in the transfer syntax it was stored in. When the destination did not "
                  "accept that one, Explicit and Implicit VR Little Endian are converted into each other; "
                  "JPEG Baseline is never decompressed. The stored bytes are sent unchanged unless the database "
                  "holds a different value for an element (a coerced or default value, a new SOP Instance "
                  "UID, Patient's Sex U sent empty): then a copy with those values is sent."),
        status_table(f"{SCU} C-STORE Response Status Handling", [
            ("Success", code(status.SUCCESS), f"Sent. {QR} sends a Pending C-MOVE response with the counts."),
            ("Warning", warnings, "Sent, counted as a warning sub-operation; a warning is logged."),
            ("Failure", "any other", "The export stops and the association is released. The C-MOVE ends "
                                     "with A702 listing the instances not sent; an alert is logged."),
        ]),
        Table(f"{SCU} Communication Failure Behaviour", ["Exception", "Behaviour"], [
            [f"No C-STORE response within {seconds(scu.dimse_timeout)} (storage_scu.dimse_timeout)",
             "A-ABORT; the C-MOVE ends with A702; logged."],
            [f"The network accepts no data for {seconds(timeouts.send)}, or a PDU pauses for "
             f"{seconds(timeouts.pdu_gap)} (timeouts.send, timeouts.pdu_gap)",
             "A-ABORT; the C-MOVE ends with A702; logged."],
            ["The destination aborts or the connection is lost", "The C-MOVE ends with A702; logged."],
        ]),
        Heading(4, "Association Acceptance Policy"),
        Paragraph(f"{SCU} does not accept associations."),
    ]
    return blocks

