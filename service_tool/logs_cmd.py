"""`service-tool logs`: service-log lines, filtered by peer, level and time, or followed (LG-01, LG-07).

Reads the service's rotating log file and its backups (`logging.file` under the data
directory), oldest first, so it works with the service up or down; `--follow` then prints the
new records as they are written, across rotations (log_tail), until Ctrl-C. A record's
continuation lines (a traceback) stay with it.

Times are ISO 8601 with the offset, as the service writes them (appliance.log). Lines written
before that format (`2026-03-29 14:30:05,120`, local time without an offset) are read in the
box's zone as it is now. Finding no record is said on stderr and exits 1, as grep does, so that
a script can tell "nothing" from "something".
"""

from __future__ import annotations

import datetime
import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from appliance.config import Config, data_dir
from service_tool.config_cmd import EXIT_INVALID
from service_tool.configuration import reading
from service_tool.log_tail import Tail
from service_tool.since import FORMS, since

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "ALERT")  # appliance.log's order
_LINE = re.compile(r"^(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d[.,]\d{3}(?:[+-]\d\d:\d\d)?) ([A-Z]+) (\S+): (.*)$")
EXIT_NONE = 1  # no record matches
_DEFAULT_LINES = 50


@dataclass
class Record:
    time: str  # ISO 8601 with the offset
    level: str
    logger: str
    message: str  # continuation lines joined with newlines

    def text(self) -> str:
        return f"{self.time} {self.level} {self.logger}: {self.message}"

    @property
    def instant(self) -> datetime.datetime:
        return datetime.datetime.fromisoformat(self.time)


def register(groups) -> None:
    command = groups.add_parser(
        "logs", help="service-log lines, filtered by peer, level and time, or followed",
        description="Print the last service-log records from the log file and its rotated backups, or follow "
                    "the new ones. Times are ISO 8601 with the offset. Exit 0 when a record was printed, 1 when "
                    "none matches. Under systemd the same lines are in the journal (journalctl -u appliance).")
    command.add_argument("-n", "--lines", type=int, metavar="N",
                         help=f"the last N records (default {_DEFAULT_LINES}; all with --since)")
    command.add_argument("--level", type=str.upper, choices=LEVELS, default="DEBUG",
                         help="this level and above (ALERT is the seed's alert to the user, LG-09)")
    command.add_argument("--peer", metavar="TITLE_OR_IP",
                         help="only records naming this AE title or IP address as a whole word")
    command.add_argument("--since", type=since, metavar="TIME", help=f"only records from TIME on: {FORMS}")
    command.add_argument("-f", "--follow", action="store_true",
                         help="then print new records as they are written, across rotations, until Ctrl-C")
    command.add_argument("--json", action="store_true",
                         help="print JSON: an array, or with --follow one object per line (JSON Lines)")
    command.set_defaults(run=run)


def log_path(config: Config) -> Path | None:
    """The log file's path; None when the service logs to the journal only."""
    return data_dir(config) / config.logging.file if config.logging.file else None


def records(lines: Iterable[str | None]) -> Iterator[Record | None]:
    """The records of `lines`, oldest first; a None in `lines` (nothing more for now) ends the
    record read so far and is passed on."""
    current = None
    for line in lines:
        if line is None:
            if current is not None:
                yield current
                current = None
            yield None
            continue
        match = _LINE.match(line)
        if match:
            if current is not None:
                yield current
            current = Record(_zoned(match.group(1)), *match.groups()[1:])
        elif current is not None:
            current.message += "\n" + line
    if current is not None:
        yield current


def _zoned(stamp: str) -> str:
    """A line's time as ISO 8601 with the offset; one without (an older line) is local time."""
    moment = datetime.datetime.fromisoformat(stamp.replace(",", "."))
    return stamp if moment.tzinfo else moment.astimezone().isoformat(timespec="milliseconds")


def matching(level: str = "DEBUG", peer: str | None = None,
             start: datetime.datetime | None = None) -> Callable[[Record], bool]:
    """Whether a record is at `level` or above, names `peer` and is not older than `start`."""
    floor = LEVELS.index(level)
    naming = re.compile(rf"(?<![\w.-]){re.escape(peer)}(?![\w-])") if peer else None
    return lambda r: (r.level in LEVELS and LEVELS.index(r.level) >= floor
                      and (naming is None or naming.search(r.message) is not None)
                      and (start is None or r.instant >= start))


def selected(config: Config, level: str = "DEBUG", peer: str | None = None) -> list[Record]:
    """The records of the log file and its backups at `level` and above (naming `peer`)."""
    path = log_path(config)
    if path is None:
        return []
    keep = matching(level, peer)
    return [r for r in records(Tail(path, config.logging.backups).lines()) if keep(r)]


def run(args) -> int:
    config = reading(args.config)
    if config is None:
        return EXIT_INVALID
    path = log_path(config)
    if path is None or not (args.follow or path.exists()):
        where = "logging.file is empty" if path is None else f"{path} does not exist yet"
        print(f"no log file ({where}); the service's lines are in the journal: journalctl -u appliance",
              file=sys.stderr)
        return 1
    keep = matching(args.level, args.peer, args.since)
    stream = records(Tail(path, config.logging.backups).lines(follow=args.follow))
    try:
        found = [r for r in _until_quiet(stream) if keep(r)]
    except KeyboardInterrupt:  # Ctrl-C while a large backlog is read: no traceback
        return 130
    if args.lines is None:
        shown = found if args.since else found[-_DEFAULT_LINES:]
    else:
        shown = found[-args.lines:] if args.lines > 0 else []
    if args.json and not args.follow:
        print(json.dumps([asdict(r) for r in shown], indent=2))
    else:
        for record in shown:
            _print(record, args.json)
    if not found:
        print(f"no lines match{_filters(args)} in {path} and its rotated files", file=sys.stderr, flush=True)
    if not args.follow:
        return 0 if found else EXIT_NONE
    print(f"following {path} (Ctrl-C ends)", file=sys.stderr, flush=True)
    try:
        for record in stream:
            if record is not None and keep(record):
                _print(record, args.json)
    except KeyboardInterrupt:  # how a follow ends
        pass
    return 0


def _until_quiet(stream: Iterator[Record | None]) -> Iterator[Record]:
    """The records up to the first pause: all there are, or with --follow the backlog."""
    for record in stream:
        if record is None:
            return
        yield record


def _print(record: Record, as_json: bool) -> None:
    print(json.dumps(asdict(record)) if as_json else record.text(), flush=True)


def _filters(args) -> str:
    given = [f"--level {args.level.lower()}" if args.level != "DEBUG" else "",
             f"--peer {args.peer}" if args.peer else "",
             f"--since {args.since.isoformat(timespec='seconds')}" if args.since else ""]
    return "".join(f" {g}" for g in given if g)
