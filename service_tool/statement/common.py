"""What every part of the statement shares: the AE names, values worded as the statement words
them (UID names, durations, sizes, retries), and the SOP class, presentation context and status
tables."""

from __future__ import annotations

from pydicom.uid import UID

from appliance.config.model import ListeningAE
from service_tool.render import Block, Paragraph, Table

PRODUCT = "DICOM archive appliance"
SCU, QR, SCP = "STORAGE-SCU", "QUERY-RETRIEVE-SCP", "STORAGE-SCP"
SECTION = {SCP: "storage_scp", QR: "query_retrieve_scp"}  # the listening AEs' configuration sections
CONTEXT_HEADER = ["Abstract Syntax", "SOP Class UID", "Transfer Syntax", "Transfer Syntax UID", "Role",
                  "Extended Negotiation"]


def uid_name(uid: str) -> str:
    """The UID's name in the DICOM dictionary (pydicom's), marked when retired."""
    known = UID(uid)
    if known.name == uid:
        return "(not in the DICOM dictionary)"
    return known.name + (" (Retired)" if known.is_retired else "")


def yes(flag: bool) -> str:
    return "Yes" if flag else "No"


def seconds(value: float) -> str:
    text = f"{value:g} s"
    return f"{text} ({value / 60:g} min)" if value >= 60 and value % 60 == 0 else text


def in_bytes(value: int) -> str:
    return f"{value} bytes"


def retries(count: int, delay: float) -> str:
    """How a failed attempt is repeated, as the end of a sentence."""
    if count == 0:
        return "is not tried again"
    return f"is tried {count} more time{'' if count == 1 else 's'}, {seconds(delay)} apart"


def listed(values) -> str:
    return ", ".join(values) if values else "none"


def code(status: int) -> str:
    return f"{status:04X}"


def ports_text(ae: ListeningAE) -> str:
    """Where a listening AE waits for associations, as the end of "... listens ..." (SE-07)."""
    if ae.port and ae.tls_port:
        return f"on port {ae.port}, and for DICOM over TLS on port {ae.tls_port}"
    if ae.tls_port:
        return f"for DICOM over TLS only, on port {ae.tls_port} (no unencrypted port)"
    if ae.port:
        return f"on port {ae.port}"
    return "on no port: both its plain and its TLS listener are turned off"


def port_text(port: int) -> str:
    """A listener's port in a table: the number, or "off" for 0 (SE-07)."""
    return str(port) if port else "off"


def limit_text(ae: ListeningAE) -> str:
    """A listening AE's association limit."""
    per = " per calling AE title" if ae.association_limit == "per_calling_ae" else " in total"
    return f"{ae.max_associations}{per} (configurable)"


def sop_class_table(ae: str, rows: list[tuple[str, str, str]]) -> Table:
    """rows: (SOP class UID, SCU, SCP)."""
    return Table(f"SOP Classes for {ae} AE", ["SOP Class Name", "SOP Class UID", "SCU", "SCP"],
                 [[uid_name(uid), uid, scu, scp] for uid, scu, scp in rows])


def context_rows(pairs, role: str) -> list[list[str]]:
    """One row per (abstract syntax, transfer syntax), in the order given."""
    return [[uid_name(sop_class), sop_class, uid_name(ts), ts, role, "None"] for sop_class, ts in pairs]


def status_table(caption: str, rows: list[tuple[str, str, str]]) -> Table:
    return Table(caption, ["Service Status", "Status Code", "Behaviour"], [list(row) for row in rows])


def returned_statuses(caption: str, rows: list[tuple[str, str, str]]) -> list[Block]:
    """The status table of the responses an AE sends, and how a refusal says why (UL-05)."""
    return [status_table(caption, rows),
            Paragraph("Every failure and warning response carries an Error Comment (0000,0902) with the reason the "
                      "service log gives, at most 64 characters: the start of a longer reason.")]
