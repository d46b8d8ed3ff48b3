"""Listening ports below 1024 (DICOM's 104; issue 22 item 7b): binding one takes
CAP_NET_BIND_SERVICE, and the unit gives the service no capability at all (SE-06).

Before an edit is written whose configuration has such a port that the service does not
listen on yet, the running service is asked for its process (the control socket's `status`)
and its effective capabilities are read (/proc/PID/status, CapEff). If it lacks the one it needs: as root on a box whose service
systemd runs, a drop-in gives the unit that capability and no other, systemd reloads it and
the service restarts (its running associations drained first), and then the edit goes on as
usual; anywhere else the edit is refused, saying exactly what to do.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from appliance.config import Config
from appliance.control import socket_path
from appliance.control.client import NotRunning, ask
from appliance.durable import write_text

UNIT = "appliance.service"
DROP_IN = Path("/etc/systemd/system/appliance.service.d/50-privileged-port.conf")
DROP_IN_TEXT = """\
# Written by service-tool: a listening port below 1024 (DICOM's 104) takes this one
# capability (SE-06: the unit itself gives the service none).
[Service]
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
AmbientCapabilities=CAP_NET_BIND_SERVICE
"""
CAP_NET_BIND_SERVICE = 10  # its bit in /proc/PID/status's Cap* masks (linux/capability.h)
_SYSTEMD_RUNNING = Path("/run/systemd/system")  # sd_booted(3)
_RESTART_TIMEOUT = 300  # s: the drain (timeouts.shutdown_drain) and the start's recovery


def unprivileged_port_start() -> int:
    """The lowest port any process may bind (1024 unless the box's sysctl says otherwise)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


def privileged_ports(config: Config) -> set[int]:
    """The listening ports (plain and TLS, SE-07) of `config` that need CAP_NET_BIND_SERVICE."""
    start = unprivileged_port_start()
    return {port for ae in (config.storage_scp, config.query_retrieve_scp) for port in (ae.port, ae.tls_port)
            if 0 < port < start}


def can_bind(pid: int) -> bool:
    """Whether process `pid` has CAP_NET_BIND_SERVICE in its effective set."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return bool(int(status["CapEff"], 16) >> CAP_NET_BIND_SERVICE & 1)


def prepare(running: Config, new: Config) -> str | None:
    """Before `new` replaces `running`, make sure the service can listen on the ports below 1024
    of `new` it does not listen on yet (with the drop-in and a restart, when it takes them); why
    not, if it cannot. With the service stopped, that is every such port (after a restore, too)."""
    if not privileged_ports(new):
        return None
    try:
        status = ask(socket_path(running), "status")
    except NotRunning:
        status = None
    except PermissionError:
        return None  # the reload that follows says how to reach the service
    ports = sorted(privileged_ports(new) - {listener["port"] for listener in (status or {}).get("listeners", [])})
    if not ports:
        return None
    pid = status["pid"] if status else None
    named = f"port{'s' if len(ports) > 1 else ''} {' and '.join(map(str, ports))} below {unprivileged_port_start()}"
    unit = _unit(pid)
    if pid is not None:
        able = can_bind(pid)
    else:  # not running: what the unit gives it when it starts
        able = unit is not None and "cap_net_bind_service" in unit["AmbientCapabilities"]
    if able:
        return None
    if pid is None and unit is None:  # started by hand, by whoever starts it
        print(f"note: {named}: the service needs CAP_NET_BIND_SERVICE (or root) to listen there when it starts")
        return None
    if unit is None or os.geteuid() != 0:
        return _how_to(named, pid)
    DROP_IN.parent.mkdir(parents=True, exist_ok=True)
    write_text(DROP_IN, DROP_IN_TEXT)
    reloaded = _systemctl("daemon-reload")
    if reloaded.returncode != 0:
        return f"systemctl daemon-reload failed: {reloaded.stderr.strip()}"
    print(f"{named}: the service needs CAP_NET_BIND_SERVICE, now given by {DROP_IN}")
    if pid is None:
        return None  # it has it when it starts
    print(f"restarting the service to give it the capability: running associations are drained first "
          f"(up to timeouts.shutdown_drain, {running.timeouts.shutdown_drain:g} s)", flush=True)
    restarted = _systemctl("restart", UNIT)
    if restarted.returncode != 0:
        return f"the service did not restart: {restarted.stderr.strip()} (journalctl -u appliance says why)"
    return None


def _unit(pid: int | None) -> dict[str, str] | None:
    """The appliance unit's properties on a systemd box where it is the service answering
    (`pid`), or will be when it starts (`pid` None: stopped, or failing to start); else None."""
    if not _SYSTEMD_RUNNING.is_dir():
        return None
    shown = _systemctl("show", "--property=LoadState,MainPID,AmbientCapabilities", UNIT)
    properties = dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)
    if properties.get("LoadState") != "loaded" or pid is not None and properties.get("MainPID") != str(pid):
        return None
    return properties


def _systemctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=_RESTART_TIMEOUT)


def _how_to(named: str, pid: int | None) -> str:
    """The refusal, with the exact fix."""
    who = f"the running service (pid {pid}) lacks" if pid is not None else "the service lacks"
    return (f"{named}: {who} CAP_NET_BIND_SERVICE to listen there. Either choose a port of 1024 or above, or give "
            f"the service that capability: run this command again as root on the box, which does it itself, or "
            f"write the unit drop-in {DROP_IN}:\n\n{DROP_IN_TEXT}\nthen, as root: systemctl daemon-reload && "
            f"systemctl restart appliance, and run this command again")
