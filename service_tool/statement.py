"""The DICOM Conformance Statement of the box as configured, as document blocks (`render.py`).

It follows the outline of the product's conformance statement: overview, networking (the
implementation model, one specification per AE, network interfaces, configuration), media
interchange, character sets, security and the annex on element use. Every value that can be
configured is taken from the loaded `Config`. The presentation contexts come from the
functions the service itself negotiates and proposes with (`dicom.contexts`,
`StorageSCU.proposals`), and the C-FIND keys from the query code's key table, so the statement
cannot list a context or key that the service would handle differently.
"""

from __future__ import annotations

from pathlib import Path

from pydicom.datadict import dictionary_description
from pydicom.uid import UID

from appliance import __version__
from appliance.commitment import COMMITTABLE_CLASSES
from appliance.config.model import Config, ListeningAE, calling_allow_list
from appliance.dicom import admission, contexts, status, uids
from appliance.dicom.storage_scu import US_COUNTERPARTS, WARNINGS, StorageSCU
from appliance.query.keys import KEYS, PATIENT_ROOT, STUDY_ROOT
from appliance.query.retrieve import Item
from appliance.store import ingest
from service_tool.render import Block, BulletList, Contents, Heading, Paragraph, Table

PRODUCT = "DICOM archive appliance"
SCU, QR, SCP = "STORAGE-SCU", "QUERY-RETRIEVE-SCP", "STORAGE-SCP"
_SECTION = {SCP: "storage_scp", QR: "query_retrieve_scp"}
_CONTEXT_HEADER = ["Abstract Syntax", "SOP Class UID", "Transfer Syntax", "Transfer Syntax UID", "Role",
                   "Extended Negotiation"]
_SOP_CLASS_HEADER = ["SOP Class Name", "SOP Class UID", "SCU", "SCP"]
# PS3.8 9.3.4: the words for the A-ASSOCIATE-RJ fields the listening AEs send.
_RESULT = {1: "rejected-permanent", 2: "rejected-transient"}
_SOURCE = {1: "DICOM UL service-user", 2: "DICOM UL service-provider (ACSE)",
           3: "DICOM UL service-provider (Presentation)"}
_REASON = {(1, 1): "no-reason-given", (1, 2): "application-context-name-not-supported",
           (1, 3): "calling-AE-title-not-recognized", (1, 7): "called-AE-title-not-recognized",
           (2, 1): "no-reason-given", (3, 1): "temporary-congestion", (3, 2): "local-limit-exceeded"}


def build(config: Config, source: str) -> list[Block]:
    """The whole statement; `source` names the configuration file it was generated from."""
    return [*_cover(source), Contents(), *_overview(config), Heading(2, "Networking"),
            *_implementation_model(config), *_storage_scu(config),
            *_query_retrieve_scp(config), *_storage_scp(config), *_network_interfaces(config),
            *_configuration(config), *_media_and_character_sets(), *_security(config), *_annex(config)]


# --- values as the statement words them ----------------------------------------------------

def _uid_name(uid: str) -> str:
    """The UID's name in the DICOM dictionary (pydicom's), marked when retired."""
    known = UID(uid)
    if known.name == uid:
        return "(not in the DICOM dictionary)"
    return known.name + (" (Retired)" if known.is_retired else "")


def _yes(flag: bool) -> str:
    return "Yes" if flag else "No"


def _seconds(value: float) -> str:
    text = f"{value:g} s"
    return f"{text} ({value / 60:g} min)" if value >= 60 and value % 60 == 0 else text


def _bytes(value: int) -> str:
    return f"{value} bytes"


def _retries(count: int, delay: float) -> str:
    """How a failed attempt is repeated, as the end of a sentence."""
    if count == 0:
        return "is not tried again"
    return f"is tried {count} more time{'' if count == 1 else 's'}, {_seconds(delay)} apart"


def _listed(values) -> str:
    return ", ".join(values) if values else "none"


def _sop_class_table(ae: str, rows: list[tuple[str, str, str]]) -> Table:
    """rows: (SOP class UID, SCU, SCP)."""
    return Table(f"SOP Classes for {ae} AE", _SOP_CLASS_HEADER,
                 [[_uid_name(uid), uid, scu, scp] for uid, scu, scp in rows])


def _context_rows(pairs, role: str) -> list[list[str]]:
    """One row per (abstract syntax, transfer syntax), in the order given."""
    return [[_uid_name(sop_class), sop_class, _uid_name(ts), ts, role, "None"] for sop_class, ts in pairs]


def _status_table(caption: str, rows: list[tuple[str, str, str]]) -> Table:
    return Table(caption, ["Service Status", "Status Code", "Behaviour"], [list(row) for row in rows])


def _code(code: int) -> str:
    return f"{code:04X}"


# --- cover, overview, implementation model --------------------------------------------------

def _cover(source: str) -> list[Block]:
    return [
        Heading(1, f"DICOM Conformance Statement: {PRODUCT}"),
        Table("Document", ["Item", "Value"], [
            ["Product", PRODUCT],
            ["Software version", __version__],
            ["Implementation Version Name", uids.implementation_version_name(__version__)],
            ["Generated from", source],
        ]),
        Paragraph(f"This statement describes the {PRODUCT} as it is configured now. The command service-tool "
                  "conformance generated it from the configuration file named above, so AE titles, ports, SOP "
                  "classes, transfer syntaxes, limits, timeouts, the remote AE table and the access lists are "
                  "the values in effect, not only the product's defaults. Generate it again after a "
                  "configuration change."),
    ]


