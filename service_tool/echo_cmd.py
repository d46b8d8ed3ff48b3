"""`service-tool echo`: the field engineer's diagnostic C-ECHO (TL-05, TL-06, VE-04).

Each step is reported on its own, so that a failure says where it happened: name resolution,
TCP connect, association (accepted, or the rejection in words), C-ECHO status, each with its
time. The calling title is the one the appliance itself would use towards that peer:
STORAGE-SCU's for a C-MOVE destination (default), STORAGE-SCP's for a commitment peer
(`--as scp`), so a peer that filters calling titles is tested as the service will meet it;
`--calling` names another. A remote AE with `tls = true` is echoed over TLS, as the service
would reach it (SE-10), with the handshake as a step of its own. `--local` echoes the box's own
two SCP AEs, on each port they listen on (plain and TLS), calling as SERVICE_TOOL, which their
allow-lists admit for C-ECHO from the box itself (admission.local_echo). The running service is
not involved.

`echo HOST PORT --called TITLE` echoes any peer, as DCMTK's echoscu does, with `--tls` over
TLS with the box's certificate and CA bundle. The positional arguments are AE titles of the
table unless `--called` is given, or there are two and the second is a port number (and not
both are titles of the table): then they are a host and a port.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from dataclasses import asdict, dataclass
from typing import NamedTuple

from appliance import __version__
from appliance.config.model import Config, ae_title
from appliance.codes import status, uids
from appliance.errors import ConfigError
from service_tool.configuration import reading

EXIT_FAILED = 1  # at least one echo failed
EXIT_USAGE = 2  # nothing to echo: an unknown title, an invalid configuration file

USAGE = ("service-tool echo [-h] [--as {scu,scp}] [--calling TITLE] [--json] (AE_TITLE... | --all | --local)\n"
         "       service-tool echo [-h] [--calling TITLE] [--tls] [--json] HOST PORT --called TITLE")


class Target(NamedTuple):
    """One echo to make; `listener`: the box's own SCP AE it reaches (`--local`), else ""."""

    title: str  # called
    host: str
    port: int
    calling: str
    tls: bool = False
    subject: str = ""  # the certificate subject pinned for it (SE-09), "" none
    listener: str = ""


@dataclass
class Echo:
    """One peer's result; a step that was not reached stays None."""

    title: str
    host: str
    port: int
    calling: str
    tls: bool = False
    address: str | None = None
    resolve_ms: float | None = None
    connect_ms: float | None = None
    tls_ms: float | None = None
    tls_session: str = ""  # protocol, cipher and the peer's certificate subject
    association_ms: float | None = None
    echo_status: int | None = None
    echo_ms: float | None = None
    failure: str = ""  # the step that failed and why

    @property
    def ok(self) -> bool:
        return self.echo_status == status.SUCCESS


def register(groups) -> None:
    command = groups.add_parser(
        "echo", help="C-ECHO a remote AE (or --all, --local, or HOST PORT --called TITLE) and report each step",
        usage=USAGE,
        description="Send a diagnostic C-ECHO and report name resolution, TCP connect, the TLS handshake, the "
                    "association result and the C-ECHO status, each with its time. The targets are remote AEs "
                    "of the table, the box's own SCP AEs (--local), or any peer: HOST PORT --called TITLE, as "
                    "DCMTK's echoscu. Exit 0 when every echo succeeded, 1 when one failed, 2 when there is "
                    "nothing to echo.")
    command.add_argument("titles", nargs="*", metavar="AE_TITLE", help="remote AE titles from [[remote_aes]], "
                                                                       "or HOST PORT with --called")
    command.add_argument("--all", action="store_true", help="every remote AE of the table")
    command.add_argument("--local", action="store_true", help="the box's own STORAGE-SCP and QUERY-RETRIEVE-SCP")
    command.add_argument("--as", dest="role", choices=("scu", "scp"), default="scu",
                         help="calling title: STORAGE-SCU's (towards C-MOVE destinations, default) or "
                              "STORAGE-SCP's (towards storage commitment peers)")
    command.add_argument("--called", type=_title, metavar="TITLE",
                         help="the AE title of the peer at HOST PORT (echoscu's -aec)")
    command.add_argument("--calling", type=_title, metavar="TITLE",
                         help="call with this AE title instead (echoscu's -aet); also with --local, to see "
                              "whether the allow-lists admit it")
    command.add_argument("--tls", action="store_true",
                         help="with HOST PORT: over TLS, presenting tls.certificate and verifying the peer's "
                              "against tls.ca_bundle (a remote AE of the table has its own tls setting)")
    command.add_argument("--json", action="store_true", help="print JSON")
    command.set_defaults(run=run)


