"""The association parts the AE specifications share: the four association-policy subsections,
the listening AEs' rejection reasons and their accepted presentation contexts."""

from __future__ import annotations

from appliance import __version__
from appliance.config.model import Config, calling_allow_list
from appliance.codes import uids
from appliance.dicom import admission
from service_tool.render import Block, Heading, Paragraph, Table
from service_tool.statement.common import CONTEXT_HEADER, SECTION, context_rows, uid_name

# PS3.8 9.3.4: the words for the A-ASSOCIATE-RJ fields the listening AEs send.
_RESULT = {1: "rejected-permanent", 2: "rejected-transient"}
_SOURCE = {1: "DICOM UL service-user", 2: "DICOM UL service-provider (ACSE)",
           3: "DICOM UL service-provider (Presentation)"}
_REASON = {(1, 1): "no-reason-given", (1, 2): "application-context-name-not-supported",
           (1, 3): "calling-AE-title-not-recognized", (1, 7): "called-AE-title-not-recognized",
           (2, 1): "no-reason-given", (3, 1): "temporary-congestion", (3, 2): "local-limit-exceeded"}


def association_policies(ae: str, general: list[Block], numbers: list[list[str]],
                         number_notes: list[Block], implementation_uid: str, notes: list[Block]) -> list[Block]:
    """The four parts every AE specification has: general, number of associations,
    asynchronous nature, implementation identifying information."""
    return [
        Heading(5, "General"), *general,
        Table(f"DICOM Application Context for {ae} AE", ["Application Context Name", "UID"],
              [[uid_name(uids.APPLICATION_CONTEXT), uids.APPLICATION_CONTEXT]]),
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


def rejections(ae_name: str, config: Config) -> Table:
    """AS-09's order; rows for checks the configuration switches off are left out."""
    section = SECTION[ae_name]
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


def accepted_contexts(ae_name: str, accepted) -> Table:
    pairs = [(c.abstract_syntax, ts) for c in accepted for ts in c.transfer_syntax]
    return Table(f"Accepted Presentation Contexts for {ae_name} AE", CONTEXT_HEADER, context_rows(pairs, "SCP"))
