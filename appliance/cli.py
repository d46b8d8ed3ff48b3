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
        _hide_unused_database_driver(args.config)
        from appliance.daemon import serve as run

        return run(args.config)
    return 2


def _hide_unused_database_driver(config: Path | None) -> None:
    """peewee imports psycopg whenever it is installed: 16 MiB of memory and 60 ms of start-up
    that a box whose index is SQLite (`[index] url` empty) never uses (docs/performance.md, the
    peak RSS target). Hidden from it then; a configuration that does not load is left for the
    daemon to refuse."""
    from appliance.config import load_or_defaults
    from appliance.errors import ConfigError

    try:
        url = load_or_defaults(config).index.url
    except (ConfigError, OSError):
        return
    if not url:
        sys.modules.setdefault("psycopg", None)  # `import psycopg` then raises ImportError


if __name__ == "__main__":
    sys.exit(main())
