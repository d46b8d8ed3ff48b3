"""`service-tool config validate|show`: check the configuration file and print what is in effect.

Both load through the daemon's own loader (`appliance.config.load_file`), so a file this tool
accepts is one the service accepts, and a refusal names the same dotted key (TL-04).
"""

from __future__ import annotations

import argparse
import json
import sys

import tomlkit

from appliance.config import load_file
from appliance.config.keys import inert_settings, to_dict
from appliance.errors import ConfigError

EXIT_INVALID = 1


def register(groups) -> None:
    group = groups.add_parser("config", help="validate or show the configuration",
                              description="Validate or show the appliance configuration file.")
    commands = group.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    validate_cmd = commands.add_parser(
        "validate", help="check the file as the service would; exit 1 naming the first invalid key",
        description="Check the configuration file with the service's loader. Exit 0 when valid, "
                    "1 with a message naming the offending key otherwise.")
    validate_cmd.set_defaults(run=validate)
    show_cmd = commands.add_parser(
        "show", help="print the effective configuration, defaults included",
        description="Print the effective configuration (every key, defaults included) as TOML.")
    show_cmd.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    show_cmd.set_defaults(run=show)


def load(path):
    """The configuration at `path`, or None after printing why it is refused."""
    try:
        return load_file(path)
    except ConfigError as exc:
        print(f"configuration invalid: {exc}", file=sys.stderr)
        return None


def validate(args: argparse.Namespace) -> int:
    config = load(args.config)
    if config is None:
        return EXIT_INVALID
    for key, why in inert_settings(config):
        print(f"warning: {key} is set but has no effect yet: {why}", file=sys.stderr)
    print(f"configuration valid: {args.config}")
    return 0


def show(args: argparse.Namespace) -> int:
    config = load(args.config)
    if config is None:
        return EXIT_INVALID
    values = to_dict(config)
    if args.json:
        print(json.dumps(values, indent=2))
    else:
        print(f"# effective configuration of {args.config} (defaults included)")
        print(tomlkit.dumps(values), end="")
    return 0
