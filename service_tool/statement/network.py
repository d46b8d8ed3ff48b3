"""The last two Networking sections: Network Interfaces, and Configuration (local and remote AE
titles and addresses, and every configurable parameter with its key)."""

from __future__ import annotations

from appliance.config.model import Config, calling_allow_list
from service_tool.render import Block, Heading, Paragraph, Table
from service_tool.statement.common import QR, SCP, SCU, SECTION, in_bytes, limit_text, port_text, seconds, yes


def _bind_text(config: Config) -> str:
    bind = config.network.bind_address
    return "every IPv4 and IPv6 address" if bind == "*" else bind


def interfaces(config: Config) -> list[Block]:
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


def configuration(config: Config) -> list[Block]:
    scp, qr, scu, net, t = (config.storage_scp, config.query_retrieve_scp, config.storage_scu, config.network,
                            config.timeouts)
    allowed = {section: calling_allow_list(config, section) for section in SECTION.values()}
    remote_rows = [[ae.ae_title.strip(), ae.host, str(ae.port), yes(ae.move_destination), yes(ae.commitment),
                    *(yes(not allowed[s] or ae.ae_title.strip() in allowed[s]) for s in SECTION.values())]
                   for ae in config.remote_aes]
    parameters = [
        ("General", "Maximum PDU size sent (STORAGE-SCU, commitment reports)", in_bytes(net.max_pdu_send),
         "network.max_pdu_send"),
        ("General", "Time-out waiting for TCP connect()", seconds(t.connect), "timeouts.connect"),
        ("General", "Time-out waiting for A-ASSOCIATE-RQ on an accepted connection (ARTIM)", seconds(t.artim),
         "timeouts.artim"),
        ("General", "Time-out waiting for A-ASSOCIATE-AC/RJ and A-RELEASE-RP",
         seconds(t.association_response), "timeouts.association_response"),
        ("General", "Time-out waiting for the network to accept data", seconds(t.send), "timeouts.send"),
        ("General", "Time-out waiting for data between TCP packets of a PDU", seconds(t.pdu_gap),
         "timeouts.pdu_gap"),
        ("General", "TCP socket send and receive buffer size",
         in_bytes(net.socket_buffer_size) if net.socket_buffer_size else "kernel autotuning",
         "network.socket_buffer_size"),
        (SCU, "Maximum PDU size received", in_bytes(scu.max_pdu_size), "storage_scu.max_pdu_size"),
        (SCU, "Maximum number of simultaneous associations", str(scu.max_associations),
         "storage_scu.max_associations"),
        (SCU, "Time-out waiting for a C-STORE response", seconds(scu.dimse_timeout), "storage_scu.dimse_timeout"),
        (SCU, "Further attempts to open an association", str(scu.open_retries), "storage_scu.open_retries"),
        (SCU, "Delay between those attempts", seconds(scu.open_retry_delay), "storage_scu.open_retry_delay"),
        (SCU, "Automatic retries of a failed export", "0 (not configurable)", "(none)"),
        (SCP, "Maximum PDU size received", in_bytes(scp.max_pdu_size), "storage_scp.max_pdu_size"),
        (SCP, "Maximum number of simultaneous associations", limit_text(scp),
         "storage_scp.max_associations, storage_scp.association_limit"),
        (SCP, "Time-out waiting for the next message on an open association", seconds(scp.idle_timeout),
         "storage_scp.idle_timeout"),
        (SCP, "Permanent archival of received instances", "always", "storage_scp.archive_unsolicited (no effect)"),
        (SCP, "Permanent archival of instances received for a retrieve of QUERY-RETRIEVE",
         "none exist: the product issues no retrieves", "storage_scp.archive_retrieved (no effect)"),
        (SCP, "Always open a new association to send N-EVENT-REPORT",
         str(scp.always_new_association_for_reports).lower(), "storage_scp.always_new_association_for_reports"),
        (SCP, "Further attempts to send an N-EVENT-REPORT", str(scp.report_attempts), "storage_scp.report_attempts"),
        (SCP, "Time between those attempts", seconds(scp.report_retry_interval), "storage_scp.report_retry_interval"),
        (SCP, "Duplicate SOP Instance UID", scp.duplicate_policy, "storage_scp.duplicate_policy"),
        (SCP, "Series or study already stored under another parent", scp.hierarchy_conflict,
         "storage_scp.hierarchy_conflict"),
        (QR, "Maximum PDU size received", in_bytes(qr.max_pdu_size), "query_retrieve_scp.max_pdu_size"),
        (QR, "Maximum number of simultaneous associations", limit_text(qr),
         "query_retrieve_scp.max_associations, query_retrieve_scp.association_limit"),
        (QR, "Time-out waiting for the next message on an open association", seconds(qr.idle_timeout),
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
                                                   "DICOM TLS Port", "Configuration Keys"], [
            [SCU, "SCU", scu.ae_title.strip(), "none (ephemeral source port)", "none (see Security)",
             "storage_scu.ae_title"],
            [SCP, "SCP", scp.ae_title.strip(), port_text(scp.port), port_text(scp.tls_port),
             "storage_scp.ae_title, storage_scp.port, storage_scp.tls_port"],
            [QR, "SCP", qr.ae_title.strip(), port_text(qr.port), port_text(qr.tls_port),
             "query_retrieve_scp.ae_title, query_retrieve_scp.port, query_retrieve_scp.tls_port"],
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

