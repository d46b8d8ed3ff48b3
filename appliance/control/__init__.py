"""The daemon's local control surface for the service tool: reload, status (docs/architecture.md).

A UNIX stream socket in the data directory, guarded by file permissions (owner and group
only); nothing listens on the network for it. One JSON request line, one JSON answer line.
"""

from __future__ import annotations

from pathlib import Path

from appliance.config import Config, data_dir

SOCKET_NAME = "control.sock"
# sockaddr_un.sun_path holds 108 bytes with the terminating NUL.
_MAX_PATH = 107


def socket_path(config: Config) -> Path:
    path = data_dir(config).resolve() / SOCKET_NAME
    if len(str(path).encode()) > _MAX_PATH:
        raise OSError(f"control socket path {path} is longer than {_MAX_PATH} bytes; use a shorter storage.data_dir")
    return path
