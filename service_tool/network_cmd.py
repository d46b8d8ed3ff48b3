"""`service-tool network show|set|try|apply`: the box's one network interface (TL-03, NW-01..NW-13).

`set` edits `[network]` (validated like every edit) and puts it in force at once; `try` does
the same, then waits for the installer to type `yes`. Without that answer in time (a typo
that cut a remote console off, say) the files, the configuration and the running daemons go
back to what they were, so a headless box cannot be locked out. `apply` puts the file's
settings in force as they are (first boot, or after a hand edit). `show` prints what is
configured beside what the system reports.

`--root`, `--bus` and `--netns` point the command at another system than the one it runs on:
an image being built, or a container in the tests. pyroute2 and dbus-fast (0.25 s to import)
are imported by the commands here, not by the tool's other commands.
"""

from __future__ import annotations

import argparse
import json
import select
import signal
import sys
import time
from pathlib import Path

import tomlkit

from appliance.config import Config
from appliance.errors import ConfigError
from service_tool import edit
from service_tool.config_cmd import EXIT_INVALID
from service_tool.configuration import load, reading

_LISTS = {"dns": "dns_servers", "search": "search_domains", "ntp": "ntp_servers", "address": "addresses"}
_VALUES = {"gateway4": "gateway4", "gateway6": "gateway6", "hostname": "hostname", "time_zone": "time_zone",
           "interface": "interface"}


def register(groups) -> None:
    group = groups.add_parser("network", help="the box's network interface: show, set, try (with revert), apply",
                              description="Show and change the box's network settings (TL-03).")
    commands = group.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    target = argparse.ArgumentParser(add_help=False)
    target.add_argument("--root", type=Path, default=Path("/"),
                        help="the system's root directory (default /; an image or a container otherwise)")
    target.add_argument("--bus", metavar="ADDRESS", help="D-Bus address of the system's bus (default: the system bus)")
    target.add_argument("--netns", help="network namespace holding the interface (default: this one)")

    show_cmd = commands.add_parser("show", parents=[target], help="configured and actual settings side by side",
                                   description="Print the configured network settings beside what networkd, "
                                               "resolved, timesyncd, hostnamed and the kernel report.")
    show_cmd.add_argument("--json", action="store_true", help="print JSON")
    show_cmd.set_defaults(run=show)

    values = argparse.ArgumentParser(add_help=False)
    values.add_argument("--dhcp", choices=("on", "off"), help="DHCP (v4, v6 and router advertisements)")
    values.add_argument("--address", metavar="IP/PREFIX,...", help="static addresses, comma-separated ('' for none)")
    values.add_argument("--gateway4", metavar="IP", help="IPv4 default gateway ('' for none)")
    values.add_argument("--gateway6", metavar="IP", help="IPv6 default gateway ('' for none)")
    values.add_argument("--dns", metavar="IP,...", help="DNS servers, replacing DHCP's ('' for DHCP's)")
    values.add_argument("--search", metavar="DOMAIN,...", help="DNS search domains ('' for DHCP's)")
    values.add_argument("--ntp", metavar="SERVER,...", help="NTP servers, replacing DHCP's ('' for DHCP's)")
    values.add_argument("--hostname", help="machine name, also sent to the DHCP server")
    values.add_argument("--mtu", type=int, help="MTU in bytes (0: the interface's default)")
    values.add_argument("--time-zone", help="e.g. Europe/Berlin")
    values.add_argument("--host", action="append", metavar="NAME=IP",
                        help="a host name mapping for use without DNS (repeatable; replaces the list; '' clears it)")
    values.add_argument("--interface", help="the interface to manage ('' for the only Ethernet interface)")
    for name, run_it, what in (("set", set_network, "put in force at once"),
                               ("try", try_network, "put in force, and undone unless confirmed in time")):
        command = commands.add_parser(
            name, parents=[target, values], help=f"change network settings, {what}",
            description=f"Change network settings; they are validated, saved and {what}. Exit 0 when in force, "
                        "1 when refused, failed or undone.")
        if name == "try":
            command.add_argument("--timeout", type=float, default=120.0,
                                 help="seconds to wait for 'yes' before undoing the change (default 120)")
        command.set_defaults(run=run_it)
    apply_cmd = commands.add_parser("apply", parents=[target], help="put the file's network settings in force",
                                    description="Write the system's network files from the configuration and "
                                                "have networkd, timesyncd, hostnamed and timedated use them.")
    apply_cmd.set_defaults(run=apply_network)


