"""`appliance` command line: the daemon entry point."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from appliance import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance", description="DICOM archive appliance service")
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the DICOM service in the foreground")
    serve.add_argument("--config", type=Path, default=None,
                       help="TOML configuration file (default: built-in defaults, data in ./appliance-data)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        from appliance.daemon import serve as run

        return run(args.config)
    return 2


if __name__ == "__main__":
    sys.exit(main())