def _title(text: str) -> str:
    """argparse type: an AE title (AE-07)."""
    if (problem := ae_title(text)) is not None:
        raise argparse.ArgumentTypeError(problem)
    return text.strip()


def run(args) -> int:
    config = reading(args.config)
    if config is None:
        return EXIT_USAGE
    try:
        targets = _targets(config, args)
    except ValueError as exc:  # ConfigError too
        print(f"nothing to echo: {exc}", file=sys.stderr)
        return EXIT_USAGE
    results = [_with_hint(echo(config, target), target) for target in targets]
    if args.json:
        print(json.dumps([{**asdict(r), "ok": r.ok} for r in results], indent=2))
    else:
        print("\n\n".join(_text(r) for r in results) if len(results) == 1 or not args.all else _table(results))
    return 0 if all(r.ok for r in results) else EXIT_FAILED


def _targets(config: Config, args) -> list[Target]:
    """Each echo asked for; ValueError says why there is none."""
    from appliance.dicom.admission import SERVICE_TOOL  # here: it imports pydicom (see echo())

    calling = args.calling or (config.storage_scp if args.role == "scp" else config.storage_scu).ae_title.strip()
    remotes = {ae.ae_title.strip(): ae for ae in config.remote_aes}
    peer = _peer(args, remotes)
    if peer is not None:
        targets = [Target(args.called, *peer, calling, args.tls)]
    else:
        titles = list(remotes) if args.all else [t.strip() for t in args.titles]
        unknown = [t for t in titles if t not in remotes]
        if unknown:
            raise ConfigError("remote_aes", f"no remote AE titled {', '.join(map(repr, unknown))} "
                              f"(known: {', '.join(remotes) or 'none'})")
        targets = [Target(t, remotes[t].host, remotes[t].port, calling, remotes[t].tls, remotes[t].tls_subject)
                   for t in titles]
    if args.local:
        host = "127.0.0.1" if config.network.bind_address in ("*", "0.0.0.0") else config.network.bind_address
        targets += [Target(scp.ae_title.strip(), host, port, args.calling or SERVICE_TOOL, tls, "", name)
                    for name, scp in (("storage-scp", config.storage_scp), ("qr", config.query_retrieve_scp))
                    for port, tls in ((scp.port, False), (scp.tls_port, True)) if port]
    if not targets:
        raise ConfigError("remote_aes", "give AE titles, --all, --local or HOST PORT --called TITLE")
    return targets


def _peer(args, remotes: dict) -> tuple[str, int] | None:
    """(host, port) of `echo HOST PORT --called TITLE`; None when the positional arguments are
    titles of the table. Two of them whose second is a number are a host and a port (a table
    whose titles they both are aside), and need --called: no called title is guessed."""
    given = [t.strip() for t in args.titles]
    looks = len(given) == 2 and given[1].isdigit() and not all(t in remotes for t in given)
    if args.called is None:
        if looks:
            raise ValueError(f"{given[0]} {given[1]} is a host and a port: give --called TITLE, the AE title "
                             "the peer answers to")
        if args.tls:
            raise ValueError("--tls goes with HOST PORT --called TITLE; a remote AE of the table uses TLS when "
                             "its tls setting says so (service-tool remote set TITLE --tls on)")
        return None
    if len(given) != 2 or not given[1].isdigit() or not 0 < int(given[1]) < 65536:
        raise ValueError(f"--called goes with HOST PORT (a TCP port 1..65535), not {' '.join(given) or 'nothing'}")
    if args.all:
        raise ValueError("--all echoes the table's remote AEs; HOST PORT --called TITLE echoes one peer")
    return given[0], int(given[1])


def _with_hint(result: Echo, target: Target) -> Echo:
    """A local echo that the box's own calling-AE allow-list refused (only with --calling: the
    tool's own title passes) says how to admit that title."""
    if target.listener and result.failure.endswith("(1/1/3)"):
        result.failure += (f"; to admit {target.calling}: service-tool access allow {target.listener} "
                           f"--calling {target.calling}")
    return result


