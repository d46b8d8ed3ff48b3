"""Tool side of the control socket."""

from __future__ import annotations

import json
import socket
from pathlib import Path


class NotRunning(Exception):
    """Nothing answers on the control socket: the service is not running (or not on this data directory)."""


def ask(path: Path, command: str, timeout: float = 30.0, **arguments) -> dict:
    """Send one request and return the daemon's answer; NotRunning when nobody listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NotRunning(f"no service answers on {path}") from exc
        s.sendall(json.dumps({"command": command, **arguments}).encode() + b"\n")
        with s.makefile("rb") as f:
            line = f.readline()
    if not line:
        raise NotRunning(f"the service closed {path} without answering")
    return json.loads(line)