def _mutate(args):
    def mutate(document) -> str:
        section = edit.table(document, "network")
        changed = []
        if args.dhcp is not None:
            section["dhcp"] = args.dhcp == "on"
            changed.append(f"dhcp {args.dhcp}")
        for option, key in _LISTS.items():
            value = getattr(args, option)
            if value is not None:
                section[key] = [v.strip() for v in value.split(",") if v.strip()]
                changed.append(f"{key} {value or '(none)'}")
        for option, key in _VALUES.items():
            value = getattr(args, option)
            if value is not None:
                section[key] = value
                changed.append(f"{key} {value or '(none)'}")
        if args.mtu is not None:
            section["mtu"] = args.mtu
            changed.append(f"mtu {args.mtu}")
        if args.host is not None:
            section["hosts"] = tomlkit.aot()
            for mapping in filter(None, args.host):
                name, sep, address = mapping.partition("=")
                if not sep:
                    raise edit.Refused(f"--host {mapping!r}: write NAME=IP")
                section["hosts"].append({"name": name.strip(), "address": address.strip()})
            changed.append(f"hosts {', '.join(filter(None, args.host)) or '(none)'}")
        if not changed:
            raise edit.Refused("nothing to change: give at least one setting")
        return "network: " + ", ".join(changed)

    return mutate


def _interface(config: Config, args) -> str:
    from appliance.network import links

    return links.find_interface(config.network.interface, args.netns)


def set_network(args) -> int:
    return _change(args, confirm_within=None)


def try_network(args) -> int:
    return _change(args, confirm_within=args.timeout)


def _change(args, confirm_within: float | None) -> int:
    from appliance.network import apply

    try:
        written, described = edit.write(args.config, _mutate(args))
    except (ConfigError, edit.Refused) as exc:
        print(f"refused: {exc}; {edit.unchanged(args.config)}", file=sys.stderr)
        return edit.EXIT_REFUSED
    try:
        interface = _interface(written.new, args)  # after the edit: it may name another one
    except ConfigError as exc:
        edit.put_back(args.config, written)
        print(f"refused: {exc}; {args.config} is restored", file=sys.stderr)
        return edit.EXIT_REFUSED
    print(f"{described}; saved to {args.config}")
    saved = apply.snapshot(args.root)
    try:
        _report(apply.apply(written.new, interface, args.root, args.bus))
    except (apply.ApplyError, OSError, ValueError) as exc:
        print(f"could not put the new settings in force: {exc}", file=sys.stderr)
        return _undo(args, written, saved, interface)
    if confirm_within is not None and not _confirmed(confirm_within):
        return _undo(args, written, saved, interface)
    return edit.reload_service(args.config, written)


def _undo(args, written: edit.Written, saved, interface: str) -> int:
    """Back to `saved` (apply.Snapshot) and the configuration before `written`."""
    from appliance.network import apply

    edit.put_back(args.config, written)
    try:
        _report(apply.revert(saved, written.running, interface, args.root, args.bus))
    except (apply.ApplyError, OSError) as exc:
        print(f"ALERT: the previous settings could not be put back in force either: {exc}", file=sys.stderr)
        return edit.EXIT_REFUSED
    print(f"the previous network settings are back in force; {args.config} is restored", file=sys.stderr)
    return edit.EXIT_REFUSED


