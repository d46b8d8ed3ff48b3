"""Daemon side of the control socket: a thread per request, each request one JSON line."""

from __future__ import annotations

import json
import logging
import os
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("appliance.control")

_MAX_REQUEST = 64 * 1024
_READ_TIMEOUT = 5.0  # a client that connects and says nothing does not hold a thread


class ControlServer:
    """Serves `commands` (name -> callable(request dict) -> answer dict) on a UNIX socket."""

    def __init__(self, path: Path, commands: dict[str, Callable[[dict], dict]]):
        self.path = path
        self._commands = commands
        # A socket left by a crashed run; the data-directory lock says no one else owns it.
        path.unlink(missing_ok=True)
        self._server = socketserver.ThreadingUnixStreamServer(str(path), self._handler(), bind_and_activate=False)
        self._server.daemon_threads = True
        try:
            self._server.server_bind()
            os.chmod(path, 0o660)  # before listen(): nobody can connect through wider permissions
            self._server.server_activate()
        except BaseException:
            self._server.server_close()
            raise
        self._thread = threading.Thread(target=self._server.serve_forever, name="control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop_accepting(self) -> None:
        """As a DICOM Listener's: `server.stop_accepting` closes both kinds together."""
        self._server.shutdown()
        self._server.server_close()
        self.path.unlink(missing_ok=True)

    def _handler(self):
        commands = self._commands

        class Handler(socketserver.StreamRequestHandler):
            timeout = _READ_TIMEOUT

            def handle(self) -> None:
                try:
                    line = self.rfile.readline(_MAX_REQUEST)
                    request = json.loads(line)
                    command = commands[request["command"]]
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    answer = {"ok": False, "error": f"bad control request: {exc!r}"}
                else:
                    try:
                        answer = command(request)
                    except Exception as exc:  # a bug must not end the control thread
                        log.exception("control command %s failed", request.get("command"))
                        answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                try:
                    self.wfile.write(json.dumps(answer).encode() + b"\n")
                except OSError:
                    pass  # the client went away; nothing to tell it

        return Handler
