"""The QUERY-RETRIEVE-SCP AE specification: its association acceptance, the C-FIND keys (from
the query code's key table) and the C-FIND and C-MOVE statuses."""

from __future__ import annotations

from pydicom.datadict import dictionary_description

from appliance.config.model import Config
from appliance.codes import status, uids
from appliance.dicom import contexts
from appliance.query.keys import KEYS, PATIENT_ROOT, STUDY_ROOT
from service_tool.render import Block, Heading, Paragraph, Table
from service_tool.statement.association import accepted_contexts, association_policies, rejections
from service_tool.statement.common import (QR, SCU, code, limit_text, listed, ports_text, returned_statuses, seconds,
                                           sop_class_table)


def _query_keys() -> Table:
    rows = []
    for key in KEYS:
        matching = ", ".join(key.matching) if key.matching else "NONE"
        rows.append([dictionary_description(key.tag), f"({key.tag >> 16:04X},{key.tag & 0xFFFF:04X})",
                     key.level.name, matching])
    return Table("Supported C-FIND Keys (Patient Root and Study Root)", ["Attribute Name", "Tag",
                                                                         "Level (Patient Root)", "Matching"], rows)


def specification(config: Config) -> list[Block]:
    qr = config.query_retrieve_scp
    accepted = contexts.query_retrieve_scp_contexts(qr)
    destinations = [ae.ae_title.strip() for ae in config.remote_aes if ae.move_destination]
    levels = "; ".join(f"{model.name}: {', '.join(level.name for level in model.levels)}"
                       for model in (PATIENT_ROOT, STUDY_ROOT))
    return [
        Heading(3, f"{QR} Application Entity Specification"),
        Heading(4, "SOP Classes"),
        Paragraph(f"{QR} provides Standard Conformance to these SOP classes:"),
        sop_class_table(QR, [(c.abstract_syntax, "No", "Yes") for c in accepted]),
        Heading(4, "Association Policies"),
        *association_policies(
            QR,
            [Paragraph(f"{QR} never initiates associations. It accepts them for Verification, C-FIND and C-MOVE; "
                       f"the instances of a C-MOVE are sent by {SCU} under its own title.")],
            [["Maximum number of simultaneous associations", limit_text(qr)]],
            [Paragraph("Each association is served by its own thread, so a hung peer does not delay the others. "
                       "The limit is counted separately from STORAGE-SCP's.")],
            uids.IMPLEMENTATION_UID_QR_SCU, []),
        Heading(4, "Association Initiation Policy"),
        Paragraph(f"{QR} does not initiate associations."),
        Heading(4, "Association Acceptance Policy"),
        Heading(5, "Activity: Handling Query and Retrieval Requests"),
        Heading(6, "Description and Sequencing of Activity"),
        Paragraph(f"{QR} listens {ports_text(qr)}. An association request is checked in the order of the table "
                  "below and the first reason that applies is sent. Several C-FIND and C-MOVE requests may "
                  f"follow each other on one association. With no message in either direction for "
                  f"{seconds(qr.idle_timeout)} (query_retrieve_scp.idle_timeout) the association is aborted; "
                  "a running C-MOVE export goes on."),
        rejections(QR, config),
        Heading(6, "Accepted Presentation Contexts"),
        Paragraph("Only Implicit VR Little Endian is accepted. SOP Class Extended Negotiation is not answered: "
                  "relational queries and retrieves are not offered."),
        accepted_contexts(QR, accepted),
        Heading(6, "SOP Specific Conformance for Query SOP Classes"),
        Paragraph(f"Hierarchical queries only. Levels: {levels}. Below the top level the unique key of every "
                  "higher level must be given with a single value. Only the requested attributes are returned, "
                  "with the values in the database. A Patient Root PATIENT query needs a Patient ID or "
                  "Patient's Name; a Study Root STUDY query needs one of them or a study key with a value. "
                  "Matching types: S single value, * wildcard (* and ?), U universal, R range, L list of UIDs; "
                  "NONE: returned, not matched. "
                  "Person names match without regard to case; other values are case-sensitive. A key with "
                  "matching NONE, or a matching type the table does not list, restricts nothing and makes the "
                  "Pending status FF01. Specific Character Set is accepted and returned when needed."),
        _query_keys(),
        *returned_statuses(f"{QR} C-FIND Response Status Return Behaviour", [
            ("Success", code(status.SUCCESS), "Matching is complete."),
            ("Pending", code(status.PENDING), "A match; every key was supported as used."),
            ("Pending", code(status.PENDING_UNSUPPORTED_KEYS), "A match; some keys were not used for matching."),
            ("Cancel", code(status.CANCEL), "Matching stopped by a C-CANCEL."),
            ("Failure", code(status.IDENTIFIER_MISMATCH), "The identifier is invalid for the model or level."),
            ("Failure", code(status.UNABLE_TO_PROCESS), "The query is not specific enough (see above)."),
            ("Refused", code(status.OUT_OF_RESOURCES), "The database cannot answer; an alert is logged."),
            ("Failure", code(status.UNEXPECTED_FIND_FAILURE), "An unexpected error; logged."),
        ]),
        Heading(6, "SOP Specific Conformance for Retrieval SOP Classes"),
        Paragraph("The Move Destination must be a title of the remote AE table allowed as C-MOVE destination "
                  f"(now: {listed(destinations)}); else the answer is A801 and nothing else is checked. "
                  "UID lists are accepted for the unique key of the requested level (STUDY, SERIES, IMAGE). "
                  f"{SCU} sends all matching instances over one association; the first failure stops the export "
                  "and the final status is A702. B000 is never returned. If the requester's association goes "
                  "away, the export still completes."),
        *returned_statuses(f"{QR} C-MOVE Response Status Return Behaviour", [
            ("Success", code(status.SUCCESS), "Every instance was sent (some perhaps with warnings)."),
            ("Pending", code(status.PENDING), "First with the number of instances, then after each one sent."),
            ("Cancel", code(status.CANCEL), "Stopped by a C-CANCEL after the instance being sent."),
            ("Failure", code(status.IDENTIFIER_MISMATCH), "The identifier is invalid for the model or level."),
            ("Refused", code(status.UNABLE_TO_CALCULATE_MATCHES), "The database cannot list the matches; alert."),
            ("Refused", code(status.SUBOPERATIONS_FAILED), "An instance could not be sent (or read, or no "
                                                            "association); the rest were not attempted; alert."),
            ("Refused", code(status.MOVE_DESTINATION_UNKNOWN), "The Move Destination is not a known destination."),
        ]),
    ]

