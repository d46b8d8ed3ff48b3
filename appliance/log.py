"""Service log set-up: journald-friendly stderr plus a bounded rotating file (LG-01, LG-10)."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path

from appliance.config.model import Logging

_FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup(settings: Logging, data_dir: Path) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(settings.level.upper())
    # Under systemd the journal adds its own timestamps; JOURNAL_STREAM says we are there.
    stderr_format = "%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else _FILE_FORMAT
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(stderr_format))
    root.addHandler(console)
    if settings.file:
        path = data_dir / settings.file
        path.parent.mkdir(parents=True, exist_ok=True)
        rotating = logging.handlers.RotatingFileHandler(
            path, maxBytes=settings.max_bytes, backupCount=settings.backups, encoding="utf-8")
        rotating.setFormatter(logging.Formatter(_FILE_FORMAT))
        root.addHandler(rotating)
    # pynetdicom narrates every PDU at INFO; our own lines cover association events (LG-08).
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