def _overview(config: Config) -> list[Block]:
    scp, scu = config.storage_scp, config.storage_scu
    storage = list(dict.fromkeys(scp.sop_classes + scu.sop_classes))
    rows = [["Verification", uids.VERIFICATION, "Yes (diagnostic, service tool)", "Yes"]]
    rows += [["Transfer", uid, _yes(uid in scu.sop_classes), _yes(uid in scp.sop_classes)] for uid in storage]
    rows.append(["Storage Commitment", uids.STORAGE_COMMITMENT_PUSH, "No", "Yes"])
    rows += [["Query/Retrieve", c.abstract_syntax, "No", "Yes"]
             for c in contexts.query_retrieve_scp_contexts(config.query_retrieve_scp)
             if c.abstract_syntax != uids.VERIFICATION]
    return [
        Heading(2, "Conformance Statement Overview"),
        Paragraph(f"The {PRODUCT} is a networked archive for diagnostic images. Modalities and other systems "
                  "send it images for permanent storage and ask it to commit to them; workstations query "
                  "its database and retrieve images, which it sends to a destination named in its remote AE "
                  "table."),
        Table("Network Services", ["Service", "SOP Class Name", "SOP Class UID", "User of Service (SCU)",
                                   "Provider of Service (SCP)"],
              [[service, _uid_name(uid), uid, scu_, scp_] for service, uid, scu_, scp_ in rows]),
        Paragraph("Relational queries and retrieves are not supported, neither as SCU nor as SCP. Media "
                  "interchange is not supported."),
    ]


def _implementation_model(config: Config) -> list[Block]:
    scp, qr, scu = (config.storage_scp.ae_title.strip(), config.query_retrieve_scp.ae_title.strip(),
                    config.storage_scu.ae_title.strip())
    shared = (f"Here {QR} and {SCU} share the title {qr}." if qr == scu
              else "Here all three titles differ.")
    return [
        Heading(3, "Implementation Model"),
        Heading(4, "Application Data Flow"),
        Paragraph("The product runs three DICOM Application Entities in one Linux service. By default each has "
                  f"its own AE title. {QR} and {SCU} may be configured with the same title; {SCP} must have "
                  f"its own, and a configuration that shares it is refused. {shared}"),
        BulletList([
            f"{SCP} ({scp}) receives images (C-STORE) and Storage Commitment requests (N-ACTION) and answers "
            "C-ECHO. It sends Storage Commitment results (N-EVENT-REPORT).",
            f"{QR} ({qr}) answers C-FIND and C-MOVE requests and C-ECHO. For a C-MOVE it hands the matching "
            f"instances to {SCU}.",
            f"{SCU} ({scu}) sends the instances of a C-MOVE to its Move Destination (C-STORE).",
        ]),
        Heading(4, "Functional Definition of AEs"),
        Paragraph(f"{SCP} waits for associations on its port. Every instance it accepts is written to disk and "
                  "entered in the database before the success status is returned. A Storage Commitment "
                  "request is decided at once from the database; it is never held until instances arrive "
                  "later."),
        Paragraph(f"{QR} waits for associations on its port and answers queries from the database. For a "
                  f"C-MOVE it looks up the Move Destination in the remote AE table and has {SCU} send the "
                  "matching instances there."),
        Paragraph(f"{SCU} opens an association only when {QR} hands it a C-MOVE; it never sends on its own "
                  "and never accepts associations. The presentation contexts it proposes follow the SOP "
                  "classes of the instances to be sent."),
        Heading(4, "Sequencing of Real-World Activities"),
        Paragraph(f"An instance must have been received by {SCP} before a Storage Commitment, query or "
                  "retrieve request about it can succeed. No other order is required: a commitment request "
                  "need not precede queries or retrieves."),
    ]


def _association_policies(ae: str, general: list[Block], numbers: list[list[str]],
                          number_notes: list[Block], implementation_uid: str, notes: list[Block]) -> list[Block]:
    """The four parts every AE specification has: general, number of associations,
    asynchronous nature, implementation identifying information."""
    return [
        Heading(5, "General"), *general,
        Table(f"DICOM Application Context for {ae} AE", ["Application Context Name", "UID"],
              [[_uid_name(uids.APPLICATION_CONTEXT), uids.APPLICATION_CONTEXT]]),
        Heading(5, "Number of Associations"),
        Table(f"Number of Associations for {ae} AE", ["Parameter", "Value"], numbers), *number_notes,
        Heading(5, "Asynchronous Nature"),
        Paragraph(f"{ae} does not support asynchronous operations: each request is answered before the next "
                  "is processed."),
        Table(f"Asynchronous Nature for {ae} AE", ["Parameter", "Value"],
              [["Maximum number of outstanding asynchronous transactions", "1 (not configurable)"]]),
        Heading(5, "Implementation Identifying Information"),
        Table(f"DICOM Implementation Class and Version for {ae} AE", ["Parameter", "Value"], [
            ["Implementation Class UID", implementation_uid],
            ["Implementation Version Name", uids.implementation_version_name(__version__)],
        ]), *notes,
    ]