def echo(config: Config, target: Target) -> Echo:
    # Imported here: pynetdicom takes 0.3 s to import, which no other command should pay.
    from appliance.dicom import dimse
    from appliance.dicom.pdu import Proposal
    from appliance.dicom.requestor import Association, Failed, Local, connect, secure
    from appliance.tls.contexts import TlsUnavailable, client_context, describe

    title, host, port, calling, tls, subject, _ = target
    result = Echo(title, host, port, calling, tls)
    # AE-11: STORAGE-SCP has its own Implementation Class UID; the others share one.
    implementation_uid = uids.IMPLEMENTATION_UID_SCP if calling == config.storage_scp.ae_title.strip() \
        else uids.IMPLEMENTATION_UID_QR_SCU
    local = Local(calling, config.storage_scu.max_pdu_size, config.network.max_pdu_send,
                  config.network.socket_buffer_size, implementation_uid,
                  uids.implementation_version_name(__version__))
    started = time.monotonic()
    try:
        result.address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0]
    except OSError as exc:
        result.failure = f"name resolution: {host}: {exc.strerror or exc}"
        return result
    result.resolve_ms = _since(started)
    step = time.monotonic()
    try:
        sock = connect(result.address, port, local, config.timeouts)
    except Failed as exc:
        result.failure = f"TCP: {exc}"
        return result
    result.connect_ms = _since(step)
    if tls:
        step = time.monotonic()
        try:
            sock = secure(sock, client_context(config), host, port, subject)
        except TlsUnavailable as exc:
            sock.close()
            result.failure = f"TLS: {exc}"
            return result
        except Failed as exc:
            result.failure = f"TLS: {exc}"
            return result
        result.tls_ms = _since(step)
        result.tls_session = describe(sock)
    step = time.monotonic()
    try:
        association = Association.over(sock, title, local, [Proposal(1, uids.VERIFICATION, (uids.IMPLICIT_LE,))],
                                         config.timeouts)  # VER/ILE (F.4.2.1.3.1.2)
    except Failed as exc:
        # A TLS listener drops a plain A-ASSOCIATE-RQ as a failed handshake (SE-07).
        hint = "" if tls or "connection lost" not in str(exc) else "; if this is a TLS port, echo it with TLS"
        result.failure = f"association: {exc}{hint}"
        return result
    result.association_ms = _since(step)
    try:
        if not association.accepted:
            association.release_quietly()
            result.failure = "association: accepted, but not the Verification SOP Class in Implicit VR Little Endian"
            return result
        step = time.monotonic()
        association.send_command(next(iter(association.accepted)), dimse.echo_request(1, uids.VERIFICATION))
        answer = association.receive_command(config.storage_scu.dimse_timeout, "C-ECHO-RSP",
                                             "storage_scu.dimse_timeout")
        result.echo_ms = _since(step)
        if answer.field != dimse.C_ECHO_RQ | dimse.RESPONSE:
            result.failure = "C-ECHO: the answer was not a C-ECHO-RSP"
            association.abort()
            return result
        result.echo_status = answer.us(dimse.STATUS)
        if not result.ok:
            result.failure = f"C-ECHO: status 0x{result.echo_status:04X}"
        association.release_quietly()
    except Failed as exc:
        result.failure = f"C-ECHO: {exc}"
    return result


def _since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def _text(r: Echo) -> str:
    lines = [f"{r.title} at {r.host} {'TLS ' if r.tls else ''}port {r.port}, calling as {r.calling}"]
    if r.resolve_ms is not None:
        lines.append(f"  resolved   {r.address} in {r.resolve_ms} ms")
    if r.connect_ms is not None:
        lines.append(f"  TCP        connected in {r.connect_ms} ms")
    if r.tls_ms is not None:
        lines.append(f"  TLS        {r.tls_session} in {r.tls_ms} ms")
    if r.association_ms is not None:
        lines.append(f"  association accepted in {r.association_ms} ms")
    if r.echo_status is not None:
        lines.append(f"  C-ECHO     status 0x{r.echo_status:04X} in {r.echo_ms} ms")
    lines.append("OK" if r.ok else f"FAILED at {r.failure}")
    return "\n".join(lines)


def _table(results: list[Echo]) -> str:
    rows = [("AE title", "address", "result", "ms")]
    for r in results:
        total = sum(v for v in (r.resolve_ms, r.connect_ms, r.tls_ms, r.association_ms, r.echo_ms) if v is not None)
        rows.append((r.title, f"{r.host}:{r.port}" + (" TLS" if r.tls else ""), "OK" if r.ok else f"FAILED at {r.failure}", f"{total:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}" for a, b, c, d in rows)
