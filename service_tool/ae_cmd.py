"""`service-tool ae show|set`: the box's own AE titles and ports (TL-01, AE-02..AE-07).

The title rules (AE-07) and the shared-title rule (AE-06: STORAGE-SCP's title is its own;
QUERY-RETRIEVE-SCP and STORAGE-SCU may share one, AE-05) are the loader's, so the tool and the
service refuse the same files with the same message.
"""

from __future__ import annotations

import argparse
import json
import sys

from service_tool import edit
from service_tool.config_cmd import EXIT_INVALID
from service_tool.configuration import reading

# The AE names of the conformance statement -> configuration sections.
SECTIONS = {"STORAGE-SCP": "storage_scp", "QUERY-RETRIEVE-SCP": "query_retrieve_scp", "STORAGE-SCU": "storage_scu"}
LISTENING = ("STORAGE-SCP", "QUERY-RETRIEVE-SCP")
_SHORT = {"QR": "QUERY-RETRIEVE-SCP", "QR-SCP": "QUERY-RETRIEVE-SCP"}


def ae_name(text: str) -> str:
    """argparse type: an AE name, in any case, with - or _ (`storage_scp`, `query-retrieve-scp`, `qr`)."""
    name = text.upper().replace("_", "-")
    name = _SHORT.get(name, name)
    if name not in SECTIONS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(SECTIONS)}")
    return name


def register(groups) -> None:
    group = groups.add_parser("ae", help="show or set the box's own AE titles and ports",
                              description="Show or set the AE titles and ports of the box's three AEs.")
    commands = group.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    show_cmd = commands.add_parser("show", help="the three AEs, their titles and ports",
                                   description="Print the three AEs with their titles and listening ports.")
    show_cmd.add_argument("--json", action="store_true", help="print JSON")
    show_cmd.set_defaults(run=show)
    set_cmd = commands.add_parser(
        "set", help="change an AE's title or port, then reload the service",
        description="Change an AE's title and/or port. The file is validated first (AE-05..AE-07) and "
                    "left unchanged when invalid; the running service reloads and listens on the new "
                    "port at once. A port below 1024 (104) takes CAP_NET_BIND_SERVICE, which the service "
                    "lacks as installed: run as root, this adds it (a unit drop-in) and restarts the service "
                    "once; else it is refused, saying how. Exit 0 when saved (and applied, if the service "
                    "runs), 1 when refused.")
    set_cmd.add_argument("ae", type=ae_name, metavar="AE", help=", ".join(SECTIONS))
    set_cmd.add_argument("--title", help="the new AE title (1-16 characters, no backslash)")
    set_cmd.add_argument("--port", type=int, help="the new listening port (not for STORAGE-SCU, which never listens); "
                                                   "0 turns the plain listener off (TLS only)")
    set_cmd.add_argument("--tls-port", type=int, metavar="PORT",
                         help="the port of its DICOM TLS listener, 0 = none (SE-07; needs service-tool tls first)")
    set_cmd.add_argument("--verify-clients", choices=("on", "off"),
                         help="whether TLS clients must present a certificate that chains to the CA bundle (SE-09)")
    set_cmd.set_defaults(run=set_ae)


def show(args) -> int:
    config = reading(args.config)
    if config is None:
        return EXIT_INVALID
    rows = [{"ae": name, "ae_title": getattr(config, section).ae_title.strip(),
             "port": getattr(config, section).port if name in LISTENING else None,
             "tls_port": getattr(config, section).tls_port if name in LISTENING else None}
            for name, section in SECTIONS.items()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        ports = [f"port {row['port']}"] if row["port"] else []
        ports += [f"TLS port {row['tls_port']}"] if row["tls_port"] else []  # SE-07
        where = (", ".join(ports) if ports else "no listener (port and tls_port are 0)") if row["ae"] in LISTENING \
            else "calls out only (no listening port)"
        print(f"{row['ae']:<20} {row['ae_title']:<17} {where}")
    return 0


def set_ae(args) -> int:
    listening = {"port": args.port, "tls_port": args.tls_port,
                 "verify_clients": None if args.verify_clients is None else args.verify_clients == "on"}
    if args.title is None and all(v is None for v in listening.values()):
        print("nothing to change: give --title, --port, --tls-port or --verify-clients", file=sys.stderr)
        return edit.EXIT_USAGE
    if any(v is not None for v in listening.values()) and args.ae not in LISTENING:
        print(f"refused: {args.ae} never listens (AE-13), so it has no port", file=sys.stderr)
        return edit.EXIT_USAGE

    def mutate(document) -> str:
        section = edit.table(document, SECTIONS[args.ae])
        changes = []
        if args.title is not None:
            section["ae_title"] = args.title
            changes.append(f"title {args.title}")
        for key, value in listening.items():
            if value is not None:
                section[key] = value
                changes.append(f"{key.replace('_', ' ')} {str(value).lower() if isinstance(value, bool) else value}")
        return f"{args.ae}: {', '.join(changes)}"

    return edit.change(args.config, mutate)