def _limit_text(ae: ListeningAE) -> str:
    per = " per calling AE title" if ae.association_limit == "per_calling_ae" else " in total"
    return f"{ae.max_associations}{per} (configurable)"


def _rejections(ae_name: str, config: Config) -> Table:
    """AS-09's order; rows for checks the configuration switches off are left out."""
    section = _SECTION[ae_name]
    ae = getattr(config, section)
    checks = [(admission.UNPARSEABLE, "The A-ASSOCIATE-RQ cannot be parsed."),
              (admission.APPLICATION_CONTEXT, f"The Application Context Name is not {uids.APPLICATION_CONTEXT}.")]
    if ae.check_called_ae:
        checks.append((admission.CALLED_AE, f"The Called AE Title is not {ae.ae_title.strip()}."))
    if calling_allow_list(config, section):
        checks.append((admission.CALLING_AE, "The Calling AE Title is not in the AE's allow-list (see Security)."))
    if ae.accepted_addresses:
        checks.append((admission.ADDRESS, "The peer's IP address is not in the AE's allow-list (see Security)."))
    per = " from the same Calling AE Title" if ae.association_limit == "per_calling_ae" else ""
    checks += [(admission.LIMIT, f"{ae.max_associations} associations{per} are open already."),
               (admission.CONGESTION, "The service is starting or stopping, or cannot start a worker thread."),
               (admission.NO_CONTEXT, "None of the proposed presentation contexts can be accepted.")]
    return Table(f"Association Rejection Reasons for {ae_name} AE", ["Result", "Source", "Reason/Diagnosis", "When"],
                 [[f"{r.result} {_RESULT[r.result]}", f"{r.source} {_SOURCE[r.source]}",
                   f"{r.reason} {_REASON[r.source, r.reason]}", why] for r, why in checks])


def _accepted_contexts(ae_name: str, accepted) -> Table:
    pairs = [(c.abstract_syntax, ts) for c in accepted for ts in c.transfer_syntax]
    return Table(f"Accepted Presentation Contexts for {ae_name} AE", _CONTEXT_HEADER, _context_rows(pairs, "SCP"))


# --- STORAGE-SCU ------------------------------------------------------------------------------

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
                gaps.append(f"{_uid_name(sop_class)} ({sop_class}) in {_uid_name(ts)}")
    return gaps


