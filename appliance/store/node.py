"""This box's name among the boxes sharing one index (IX-02): made once, kept in the data directory.

A host name alone is not enough (two services on one machine, or boxes cloned with one name),
so the name is the host name when it was made and a random suffix. Storage Commitment
requests carry it (commitment.py), and `status` shows it.
"""

from __future__ import annotations

import re
import socket
import uuid
from pathlib import Path

from appliance.durable import write_text

NODE_FILE = "node-id"
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def known_node_id(data_dir: Path) -> str | None:
    """The name, if the box has one yet (its service makes it at its first start)."""
    try:
        name = (data_dir / NODE_FILE).read_text().strip()
    except OSError:  # none yet, or none readable
        return None
    return name if _NAME.fullmatch(name) else None


def node_id(data_dir: Path) -> str:
    name = known_node_id(data_dir)
    if name is not None:
        return name
    path = data_dir / NODE_FILE
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:40] or "box"
    name = f"{host}-{uuid.uuid4().hex[:8]}"
    write_text(path, name + "\n")
    return name
