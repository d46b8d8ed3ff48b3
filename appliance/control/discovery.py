"""The appliance services running on this machine, found by their control sockets.

The kernel lists the listening UNIX sockets of this network namespace in /proc/net/unix; each
one named `control.sock` is asked for its `config` (all at once, each bounded by a short
timeout). The service announces itself nowhere else, so nothing can go stale: a service that
stopped is not listed. The service tool uses it when its configuration file does not load (it
then uses the configuration of the service started with that file) and when `status` finds no
service where it looked (it names those it found). A socket the tool may not open (another
user's service) or one that is not an appliance's is passed over.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from appliance.control import SOCKET_NAME
from appliance.control.client import NotRunning, ask

UNIX_SOCKETS = Path("/proc/net/unix")
_LISTENING = 0x10000  # __SO_ACCEPTCON in the table's Flags column
_TIMEOUT = 2.0  # s for each service to answer; they are asked together


@dataclass(frozen=True)
class RunningService:
    pid: int
    config_path: Path | None  # None: started without --config, on the built-in defaults
    base_dir: Path  # what its relative paths resolve against: the file's directory, else its working directory
    data_dir: Path
    config: dict  # what it runs, as appliance.config.keys.to_dict gives it


def control_sockets() -> list[Path]:
    """The listening sockets named control.sock, each once."""
    try:
        lines = UNIX_SOCKETS.read_text(errors="replace").splitlines()[1:]
    except OSError:
        return []
    found = []
    for line in lines:
        # Num RefCount Protocol Flags Type St Inode Path (a path may hold spaces)
        fields = line.split(None, 7)
        if len(fields) == 8 and int(fields[3], 16) & _LISTENING and fields[7].endswith("/" + SOCKET_NAME):
            found.append(Path(fields[7]))
    return list(dict.fromkeys(found))


def running_services() -> list[RunningService]:
    sockets = control_sockets()
    if not sockets:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(sockets))) as pool:
        return [service for service in pool.map(_asked, sockets) if service is not None]


def started_with(config_path: Path) -> RunningService | None:
    """The running service started with the file at `config_path`, if any."""
    wanted = config_path.resolve()
    return next((s for s in running_services() if s.config_path and s.config_path.resolve() == wanted), None)


def _asked(path: Path) -> RunningService | None:
    try:
        answer = ask(path, "config", timeout=_TIMEOUT)
        if answer["ok"]:  # not: a service from before the `config` command
            return RunningService(answer["pid"], Path(answer["config_path"]) if answer["config_path"] else None,
                                  Path(answer["base_dir"]), Path(answer["data_dir"]), answer["config"])
    except (NotRunning, OSError, ValueError, LookupError, TypeError):
        pass  # not ours to open, not answering, or another program's socket answering something else
    return None
