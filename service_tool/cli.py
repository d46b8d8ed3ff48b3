"""`service-tool`: the dispatcher. Each command group lives in its own module with `register()`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from appliance import __version__
from service_tool import (access_cmd, ae_cmd, backup_cmd, config_cmd, conformance_cmd, echo_cmd, logs_cmd,
                          maintenance_cmd, network_cmd, remote_cmd, status_cmd, study_cmd, tls_cmd, update_cmd)
from service_tool.configuration import DEFAULT_CONFIG, default_file

# In the order an installer meets them.
GROUPS = (ae_cmd, remote_cmd, access_cmd, network_cmd, tls_cmd, config_cmd, echo_cmd, status_cmd, logs_cmd,
          conformance_cmd, study_cmd, maintenance_cmd, backup_cmd, update_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="service-tool", description="Installation and field-service tool of the DICOM archive appliance.")
    parser.add_argument("--version", action="version", version=f"service-tool {__version__}")
    parser.add_argument("--config", type=Path,
                        help=f"the appliance's TOML configuration file (default: {DEFAULT_CONFIG}; where it does "
                             "not exist, the built-in defaults, as 'appliance serve' without --config: data in "
                             "./appliance-data)")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.register(groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.config is None:
        args.config = default_file()  # None: the built-in defaults (service_tool/configuration.py)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