def _storage_scu(config: Config) -> list[Block]:
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
        _sop_class_table(SCU, [(uids.VERIFICATION, "Yes", "No")] + [(c, "Yes", "No") for c in scu.sop_classes]),
        Paragraph(conversion),
        Heading(4, "Association Establishment Policies"),
        *_association_policies(
            SCU,
            [Paragraph(f"{SCU} only requests associations, and only when {QR} hands it a C-MOVE. It never accepts "
                       "one. The DICOM Application Context Name is always proposed.")],
            [["Maximum number of simultaneous associations", f"{scu.max_associations} (configurable)"]],
            [Paragraph("The limit counts every destination together; there is no separate limit per destination. "
                       "A C-MOVE beyond it waits for a free association. An association that cannot be opened "
                       f"{_retries(scu.open_retries, scu.open_retry_delay)} (storage_scu.open_retries, "
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
        Table(f"Proposed Presentation Contexts for {SCU} AE", _CONTEXT_HEADER, _context_rows(pairs, "SCU")),
    ]
    if gaps:
        blocks.append(Paragraph(f"As configured, {SCP} accepts instances that {SCU} cannot send, so a C-MOVE "
                                "that includes one ends with A702: " + "; ".join(gaps) + "."))
    warnings = ", ".join(_code(c) for c in sorted(WARNINGS))
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
        _status_table(f"{SCU} C-STORE Response Status Handling", [
            ("Success", _code(status.SUCCESS), f"Sent. {QR} sends a Pending C-MOVE response with the counts."),
            ("Warning", warnings, "Sent, counted as a warning sub-operation; a warning is logged."),
            ("Failure", "any other", "The export stops and the association is released. The C-MOVE ends "
                                     "with A702 listing the instances not sent; an alert is logged."),
        ]),
        Table(f"{SCU} Communication Failure Behaviour", ["Exception", "Behaviour"], [
            [f"No C-STORE response within {_seconds(scu.dimse_timeout)} (storage_scu.dimse_timeout)",
             "A-ABORT; the C-MOVE ends with A702; logged."],
            [f"The network accepts no data for {_seconds(timeouts.send)}, or a PDU pauses for "
             f"{_seconds(timeouts.pdu_gap)} (timeouts.send, timeouts.pdu_gap)",
             "A-ABORT; the C-MOVE ends with A702; logged."],
            ["The destination aborts or the connection is lost", "The C-MOVE ends with A702; logged."],
        ]),
        Heading(4, "Association Acceptance Policy"),
        Paragraph(f"{SCU} does not accept associations."),
    ]
    return blocks


# --- QUERY-RETRIEVE-SCP -----------------------------------------------------------------------

def _query_keys() -> Table:
    rows = []
    for key in KEYS:
        matching = ", ".join(key.matching) if key.matching else "NONE"
        rows.append([dictionary_description(key.tag), f"({key.tag >> 16:04X},{key.tag & 0xFFFF:04X})",
                     key.level.name, matching])
    return Table("Supported C-FIND Keys (Patient Root and Study Root)", ["Attribute Name", "Tag",
                                                                         "Level (Patient Root)", "Matching"], rows)


def _query_retrieve_scp(config: Config) -> list[Block]:
    qr = config.query_retrieve_scp
    accepted = contexts.query_retrieve_scp_contexts(qr)
    destinations = [ae.ae_title.strip() for ae in config.remote_aes if ae.move_destination]
    levels = "; ".join(f"{model.name}: {', '.join(level.name for level in model.levels)}"
                       for model in (PATIENT_ROOT, STUDY_ROOT))
    return [
        Heading(3, f"{QR} Application Entity Specification"),
        Heading(4, "SOP Classes"),
        Paragraph(f"{QR} provides Standard Conformance to these SOP classes:"),
        _sop_class_table(QR, [(c.abstract_syntax, "No", "Yes") for c in accepted]),
        Heading(4, "Association Policies"),
        *_association_policies(
            QR,
            [Paragraph(f"{QR} never initiates associations. It accepts them for Verification, C-FIND and C-MOVE; "
                       f"the instances of a C-MOVE are sent by {SCU} under its own title.")],
            [["Maximum number of simultaneous associations", _limit_text(qr)]],
            [Paragraph("Each association is served by its own thread, so a hung peer does not delay the others. "
                       "The limit is counted separately from STORAGE-SCP's.")],
            uids.IMPLEMENTATION_UID_QR_SCU, []),
        Heading(4, "Association Initiation Policy"),
        Paragraph(f"{QR} does not initiate associations."),
        Heading(4, "Association Acceptance Policy"),
        Heading(5, "Activity: Handling Query and Retrieval Requests"),
        Heading(6, "Description and Sequencing of Activity"),
        Paragraph(f"{QR} listens on port {qr.port}. An association request is checked in the order of the table "
                  "below and the first reason that applies is sent. Several C-FIND and C-MOVE requests may "
                  f"follow each other on one association. With no message in either direction for "
                  f"{_seconds(qr.idle_timeout)} (query_retrieve_scp.idle_timeout) the association is aborted; "
                  "a running C-MOVE export goes on."),
        _rejections(QR, config),
        Heading(6, "Accepted Presentation Contexts"),
        Paragraph("Only Implicit VR Little Endian is accepted. SOP Class Extended Negotiation is not answered: "
                  "relational queries and retrieves are not offered."),
        _accepted_contexts(QR, accepted),
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
        _status_table(f"{QR} C-FIND Response Status Return Behaviour", [
            ("Success", _code(status.SUCCESS), "Matching is complete."),
            ("Pending", _code(status.PENDING), "A match; every key was supported as used."),
            ("Pending", _code(status.PENDING_UNSUPPORTED_KEYS), "A match; some keys were not used for matching."),
            ("Cancel", _code(status.CANCEL), "Matching stopped by a C-CANCEL."),
            ("Failure", _code(status.IDENTIFIER_MISMATCH), "The identifier is invalid for the model or level."),
            ("Failure", _code(status.UNABLE_TO_PROCESS), "The query is not specific enough (see above)."),
            ("Refused", _code(status.OUT_OF_RESOURCES), "The database cannot answer; an alert is logged."),
            ("Failure", _code(status.UNEXPECTED_FIND_FAILURE), "An unexpected error; logged."),
        ]),
        Heading(6, "SOP Specific Conformance for Retrieval SOP Classes"),
        Paragraph("The Move Destination must be a title of the remote AE table allowed as C-MOVE destination "
                  f"(now: {_listed(destinations)}); else the answer is A801 and nothing else is checked. "
                  "UID lists are accepted for the unique key of the requested level (STUDY, SERIES, IMAGE). "
                  f"{SCU} sends all matching instances over one association; the first failure stops the export "
                  "and the final status is A702. B000 is never returned. If the requester's association goes "
                  "away, the export still completes."),
        _status_table(f"{QR} C-MOVE Response Status Return Behaviour", [
            ("Success", _code(status.SUCCESS), "Every instance was sent (some perhaps with warnings)."),
            ("Pending", _code(status.PENDING), "First with the number of instances, then after each one sent."),
            ("Cancel", _code(status.CANCEL), "Stopped by a C-CANCEL after the instance being sent."),
            ("Failure", _code(status.IDENTIFIER_MISMATCH), "The identifier is invalid for the model or level."),
            ("Refused", _code(status.UNABLE_TO_CALCULATE_MATCHES), "The database cannot list the matches; alert."),
            ("Refused", _code(status.SUBOPERATIONS_FAILED), "An instance could not be sent (or read, or no "
                                                            "association); the rest were not attempted; alert."),
            ("Refused", _code(status.MOVE_DESTINATION_UNKNOWN), "The Move Destination is not a known destination."),
        ]),
    ]


# --- STORAGE-SCP ------------------------------------------------------------------------------

def _storage_scp(config: Config) -> list[Block]:
    scp = config.storage_scp
    accepted = contexts.storage_scp_contexts(scp)
    reporters = [ae.ae_title.strip() for ae in config.remote_aes if ae.commitment]
    committable = sorted(COMMITTABLE_CLASSES, key=lambda uid: tuple(map(int, uid.split("."))))
    uncommittable = [c for c in scp.sop_classes if c not in COMMITTABLE_CLASSES]
    required = [*ingest.MANDATORY.values(), *ingest.DISPLAY.values(), "Pixel Data"]
    new_association = f"a new association from {scp.ae_title.strip()} to the requester's remote AE entry"
    when = (f"A Storage Commitment result (N-EVENT-REPORT) is always sent over {new_association}, as soon as the "
            "N-ACTION has been answered (storage_scp.always_new_association_for_reports = true)."
            if scp.always_new_association_for_reports else
            "A Storage Commitment result (N-EVENT-REPORT) is sent on the association that carried the N-ACTION, "
            "after its response. When the requester has released that association, answers the report with a "
            f"release request, or does not answer within {_seconds(scp.idle_timeout)} (storage_scp.idle_timeout, "
            f"then A-ABORT), the report goes over {new_association}, at once.")
    duplicate = {"new_uid": "the new instance is kept as well, under a new SOP Instance UID assigned in the "
                            "database (and used when it is exported); its file stays as received",
                 "replace": "the new instance replaces the stored one (file and database entry)"}[scp.duplicate_policy]
    blocks = [
        Heading(3, f"{SCP} Application Entity Specification"),
        Heading(4, "SOP Classes"),
        Paragraph(f"{SCP} provides Standard Conformance to these SOP classes (storage classes: "
                  "storage_scp.sop_classes):"),
        _sop_class_table(SCP, [(uids.VERIFICATION, "Yes (service tool)", "Yes"),
                               (uids.STORAGE_COMMITMENT_PUSH, "No", "Yes")]
                         + [(c, "No", "Yes") for c in scp.sop_classes]),
        Heading(4, "Association Policies"),
        *_association_policies(
            SCP,
            [Paragraph(f"{SCP} accepts associations for Verification, Storage and Storage Commitment. It requests "
                       "associations only to send Storage Commitment results.")],
            [["Maximum number of simultaneous associations requested by peers", _limit_text(scp)],
             ["Maximum number of simultaneous associations proposed by " + SCP, "1 (not configurable)"],
             ["Maximum number of outstanding Storage Commitment requests", "No limit"]],
            [Paragraph("Each association is served by its own thread, so a hung peer does not delay the others. "
                       "A peer may send further Storage Commitment requests before a result has been reported; "
                       "they are answered in turn.")],
            uids.IMPLEMENTATION_UID_SCP,
            [Paragraph(f"{SCP}'s Implementation Class UID differs from the other AEs'.")]),
        Heading(4, "Association Initiation Policy"),
        Heading(5, "Activity: Send Storage Commitment Notification over a New Association"),
        Heading(6, "Description and Sequencing of Activity"),
        Paragraph(f"{when} All of a requester's waiting reports go on one association, one association at a "
                  "time. A report whose attempt failed "
                  f"{_retries(scp.report_attempts, scp.report_retry_interval)} (storage_scp.report_attempts, "
                  "storage_scp.report_retry_interval); then it is abandoned and an error is logged. Requests "
                  "acknowledged with 0000 are kept on disk and reported after a restart too. Remote AEs that "
                  f"receive reports over a new association: {_listed(reporters)}."),
        Heading(6, "Proposed Presentation Contexts"),
        Paragraph("Storage Commitment is proposed with an SCP/SCU Role Selection item (SCP role). Verification "
                  "is proposed only by the service tool's diagnostic C-ECHO (service-tool echo --as scp)."),
        Table(f"Proposed Presentation Contexts for {SCP} AE", _CONTEXT_HEADER,
              _context_rows([(uids.STORAGE_COMMITMENT_PUSH, uids.EXPLICIT_LE),
                             (uids.STORAGE_COMMITMENT_PUSH, uids.IMPLICIT_LE)], "SCP")
              + _context_rows([(uids.VERIFICATION, uids.IMPLICIT_LE)], "SCU")),
        Heading(6, "SOP Specific Conformance for Storage Commitment SOP Class"),
        _status_table(f"{SCP} N-EVENT-REPORT Response Status Handling", [
            ("Success", _code(status.SUCCESS), "Delivered; logged."),
            ("Warning", _code(status.ATTRIBUTE_LIST_ERROR), "Delivered; a warning is logged."),
            ("Failure", "any other", "Not delivered; an error is logged. The reports still waiting on that "
                                     "association are sent no further; the attempt counts as failed."),
        ]),
        Heading(4, "Association Acceptance Policy"),
        Heading(5, "Activity: Receive Images and Storage Commitment Requests"),
        Heading(6, "Description and Sequencing of Activity"),
        Paragraph(f"{SCP} listens on port {scp.port}. An association request is checked in the order of the table "
                  "below and the first reason that applies is sent. Any number of instances, and Storage "
                  "Commitment requests, may follow each other on one association. With no message for "
                  f"{_seconds(scp.idle_timeout)} (storage_scp.idle_timeout) the association is aborted; "
                  "instances already received stay stored."),
        _rejections(SCP, config),
        Heading(6, "Accepted Presentation Contexts"),
        Paragraph("When a context offers several transfer syntaxes, the one accepted is the first of this "
                  "order (storage_scp.transfer_syntaxes): "
                  + ", ".join(_uid_name(ts) for ts in scp.transfer_syntaxes) + ". JPEG Baseline is accepted "
                  "only for the classes in storage_scp.jpeg_sop_classes. A context for another abstract syntax "
                  "is refused (result 3), one without an accepted transfer syntax too (result 4)."),
        Table(f"Transfer Syntax Preference for {SCP} AE", ["Preference", "Transfer Syntax", "Transfer Syntax UID"],
              [[str(i), _uid_name(ts), ts] for i, ts in enumerate(scp.transfer_syntaxes, 1)]),
        _accepted_contexts(SCP, accepted),
        Heading(6, "SOP Specific Conformance for Verification SOP Class"),
        Paragraph(f"{SCP} answers C-ECHO with 0000. A C-ECHO restarts the association's idle timer."),
        Heading(6, "SOP Specific Conformance for Storage SOP Classes"),
        Paragraph("Level 2 (Full) storage: every element received, private ones included, is kept. The data "
                  "set is stored byte for byte as received, in the transfer syntax received, as a DICOM Part "
                  "10 file; the database holds the values used for query and retrieve. The success status is "
                  "sent only after the file is on disk and the database entry committed; from then on the "
                  "instance can be found, retrieved and committed. Instances are never deleted automatically."),
        BulletList([
            f"Duplicate SOP Instance UID (storage_scp.duplicate_policy = {scp.duplicate_policy}): {duplicate}.",
            f"Coercion warning (storage_scp.coercion_warning = {str(scp.coercion_warning).lower()}): "
            + ("B000 is returned instead of 0000 when a value was coerced in the database."
               if scp.coercion_warning else "0000 is returned even when a value was coerced in the database."),
            f"Free space kept in reserve: {_bytes(config.storage.reserve_bytes)} (storage.reserve_bytes); below "
            "it instances are refused with A700.",
            ("Refused data sets (A900, C000) are kept for diagnosis, at most "
             f"{scp.quarantine_max_files} files (storage_scp.quarantine)." if scp.quarantine else
             "Refused data sets are not kept (storage_scp.quarantine = false)."),
        ]),
        _status_table(f"{SCP} C-STORE Response Status Return Reasons", [
            ("Success", _code(status.SUCCESS), "Stored."),
            *([("Warning", _code(status.COERCION_OF_DATA_ELEMENTS), "Stored; a value was coerced in the database.")]
              if scp.coercion_warning else []),
            ("Refused", _code(status.OUT_OF_RESOURCES), "Not enough disk space, or the file or database entry "
                                                        "cannot be written. Nothing is kept."),
            ("Error", _code(status.DATASET_MISMATCH), "An element has no value: " + ", ".join(required)
             + ". Or the SOP Class or Instance UID differs from the request's."),
            ("Error", _code(status.CANNOT_UNDERSTAND), "The data set cannot be parsed."),
            ("Error", _code(status.UNEXPECTED_FAILURE), "An unexpected error; logged."),
        ]),
        Heading(6, "SOP Specific Conformance for Storage Commitment SOP Class"),
        Paragraph("An instance is committed when the database holds it under the SOP class the request names, "
                  "the class is one of those below, and its stored file still names it. The decision is made "
                  "when the request arrives; an instance received later is reported as failed. Storage Media "
                  "File-Set ID and UID are not supported. The result is described under Association "
                  "Initiation Policy."),
        Table("Referenced SOP Classes Supported for Storage Commitment", ["SOP Class Name", "SOP Class UID"],
              [[_uid_name(c), c] for c in committable]),
    ]
    if uncommittable:
        blocks.append(Paragraph("Instances of these classes are stored but not committed (failure reason "
                                f"{_code(status.SOP_CLASS_NOT_SUPPORTED)}): "
                                + "; ".join(f"{_uid_name(c)} ({c})" for c in uncommittable) + "."))
    blocks += [
        _status_table(f"{SCP} N-ACTION Response Status Return Reasons", [
            ("Success", _code(status.SUCCESS), "The request is kept and will be reported."),
            ("Failure", _code(status.PROCESSING_FAILURE), "The request cannot be read or kept; alert."),
            ("Failure", _code(status.MISSING_ATTRIBUTE), "Transaction UID, Referenced SOP Sequence or an item's "
                                                         "UID is missing."),
            ("Failure", _code(status.MISSING_ATTRIBUTE_VALUE), "One of them is empty."),
            ("Failure", _code(status.NO_SUCH_ACTION), "The Action Type ID is not 1."),
        ]),
        Table("Storage Commitment Failure Reasons", ["Failure Reason", "Meaning"], [
            [_code(status.NO_SUCH_OBJECT_INSTANCE), "The instance is not in the database."],
            [_code(status.CLASS_INSTANCE_CONFLICT), "It is stored under another SOP class."],
            [_code(status.SOP_CLASS_NOT_SUPPORTED), "Its class is not one commitment covers."],
            [_code(status.PROCESSING_FAILURE), "Its stored file cannot be read."],
        ]),
    ]
    return blocks


# --- network interfaces, configuration ------------------------------------------------------

def _bind_text(config: Config) -> str:
    bind = config.network.bind_address
    return "every IPv4 and IPv6 address" if bind == "*" else bind


def _network_interfaces(config: Config) -> list[Block]:
    return [
        Heading(3, "Network Interfaces"),
        Heading(4, "Physical Network Interface"),
        Paragraph(f"The service uses the host's network interface. Both listening AEs bind to {_bind_text(config)} "
                  "(network.bind_address)."),
        Heading(4, "Additional Protocols"),
        Paragraph("DHCP, DNS and time synchronisation are those of the host's operating system; this version "
                  "of the product does not configure them. Remote AE host names are resolved at each use."),
        Heading(4, "IPv4 and IPv6 Support"),
        Paragraph("IPv4 and IPv6 are both supported: remote AEs may be given as IPv4 or IPv6 addresses or as "
                  "host names. No optional IPv6 configuration or security features are used."),
    ]


def _configuration(config: Config) -> list[Block]:
    scp, qr, scu, net, t = (config.storage_scp, config.query_retrieve_scp, config.storage_scu, config.network,
                            config.timeouts)
    allowed = {section: calling_allow_list(config, section) for section in _SECTION.values()}
    remote_rows = [[ae.ae_title.strip(), ae.host, str(ae.port), _yes(ae.move_destination), _yes(ae.commitment),
                    *(_yes(not allowed[s] or ae.ae_title.strip() in allowed[s]) for s in _SECTION.values())]
                   for ae in config.remote_aes]
    parameters = [
        ("General", "Maximum PDU size sent (STORAGE-SCU, commitment reports)", _bytes(net.max_pdu_send),
         "network.max_pdu_send"),
        ("General", "Time-out waiting for TCP connect()", _seconds(t.connect), "timeouts.connect"),
        ("General", "Time-out waiting for A-ASSOCIATE-RQ on an accepted connection (ARTIM)", _seconds(t.artim),
         "timeouts.artim"),
        ("General", "Time-out waiting for A-ASSOCIATE-AC/RJ and A-RELEASE-RP",
         _seconds(t.association_response), "timeouts.association_response"),
        ("General", "Time-out waiting for the network to accept data", _seconds(t.send), "timeouts.send"),
        ("General", "Time-out waiting for data between TCP packets of a PDU", _seconds(t.pdu_gap),
         "timeouts.pdu_gap"),
        ("General", "TCP socket send and receive buffer size",
         _bytes(net.socket_buffer_size) if net.socket_buffer_size else "kernel autotuning",
         "network.socket_buffer_size"),
        (SCU, "Maximum PDU size received", _bytes(scu.max_pdu_size), "storage_scu.max_pdu_size"),
        (SCU, "Maximum number of simultaneous associations", str(scu.max_associations),
         "storage_scu.max_associations"),
        (SCU, "Time-out waiting for a C-STORE response", _seconds(scu.dimse_timeout), "storage_scu.dimse_timeout"),
        (SCU, "Further attempts to open an association", str(scu.open_retries), "storage_scu.open_retries"),
        (SCU, "Delay between those attempts", _seconds(scu.open_retry_delay), "storage_scu.open_retry_delay"),
        (SCU, "Automatic retries of a failed export", "0 (not configurable)", "(none)"),
        (SCP, "Maximum PDU size received", _bytes(scp.max_pdu_size), "storage_scp.max_pdu_size"),
        (SCP, "Maximum number of simultaneous associations", _limit_text(scp),
         "storage_scp.max_associations, storage_scp.association_limit"),
        (SCP, "Time-out waiting for the next message on an open association", _seconds(scp.idle_timeout),
         "storage_scp.idle_timeout"),
        (SCP, "Permanent archival of received instances", "always", "storage_scp.archive_unsolicited (no effect)"),
        (SCP, "Permanent archival of instances received for a retrieve of QUERY-RETRIEVE",
         "none exist: the product issues no retrieves", "storage_scp.archive_retrieved (no effect)"),
        (SCP, "Always open a new association to send N-EVENT-REPORT",
         str(scp.always_new_association_for_reports).lower(), "storage_scp.always_new_association_for_reports"),
        (SCP, "Further attempts to send an N-EVENT-REPORT", str(scp.report_attempts), "storage_scp.report_attempts"),
        (SCP, "Time between those attempts", _seconds(scp.report_retry_interval), "storage_scp.report_retry_interval"),
        (SCP, "Duplicate SOP Instance UID", scp.duplicate_policy, "storage_scp.duplicate_policy"),
        (QR, "Maximum PDU size received", _bytes(qr.max_pdu_size), "query_retrieve_scp.max_pdu_size"),
        (QR, "Maximum number of simultaneous associations", _limit_text(qr),
         "query_retrieve_scp.max_associations, query_retrieve_scp.association_limit"),
        (QR, "Time-out waiting for the next message on an open association", _seconds(qr.idle_timeout),
         "query_retrieve_scp.idle_timeout"),
    ]
    blocks = [
        Heading(3, "Configuration"),
        Paragraph("All settings are in one TOML file, checked as a whole before it is used: the service and "
                  "the service tool refuse the same invalid files. systemctl reload appliance applies a "
                  "changed file."),
        Heading(4, "AE Title/Presentation Address Mapping"),
        Heading(5, "Local AE Titles"),
        Table("Application Entity Configuration", ["Application Entity", "Role", "AE Title", "TCP Port",
                                                   "Configuration Keys"], [
            [SCU, "SCU", scu.ae_title.strip(), "none (ephemeral source port)", "storage_scu.ae_title"],
            [SCP, "SCP", scp.ae_title.strip(), str(scp.port), "storage_scp.ae_title, storage_scp.port"],
            [QR, "SCP", qr.ae_title.strip(), str(qr.port), "query_retrieve_scp.ae_title, query_retrieve_scp.port"],
        ]),
        Heading(5, "Remote AE Title/Presentation Address Mapping"),
        Paragraph("The remote AE table ([[remote_aes]]) gives the address of every C-MOVE destination and of "
                  "the modalities that receive Storage Commitment results over a new association. The last two "
                  "columns say whether the AE's title passes the Calling AE Title check of each SCP AE (see "
                  "Security); the IP address check applies as well."),
    ]
    if remote_rows:
        blocks.append(Table("Remote AE Table", ["AE Title", "Host", "TCP Port", "C-MOVE Destination",
                                                "Receives Commitment Results", f"Admitted by {SCP}",
                                                f"Admitted by {QR}"], remote_rows))
    else:
        blocks.append(Paragraph("The remote AE table is empty: every C-MOVE is answered A801, and Storage "
                                "Commitment results can only be sent on the requester's own association."))
    blocks += [
        Heading(4, "Parameters"),
        Table("Configuration Parameters", ["Applies to", "Parameter", "Value", "Configuration Key"],
              [list(row) for row in parameters]),
    ]
    return blocks


# --- media, character sets, security, annex -------------------------------------------------

def _media_and_character_sets() -> list[Block]:
    return [
        Heading(2, "Media Interchange"),
        Paragraph("Media Storage is not supported."),
        Heading(2, "Support of Extended Character Sets"),
        Paragraph("All AEs support the default repertoire and ISO_IR 100 (ISO 8859-1, Latin alphabet No. 1). "
                  "Instances in other character sets are stored as received and their database values "
                  "decoded (an unknown character set is read as ISO_IR 100). C-FIND responses use ISO_IR 100 "
                  "when it can hold every returned value, otherwise ISO_IR 192 (UTF-8), and then include "
                  "Specific Character Set. Person names match without regard to case in any of them."),
    ]


def _security(config: Config) -> list[Block]:
    rows = []
    for name, section in _SECTION.items():
        ae = getattr(config, section)
        allowed = calling_allow_list(config, section)
        rows.append([name, ae.ae_title.strip() if ae.check_called_ae else "not checked",
                     ", ".join(allowed) if allowed else "any", ", ".join(ae.accepted_addresses) or "any"])
    return [
        Heading(2, "Security"),
        Heading(3, "Security Profiles"),
        Paragraph("Bit-preserving storage: an instance received in an explicit VR transfer syntax is stored "
                  "unchanged and exported unchanged when the destination accepts that transfer syntax and the "
                  "database holds no changed value for it, so digital signatures it carries stay valid. No "
                  "other security profile is supported; DICOM over TLS is not offered."),
        Heading(3, "Association Level Security"),
        Paragraph("Both SCP AEs always check the Application Context Name. Each can check the Called AE Title "
                  "(storage_scp.check_called_ae, query_retrieve_scp.check_called_ae), admit only listed Calling "
                  "AE Titles (accepted_calling_aes, plus the remote AEs flagged store or query) and only listed "
                  "IP addresses or networks (accepted_addresses). The lists are separate per AE; an empty list "
                  "admits any peer."),
        Table("Association Level Security", ["Application Entity", "Required Called AE Title",
                                             "Admitted Calling AE Titles", "Admitted IP Addresses"], rows),
    ]


def _annex(config: Config) -> list[Block]:
    scp = config.storage_scp
    defaults = scp.default_values
    rows = [[name, value or "none"] for name, value in (
        ("Patient's Name", defaults.patient_name), ("Patient ID", defaults.patient_id),
        ("Patient's Birth Date", defaults.patient_birth_date), ("Study Date", defaults.study_date),
        ("Accession Number", defaults.accession_number), ("Modality", defaults.modality))]
    return [
        Heading(2, "Annexes"),
        Heading(3, "IOD Contents"),
        Heading(4, f"{SCP} AE Element Use"),
        Paragraph("Coercions change only the database, never the stored file; they show in C-FIND responses "
                  "and are applied to exported copies. Patient's Name is kept as last and first name. A Patient "
                  "ID already used for a patient of another name is given a new unique value. Patient's Sex is "
                  "kept as M, F, O or U. A missing or empty element gets the configured default value below "
                  "(storage_scp.default_values)."),
        Table("Default Values Applied in the Database", ["Attribute", "Default Value"], rows),
        Paragraph("Exam types recorded from Study Description, Series Description, Body Part Examined or the "
                  f"third Image Type value (storage_scp.exam_types): {_listed(scp.exam_types)}."),
        Heading(4, f"{SCU} AE Element Modification"),
        Paragraph("An exported instance carries the database's values where they differ from its file: "
                  "edited or coerced demographics, default values, a new SOP Instance UID, Patient's Sex U sent "
                  "empty. Where the file's character set cannot hold a new value, ISO_IR 192 is used. "
                  "SOP Class UID changes only for the US conversion described above."),
    ]
