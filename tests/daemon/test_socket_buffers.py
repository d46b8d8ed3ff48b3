"""CF-08, D-3: the socket buffers of the real service's DICOM sockets, as the kernel holds them.

The service asks for SO_RCVBUF/SO_SNDBUF = network.socket_buffer_size; Linux grants twice the
request, capped at twice net.core.rmem_max/wmem_max (global sysctls: a network namespace cannot
lower them on this kernel, so the expectation is computed from /proc/sys). `ss -m` shows the
kernel's sk_rcvbuf/sk_sndbuf of the daemon's sockets, which is what getsockopt reports there.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

import scu
from appliance.config.model import Network

SYSCTL = Path("/proc/sys/net")


def sysctl(name: str) -> list[int]:
    return [int(v) for v in (SYSCTL / name).read_text().split()]


def buffers(*filters: str) -> list[tuple[int, int]]:
    """(rb, tb) of each TCP socket `ss` finds with these filters."""
    out = subprocess.run(["ss", "-tanmH", *filters], capture_output=True, text=True, timeout=10, check=True).stdout
    return [(int(rb), int(tb)) for rb, tb in re.findall(r"skmem:\(r\d+,rb(\d+),t\d+,tb(\d+)", out)]


def granted(request: int) -> tuple[int, int]:
    (rmem_max,), (wmem_max,) = sysctl("core/rmem_max"), sysctl("core/wmem_max")
    return 2 * min(request, rmem_max), 2 * min(request, wmem_max)


def above_the_caps() -> int:
    return 2 * max(sysctl("core/rmem_max") + sysctl("core/wmem_max"))


@pytest.mark.parametrize("size", [Network().socket_buffer_size, above_the_caps()], ids=["default", "above-the-caps"])
def test_listening_and_accepted_sockets_hold_what_the_kernel_grants_the_request(make_appliance, size):
    app = make_appliance({"network": {"socket_buffer_size": size}})
    for port, title in ((app.storage_port, "EX_STORE_SCP"), (app.qr_port, "EX_QUERY_SCP")):
        assert buffers("state", "listening", f"sport = :{port}") == [granted(size)]
        with scu.association(port, title, scu.query_contexts()) as assoc:
            peer_port = assoc.dul.socket.socket.getsockname()[1]
            accepted = buffers("state", "established", f"( sport = :{port} and dport = :{peer_port} )")
        assert accepted == [granted(size)]


def test_zero_leaves_the_kernel_defaults_and_autotuning(make_appliance):
    app = make_appliance({"network": {"socket_buffer_size": 0}})
    with scu.association(app.storage_port, "EX_STORE_SCP", scu.query_contexts()) as assoc:
        peer_port = assoc.dul.socket.socket.getsockname()[1]
        ((rb, _),) = buffers("state", "established", f"( sport = :{app.storage_port} and dport = :{peer_port} )")
    # tcp_rmem's default, where autotuning starts (a request would have locked it at 2x).
    assert rb == sysctl("ipv4/tcp_rmem")[1]
