"""netplan's own generator as the check of a rendered YAML: `netplan generate --root-dir`.

It catches what netplan's parser alone lets through (networkd-specific rules such as
dhcp4/dhcp6 overrides that disagree) and shows exactly what networkd will read. It writes
only below the root it is given; that root is fresh for every call because a failed run can
leave partial output behind.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

NETPLAN = "/usr/sbin/netplan"  # Debian's netplan.io


class NetplanError(Exception):
    """netplan refused a YAML document; the message is netplan's own, naming the problem."""


def generate_network(yaml_text: str, name: str = "90-appliance.yaml") -> str:
    """The systemd-networkd .network file netplan generates from `yaml_text` (saved as `name`)."""
    with tempfile.TemporaryDirectory(prefix="netplan-") as scratch:
        path = Path(scratch, "etc/netplan", name)
        path.parent.mkdir(parents=True)
        # 0600 from the start: netplan warns on stderr about anything more open.
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as f:
            f.write(yaml_text)
        done = subprocess.run([NETPLAN, "generate", "--root-dir", scratch],
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            why = done.stderr.replace(str(path), name).strip()
            raise NetplanError(why or f"netplan generate exited with status {done.returncode}")
        networks = sorted(Path(scratch, "run/systemd/network").glob("*.network"))
        if len(networks) != 1:
            raise NetplanError(f"netplan generated {len(networks)} .network files from {name}, expected one")
        return networks[0].read_text(encoding="utf-8")
