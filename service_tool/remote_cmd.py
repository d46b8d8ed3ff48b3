"""`service-tool remote list|add|set|remove|import|export`: the remote AE table (TL-02, AE-08).

Per remote AE, what it may do (`--may`): be a C-MOVE destination, receive Storage Commitment
reports, store to STORAGE-SCP, query QUERY-RETRIEVE-SCP. The last two put its title on that
SCP's calling-AE allow-list (model.calling_allow_list). `import`/`export` read and write the
HostTable/AETable of a DCMTK dcmqrscp.cfg, which installers often already have.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import sys
import threading
from pathlib import Path

import tomlkit

from appliance.config.model import RemoteAE
from appliance.durable import write_text
from service_tool import dcmqrscp_cfg, edit
from service_tool.config_cmd import EXIT_INVALID
from service_tool.configuration import reading

# --may names -> RemoteAE flags, in the order they are shown.
MAY = {"move": "move_destination", "commitment": "commitment", "store": "store", "query": "query"}


def may_list(text: str) -> dict[str, bool]:
    """argparse type: "store,query" (or "none") -> every flag set true or false."""
    names = [] if text.strip().lower() == "none" else [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in MAY]
    if unknown:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown)}: use a comma-separated list of "
                                         f"{', '.join(MAY)}, or none")
    return {flag: name in names for name, flag in MAY.items()}


def may_text(remote: RemoteAE) -> str:
    return ",".join(name for name, flag in MAY.items() if getattr(remote, flag)) or "none"


SUBJECT_HELP = ("the subject its TLS certificate must have, as `service-tool tls show` prints it, e.g. "
                "\"CN=ct1.radiology.example,O=Hospital\" (SE-09): its title is then accepted only over TLS with "
                "that certificate")


def register(groups) -> None:
    group = groups.add_parser("remote", help="the remote AE table: C-MOVE destinations, modalities, viewers",
                              description="List and edit the remote AE table (title, host, port, and what "
                                          "each remote AE may do).")
    commands = group.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    list_cmd = commands.add_parser("list", help="the remote AE table", description="Print the remote AE table.")
    list_cmd.add_argument("--json", action="store_true", help="print JSON")
    list_cmd.set_defaults(run=list_remotes)

    may_help = (f"what it may do, comma-separated: {', '.join(MAY)} (move destination, commitment reports, "
                f"store to STORAGE-SCP, query QUERY-RETRIEVE-SCP), or none")
    add_cmd = commands.add_parser("add", help="add a remote AE, then reload the service",
                                  description="Add a remote AE. Exit 0 when saved, 1 when refused.")
    add_cmd.add_argument("title", help="its AE title")
    add_cmd.add_argument("--host", required=True, help="IPv4/IPv6 address or DNS name")
    add_cmd.add_argument("--port", required=True, type=int, help="its TCP port")
    add_cmd.add_argument("--may", type=may_list, default=may_list("move,commitment"),
                         help=may_help + " (default: move,commitment)")
    add_cmd.add_argument("--tls", choices=("on", "off"), default="off",
                         help="associations to it use TLS and verify its certificate (SE-10); --port is then its "
                              "TLS port (default: off)")
    add_cmd.add_argument("--tls-subject", default="", metavar="SUBJECT", help=SUBJECT_HELP)
    add_cmd.set_defaults(run=add)

    set_cmd = commands.add_parser("set", help="change a remote AE, then reload the service",
                                  description="Change a remote AE's title, host, port or permissions.")
    set_cmd.add_argument("title", help="its current AE title")
    set_cmd.add_argument("--title", dest="new_title", help="a new AE title")
    set_cmd.add_argument("--host", help="IPv4/IPv6 address or DNS name")
    set_cmd.add_argument("--port", type=int, help="its TCP port")
    set_cmd.add_argument("--may", type=may_list, help=may_help + " (replaces the current set)")
    set_cmd.add_argument("--tls", choices=("on", "off"), help="associations to it use TLS (SE-10)")
    set_cmd.add_argument("--tls-subject", metavar="SUBJECT", help=SUBJECT_HELP + "; \"\" removes the pin")
    set_cmd.set_defaults(run=set_remote)

    remove_cmd = commands.add_parser("remove", help="remove a remote AE, then reload the service",
                                     description="Remove a remote AE from the table.")
    remove_cmd.add_argument("title", help="its AE title")
    remove_cmd.set_defaults(run=remove)

    import_cmd = commands.add_parser(
        "import", help="add the remote AEs of a DCMTK dcmqrscp.cfg (HostTable, AETable peers)",
        description="Read a DCMTK dcmqrscp.cfg: every HostTable entry becomes a remote AE (a title already "
                    "in the table is updated); peers of an AETable entry with access W may store, with R "
                    "query, with RW both. What the appliance cannot represent is listed as a warning "
                    "with its line number.")
    import_cmd.add_argument("file", type=Path, help="the dcmqrscp.cfg to read")
    import_cmd.set_defaults(run=import_cfg)

    export_cmd = commands.add_parser(
        "export", help="write the remote AE table as a DCMTK dcmqrscp.cfg",
        description="Print (or write) a dcmqrscp.cfg with the box's AEs in its AETable and the remote AEs "
                    "in its HostTable.")
    export_cmd.add_argument("--output", type=Path, help="write to this file (atomically) instead of stdout")
    export_cmd.add_argument("--storage-area", default="/var/lib/dcmqrscp",
                            help="the storage area root written into the AETable (default: %(default)s)")
    export_cmd.set_defaults(run=export_cfg)


def list_remotes(args) -> int:
    config = reading(args.config)
    if config is None:
        return EXIT_INVALID
    if args.json:
        print(json.dumps([{"ae_title": r.ae_title, "host": r.host, "port": r.port,
                           **{flag: getattr(r, flag) for flag in MAY.values()}, "tls": r.tls,
                           "tls_subject": r.tls_subject}
                          for r in config.remote_aes], indent=2))
        return 0
    if not config.remote_aes:
        print("the remote AE table is empty")
        return 0
    print(f"{'AE title':<17} {'host':<30} {'port':>5}  may")
    for r in config.remote_aes:
        pin = f", certificate {r.tls_subject}" if r.tls_subject else ""
        print(f"{r.ae_title:<17} {r.host:<30} {r.port:>5}  {may_text(r)}{f'  (TLS{pin})' if r.tls or pin else ''}")
    return 0


def _entries(document):
    if "remote_aes" not in document:
        edit.separate(document)
        document["remote_aes"] = tomlkit.aot()
    return document["remote_aes"]


def _find(document, title: str):
    for entry in _entries(document):
        if str(entry.get("ae_title", "")).strip() == title.strip():
            return entry
    raise edit.Refused(f"no remote AE titled {title.strip()!r}")


def _new_entry(title: str, host: str, port: int, flags: dict[str, bool]):
    entry = tomlkit.table()
    entry.update({"ae_title": title, "host": host, "port": port, **flags})
    return entry


_RESOLVE_WAIT = 5.0  # s: a DNS server that does not answer must not hold the installer


def warn_if_unresolvable(host: str) -> None:
    """Say so when a remote AE's host name does not resolve now: the entry is kept (DNS may
    come later), but exports and reports to it fail until it does."""
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    outcome: list[str] = []

    def resolve() -> None:
        try:
            socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            outcome.append("")
        except (OSError, UnicodeError) as exc:
            outcome.append(str(exc))

    thread = threading.Thread(target=resolve, daemon=True)
    thread.start()
    thread.join(_RESOLVE_WAIT)
    why = outcome[0] if outcome else f"no answer within {_RESOLVE_WAIT:.0f} s"
    if why:
        print(f"warning: host {host!r} does not resolve now ({why}); C-MOVE exports and commitment reports "
              f"to it fail until it does (check [network] dns, or give its IP address)", file=sys.stderr)


def add(args) -> int:
    warn_if_unresolvable(args.host)

    def mutate(document) -> str:
        if any(str(e.get("ae_title", "")).strip() == args.title.strip() for e in _entries(document)):
            raise edit.Refused(f"a remote AE titled {args.title.strip()!r} exists; use 'remote set'")
        entry = _new_entry(args.title, args.host, args.port, args.may)
        if args.tls == "on":
            entry["tls"] = True
        if args.tls_subject:
            entry["tls_subject"] = args.tls_subject
        _entries(document).append(entry)
        return f"remote AE {args.title} added ({args.host}:{args.port}{', TLS' if args.tls == 'on' else ''})"

    return edit.change(args.config, mutate)


def set_remote(args) -> int:
    if all(v is None for v in (args.new_title, args.host, args.port, args.may, args.tls, args.tls_subject)):
        print("nothing to change: give --title, --host, --port, --may, --tls or --tls-subject", file=sys.stderr)
        return edit.EXIT_USAGE
    if args.host is not None:
        warn_if_unresolvable(args.host)

    def mutate(document) -> str:
        entry = _find(document, args.title)
        for key, value in (("ae_title", args.new_title), ("host", args.host), ("port", args.port)):
            if value is not None:
                entry[key] = value
        if args.may is not None:
            entry.update(args.may)
        if args.tls is not None:
            entry["tls"] = args.tls == "on"
        if args.tls_subject is not None:
            entry["tls_subject"] = args.tls_subject
        return f"remote AE {args.title} changed"

    return edit.change(args.config, mutate)


def remove(args) -> int:
    def mutate(document) -> str:
        entries = _entries(document)
        entries.remove(_find(document, args.title))
        if not entries:
            del document["remote_aes"]
        return f"remote AE {args.title} removed"

    return edit.change(args.config, mutate)


def import_cfg(args) -> int:
    try:
        imported = dcmqrscp_cfg.parse(args.file.read_text(encoding="latin-1"))
    except OSError as exc:
        print(f"cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_INVALID
    except ValueError as exc:
        print(f"refused: {args.file}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    for warning in imported.warnings:
        print(f"warning: {args.file}: {warning}", file=sys.stderr)

    def mutate(document) -> str:
        added = updated = 0
        for remote in imported.remotes:
            flags = {"store": remote.store, "query": remote.query}
            try:
                entry = _find(document, remote.ae_title)
            except edit.Refused:
                _entries(document).append(_new_entry(remote.ae_title, remote.host, remote.port,
                                                     {"move_destination": True, "commitment": True, **flags}))
                added += 1
                continue
            entry.update({"host": remote.host, "port": remote.port, **flags})
            updated += 1
        return f"imported {args.file}: {added} remote AEs added, {updated} updated"

    return edit.change(args.config, mutate)


def export_cfg(args) -> int:
    config = reading(args.config)
    if config is None:
        return EXIT_INVALID
    try:
        text = dcmqrscp_cfg.render(config, args.storage_area)
    except ValueError as exc:
        print(f"refused: --storage-area: {exc}", file=sys.stderr)
        return edit.EXIT_USAGE
    if args.output is None:
        print(text, end="")
    else:
        write_text(args.output, text)
        print(f"written to {args.output}")
    return 0