def _confirmed(within: float) -> bool:
    """Wait for 'yes' on stdin. The wait survives a lost terminal (SIGHUP ignored, end of input
    is not an answer), so a change that cut the installer off is undone when the time is up."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    print(f"type 'yes' within {within:.0f} s to keep these settings; anything else, or nothing, undoes them",
          file=sys.stderr, flush=True)
    deadline = time.monotonic() + within
    stdin_open = True
    while (left := deadline - time.monotonic()) > 0:
        if not stdin_open:
            time.sleep(min(left, 0.5))
            continue
        ready, _, _ = select.select([sys.stdin], [], [], left)
        if not ready:
            break
        line = sys.stdin.readline()
        if not line:  # end of input: keep waiting for the time to run out
            stdin_open = False
            continue
        return line.strip().lower() == "yes"
    print("no confirmation in time", file=sys.stderr)
    return False


def apply_network(args) -> int:
    from appliance.network import apply

    config = load(args.config)
    if config is None:
        return EXIT_INVALID
    try:
        _report(apply.apply(config, _interface(config, args), args.root, args.bus))
    except (ConfigError, apply.ApplyError, OSError, ValueError) as exc:
        print(f"could not put the network settings in force: {exc}", file=sys.stderr)
        return edit.EXIT_REFUSED
    print("the network settings are in force")
    return 0


def _report(warnings: list[str]) -> None:
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def show(args) -> int:
    config = reading(args.config)
    if config is None:
        return EXIT_INVALID
    net = config.network
    configured = {"interface": net.interface or "(the only Ethernet interface)", "dhcp": net.dhcp,
                  "addresses": list(net.addresses), "gateways": [g for g in (net.gateway4, net.gateway6) if g],
                  "dns_servers": list(net.dns_servers), "search_domains": list(net.search_domains),
                  "ntp_servers": list(net.ntp_servers), "hostname": net.hostname, "mtu": net.mtu,
                  "time_zone": net.time_zone}
    actual = _actual(config, args)
    if args.json:
        print(json.dumps({"configured": configured, "actual": actual}, indent=2))
        return 0
    print(f"{'':<16} {'configured':<40} actual")
    for key, value in configured.items():
        print(f"{key:<16} {_text(value):<40} {_text(actual.get(key, ''))}")
    for key in ("link", "operational_state", "ntp_server", "problems"):
        if actual.get(key):
            print(f"{key:<16} {'':<40} {_text(actual[key])}")
    return 0


def _actual(config: Config, args) -> dict:
    """What the kernel and systemd report; each part that cannot be read says why instead."""
    from appliance.network import links
    from appliance.network.system_bus import BusError, run

    actual: dict = {"problems": []}
    try:
        interface = _interface(config, args)
        state = links.read_state(interface, args.netns)
    except (ConfigError, OSError) as exc:
        actual["problems"].append(f"interface: {exc}")
        return actual
    actual.update(interface=interface, addresses=[a.cidr + (" (dynamic)" if a.dynamic else "") for a in state.addresses],
                  gateways=list(state.gateways), mtu=state.mtu,
                  link=f"{state.operstate}, {state.speed or '?'} Mbit/s {state.duplex or '?'} duplex")
    if state.link_problem:
        actual["problems"].append(state.link_problem)

    async def ask(bus):
        described = await bus.describe_link(await bus.link_index(interface))
        dns, domains = await bus.link_dns(described.index)
        ntp = await bus.ntp_state()
        _kernel, hostname = await bus.hostnames()
        return described, dns, domains, ntp, hostname, await bus.timezone(), await bus.ntp_synchronized()

    try:
        described, dns, domains, ntp, hostname, zone, synchronized = run(ask, args.bus)
    except BusError as exc:
        actual["problems"].append(f"systemd: {exc}")
        return actual
    actual.update(dhcp=any(a.source.startswith("DHCP") for a in described.addresses), dns_servers=dns,
                  search_domains=domains, ntp_servers=list(ntp.link_servers or ntp.system_servers),
                  ntp_server=f"{ntp.server_name or 'none yet'}, clock {'' if synchronized else 'not '}synchronized",
                  hostname=hostname, time_zone=zone,
                  operational_state=f"{described.operational_state} ({described.administrative_state})")
    return actual


def _text(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    return str(value) if value not in ("", None) else "-"
