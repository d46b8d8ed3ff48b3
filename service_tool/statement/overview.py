"""The statement's front: the cover, the Conformance Statement Overview (its network services
table) and the Implementation Model of the three AEs."""

from __future__ import annotations

from appliance import __version__
from appliance.config.model import Config
from appliance.codes import uids
from appliance.dicom import contexts
from service_tool.render import Block, BulletList, Heading, Paragraph, Table
from service_tool.statement.common import PRODUCT, QR, SCP, SCU, uid_name, yes


def cover(source: str) -> list[Block]:
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


def conformance_overview(config: Config) -> list[Block]:
    scp, scu = config.storage_scp, config.storage_scu
    storage = list(dict.fromkeys(scp.sop_classes + scu.sop_classes))
    rows = [["Verification", uids.VERIFICATION, "Yes (diagnostic, service tool)", "Yes"]]
    rows += [["Transfer", uid, yes(uid in scu.sop_classes), yes(uid in scp.sop_classes)] for uid in storage]
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
              [[service, uid_name(uid), uid, scu_, scp_] for service, uid, scu_, scp_ in rows]),
        Paragraph("Relational queries and retrieves are not supported, neither as SCU nor as SCP. Media "
                  "interchange is not supported."),
    ]


def implementation_model(config: Config) -> list[Block]:
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

