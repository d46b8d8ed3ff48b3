"""`service-tool access show|allow|revoke|called-check`: who may associate with each SCP AE (SE-01..SE-03).

Per listening AE: the called-AE check (AS-04), the calling-AE allow-list (AS-05) and the IP
allow-list (AS-08). An empty list means anyone. The calling list shown is the one in force:
the SCP's own titles plus the remote AEs allowed to store or query (see `remote --may`).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys

import tomlkit

from appliance.config.model import calling_allow_list
from service_tool import edit
from service_tool.ae_cmd import LISTENING, SECTIONS, ae_name
from service_tool.config_cmd import EXIT_INVALID
from service_tool.configuration import reading


def listening_ae(text: str) -> str:
    name = ae_name(text)
    if name not in LISTENING:
        raise argparse.ArgumentTypeError(f"{name} accepts no associations (AE-13); use {' or '.join(LISTENING)}")
    return name


def register(groups) -> None:
    group = groups.add_parser("access", help="who may associate with STORAGE-SCP and QUERY-RETRIEVE-SCP",
                              description="Show or edit the access lists of the two SCP AEs: called-AE "
                                          "check, calling-AE allow-list, IP allow-list (empty = anyone).")
    commands = group.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    show_cmd = commands.add_parser("show", help="the access lists in force",
                                   description="Print each SCP AE's checks and allow-lists.")
    show_cmd.add_argument("ae", type=listening_ae, nargs="?", metavar="AE", help=" or ".join(LISTENING))
    show_cmd.add_argument("--json", action="store_true", help="print JSON")
    show_cmd.set_defaults(run=show)
    for name, run, verb in (("allow", allow, "add to"), ("revoke", revoke, "remove from")):
        command = commands.add_parser(name, help=f"{verb} an SCP AE's allow-lists, then reload the service",
                                      description=f"{verb.capitalize()} the calling-AE and/or IP allow-list "
                                                  "of one SCP AE. An empty list means anyone.")
        command.add_argument("ae", type=listening_ae, metavar="AE", help=" or ".join(LISTENING))
        command.add_argument("--calling", action="append", default=[], metavar="AE_TITLE",
                             help="a calling AE title (repeatable)")
        command.add_argument("--address", action="append", default=[], metavar="IP_OR_NETWORK",
                             help="an IPv4/IPv6 address or network, e.g. 10.1.2.0/24 (repeatable)")
        command.set_defaults(run=run)
    check_cmd = commands.add_parser("called-check", help="switch the called-AE title check on or off",
                                    description="Refuse (on, the default) or accept associations whose "
                                                "called AE title is not this AE's (AS-04).")
    check_cmd.add_argument("ae", type=listening_ae, metavar="AE", help=" or ".join(LISTENING))
    check_cmd.add_argument("state", choices=("on", "off"))
    check_cmd.set_defaults(run=called_check)


def show(args) -> int:
    config = reading(args.config)
    if config is None:
        return EXIT_INVALID
    rows = []
    for name in [args.ae] if args.ae else LISTENING:
        section = getattr(config, SECTIONS[name])
        rows.append({"ae": name, "ae_title": section.ae_title.strip(), "check_called_ae": section.check_called_ae,
                     "accepted_calling_aes": list(calling_allow_list(config, SECTIONS[name])),
                     "accepted_addresses": list(section.accepted_addresses)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['ae']} ({row['ae_title']})")
        print(f"  called AE title checked: {'yes' if row['check_called_ae'] else 'no'}")
        print(f"  calling AE titles:       {', '.join(row['accepted_calling_aes']) or 'any'}")
        print(f"  peer addresses:          {', '.join(row['accepted_addresses']) or 'any'}")
    return 0


def _lists(document, name: str):
    section = edit.table(document, SECTIONS[name])
    for key in ("accepted_calling_aes", "accepted_addresses"):
        if key not in section:
            section[key] = tomlkit.array()
    return section["accepted_calling_aes"], section["accepted_addresses"]


def _same_network(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_network(a, strict=False) == ipaddress.ip_network(b, strict=False)
    except ValueError:
        return a == b


def _normalised(address: str) -> str:
    """A network as its own address (10.0.4.5/24 -> 10.0.4.0/24), a single host without its
    prefix; what ipaddress cannot read is kept for the loader to refuse, naming the key."""
    try:
        network = ipaddress.ip_network(address, strict=False)
    except ValueError:
        return address
    return str(network.network_address) if network.prefixlen == network.max_prefixlen else str(network)


def _given(args) -> bool:
    if args.calling or args.address:
        return True
    print("nothing to change: give --calling and/or --address", file=sys.stderr)
    return False


def allow(args) -> int:
    if not _given(args):
        return edit.EXIT_USAGE

    def mutate(document) -> str:
        callings, addresses = _lists(document, args.ae)
        for title in args.calling:
            if title.strip() not in {str(t).strip() for t in callings}:
                callings.append(title)
        given = [_normalised(address) for address in args.address]
        for address in given:
            if not any(_same_network(address, str(a)) for a in addresses):
                addresses.append(address)
        changed = [f"{a} as {n}" for a, n in zip(args.address, given) if a != n]
        note = f" ({'; '.join(changed)}: the network the address is in)" if changed else ""
        return f"{args.ae}: allowed {', '.join(args.calling + given)}{note}"

    return edit.change(args.config, mutate)


def revoke(args) -> int:
    if not _given(args):
        return edit.EXIT_USAGE

    def mutate(document) -> str:
        callings, addresses = _lists(document, args.ae)
        for title in args.calling:
            found = [t for t in callings if str(t).strip() == title.strip()]
            if not found:
                raise edit.Refused(f"{title!r} is not in {SECTIONS[args.ae]}.accepted_calling_aes "
                                   f"(a remote AE's store/query permission is changed with 'remote set --may')")
            callings.remove(found[0])
        for address in args.address:
            found = [a for a in addresses if _same_network(address, str(a))]
            if not found:
                raise edit.Refused(f"{address!r} is not in {SECTIONS[args.ae]}.accepted_addresses")
            addresses.remove(found[0])
        return f"{args.ae}: revoked {', '.join(args.calling + args.address)}"

    return edit.change(args.config, mutate)


def called_check(args) -> int:
    def mutate(document) -> str:
        edit.table(document, SECTIONS[args.ae])["check_called_ae"] = args.state == "on"
        return f"{args.ae}: called AE title check {args.state}"

    return edit.change(args.config, mutate)
