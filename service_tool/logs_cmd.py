"""`service-tool logs`: recent service-log lines, filtered by peer and level (LG-01, LG-07).

Reads the service's rotating log file and its backups (`logging.file` under the data
directory), oldest first, so it works with the service up or down. A record's continuation
lines (a traceback) stay with it.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from appliance.config import Config, data_dir
from service_tool.config_cmd import EXIT_INVALID, load

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "ALERT")  # appliance.log's order
_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ([A-Z]+) (\S+): (.*)$")


@dataclass
class Record:
    time: str
    level: str
    logger: str
    message: str  # continuation lines joined with newlines

    def text(self) -> str:
        return f"{self.time} {self.level} {self.logger}: {self.message}"


def register(groups) -> None:
    command = groups.add_parser(
        "logs", help="recent service-log lines, filtered by peer and level",
        description="Print the last service-log records from the log file and its rotated backups. "
                    "Under systemd the same lines are in the journal (journalctl -u appliance).")
    command.add_argument("-n", "--lines", type=int, default=50, metavar="N", help="how many records (default 50)")
    command.add_argument("--level", type=str.upper, choices=LEVELS, default="DEBUG",
                         help="this level and above (ALERT is the seed's alert to the user, LG-09)")
    command.add_argument("--peer", metavar="TITLE_OR_IP",
                         help="only records naming this AE title or IP address as a whole word")
    command.add_argument("--json", action="store_true", help="print JSON")
    command.set_defaults(run=run)


def log_files(config: Config) -> list[Path]:
    """The log file and its backups, oldest first; empty when the service logs to the journal only."""
    if not config.logging.file:
        return []
    path = data_dir(config) / config.logging.file
    backups = [path.with_name(f"{path.name}.{n}") for n in range(config.logging.backups, 0, -1)]
    return [p for p in backups + [path] if p.exists()]


def records(paths: list[Path]):
    """Every record of the files, oldest first."""
    current = None
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.rstrip("\n")
                match = _LINE.match(line)
                if match:
                    if current is not None:
                        yield current
                    current = Record(*match.groups())
                elif current is not None:
                    current.message += "\n" + line
    if current is not None:
        yield current


def selected(paths: list[Path], level: str = "DEBUG", peer: str | None = None) -> list[Record]:
    floor = LEVELS.index(level)
    naming = re.compile(rf"(?<![\w.-]){re.escape(peer)}(?![\w-])") if peer else None
    return [r for r in records(paths)
            if r.level in LEVELS and LEVELS.index(r.level) >= floor and (naming is None or naming.search(r.message))]


def run(args) -> int:
    config = load(args.config)
    if config is None:
        return EXIT_INVALID
    paths = log_files(config)
    if not paths:
        where = "logging.file is empty" if not config.logging.file else \
            f"{data_dir(config) / config.logging.file} does not exist yet"
        print(f"no log file ({where}); the service's lines are in the journal: journalctl -u appliance",
              file=sys.stderr)
        return 1
    found = selected(paths, args.level, args.peer)[-args.lines:] if args.lines > 0 else []
    if args.json:
        print(json.dumps([asdict(r) for r in found], indent=2))
    else:
        for record in found:
            print(record.text())
    return 0
