"""`service-tool config validate|show|diff`: check the configuration file and print what is in effect.

They load through the daemon's own loader (`appliance.config.load_file`), so a file this tool
accepts is one the service accepts, and a refusal names the same dotted keys (TL-04): every
invalid one, not only the first. `show` only reads, so for a file that does not load it shows
what the service started with it runs (service_tool/configuration.py).
"""

from __future__ import annotations

import argparse
import json
import sys

import tomlkit

from appliance.config import load_dict
from appliance.config.keys import inert_settings, to_dict
from service_tool.configuration import announced, in_use, load, named

EXIT_INVALID = 1


def register(groups) -> None:
    group = groups.add_parser("config", help="validate or show the configuration",
                              description="Validate or show the appliance configuration file.")
    commands = group.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    validate_cmd = commands.add_parser(
        "validate", help="check the file as the service would; exit 1 naming every invalid key",
        description="Check the configuration file with the service's loader. Exit 0 when valid, "
                    "1 with a line naming each offending key otherwise.")
    validate_cmd.set_defaults(run=validate)
    show_cmd = commands.add_parser(
        "show", help="print the effective configuration, defaults included",
        description="Print the effective configuration (every key, defaults included) as TOML. When the "
                    "file does not load, the running service's configuration, after a WARNING.")
    show_cmd.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    show_cmd.set_defaults(run=show)
    diff_cmd = commands.add_parser(
        "diff", help="what the file changes from the defaults, or from what the service runs",
        description="List the keys whose value in the file differs from the built-in default (the "
                    "installer's choices), or with --running from the configuration the running service "
                    "uses (edits not applied yet). Exit 0 when there is no difference, 1 when there is "
                    "(as diff(1)), 2 when the file is invalid or the service does not answer.")
    diff_cmd.add_argument("--running", action="store_true", help="compare with the running service")
    diff_cmd.add_argument("--json", action="store_true", help="print JSON")
    diff_cmd.set_defaults(run=diff)


def validate(args: argparse.Namespace) -> int:
    config = load(args.config)
    if config is None:
        return EXIT_INVALID
    for key, why in inert_settings(config):
        print(f"warning: {key} is set but has no effect yet: {why}", file=sys.stderr)
    print(f"configuration valid: {named(args.config)}")
    return 0


def show(args: argparse.Namespace) -> int:
    used = in_use(args.config)
    if used is None:
        return EXIT_INVALID
    values = to_dict(announced(used).config)
    if args.json:
        print(json.dumps(values, indent=2))
    else:
        print(f"# effective configuration of {used.source} (defaults included)")
        print(tomlkit.dumps(values), end="")
    return 0


def flatten(values: dict, prefix: str = "") -> dict:
    """Dotted keys -> values; remote AEs are keyed by title (`remote_aes[PACS].port`), not position."""
    out = {}
    for key, value in values.items():
        name = prefix + key
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif key == "remote_aes" and not prefix:
            for remote in value:
                out.update(flatten(remote, f"remote_aes[{remote['ae_title'].strip()}]."))
        else:
            out[name] = value
    return out


def diff(args: argparse.Namespace) -> int:
    config = load(args.config)
    if config is None:
        return 2
    if args.running:
        from appliance.control import socket_path
        from appliance.control.client import NotRunning, ask

        try:
            base = ask(socket_path(config), "config", timeout=15)["config"]
        except (NotRunning, OSError) as exc:
            print(f"cannot compare with the running service: {exc}", file=sys.stderr)
            return 2
        what = "the running service"
    else:
        base = to_dict(load_dict({}))
        what = "the defaults"
    old, new = flatten(base), flatten(to_dict(config))
    changes = [{"key": k, "from": old.get(k), "to": new.get(k)}
               for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k)]  # in file order
    if args.json:
        print(json.dumps(changes, indent=2))
    elif not changes:
        print(f"{named(args.config)} is the same as {what}")
    else:
        print(f"{named(args.config)} differs from {what} in {len(changes)} key{'s' if len(changes) > 1 else ''}:")
        for c in changes:
            print(f"  {c['key']}: {_value(c['from'])} -> {_value(c['to'])}")
    return 1 if changes else 0


def _value(value) -> str:
    return "(none)" if value is None else json.dumps(value)
