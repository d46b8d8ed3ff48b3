"""The Security section: the security profiles and each listening AE's association checks."""

from __future__ import annotations

from appliance.config.model import Config, calling_allow_list
from service_tool.render import Block, Heading, Paragraph, Table
from service_tool.statement.common import SECTION


def blocks(config: Config) -> list[Block]:
    rows = []
    for name, section in SECTION.items():
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

