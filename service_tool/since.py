"""`service-tool logs --since`: a point in time as a field engineer writes it, as journalctl takes it.

The forms, an instant in the box's local zone unless an offset is given:
- an ISO 8601 date and time: `2026-03-29T14:30`, `2026-03-29 14:30:05`, `2026-03-29T14:30+02:00`,
  `2026-03-29T12:30Z`;
- a date, its midnight: `2026-03-29`; `today`, `yesterday`;
- a time that far back: `10min`, `2h`, `1h30min`, `3d`, `1w`, also written `-2h` or `2h ago`
  (units s, sec, m, min, h, hour, d, day, w, week, and their plurals; `m` is minutes, as in
  systemd).
"""

from __future__ import annotations

import argparse
import datetime
import re

_UNITS = {**dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
          **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
          **dict.fromkeys(("h", "hour", "hours"), 3600), **dict.fromkeys(("d", "day", "days"), 86400),
          **dict.fromkeys(("w", "week", "weeks"), 604800)}
_AMOUNT = re.compile(r"(\d+)\s*([a-z]+)")  # "10min", "2 hours"
_RELATIVE = re.compile(r"-?\s*((?:\d+\s*[a-z]+\s*)+?)(?:\s*ago)?")
FORMS = "an ISO 8601 time (2026-03-29T14:30, with an offset or in local time), a date, today, " \
        "yesterday, or a time back from now (10min, 2h, 1h30min, 3d)"


def since(text: str, now: datetime.datetime | None = None) -> datetime.datetime:
    """argparse type: the instant `text` names, with its offset."""
    now = now or datetime.datetime.now().astimezone()
    words = text.strip().lower()
    if words in ("today", "yesterday"):
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
        return (midnight - datetime.timedelta(days=words == "yesterday")).astimezone()
    relative = _RELATIVE.fullmatch(words)
    if relative:
        amounts = _AMOUNT.findall(relative.group(1))
        if amounts and all(unit in _UNITS for _, unit in amounts):
            return now - datetime.timedelta(seconds=sum(int(n) * _UNITS[unit] for n, unit in amounts))
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {FORMS}") from None
    return moment if moment.tzinfo else moment.astimezone()  # no offset: the box's local time
