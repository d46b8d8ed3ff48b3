"""sd_notify over $NOTIFY_SOCKET, without a dependency (sd_notify(3) protocol: one datagram)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading

log = logging.getLogger(__name__)
_failed: list[OSError] = []


def notify(*fields: str) -> bool:
    """Send e.g. notify("READY=1", "STATUS=serving"); False when not run under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    # Like sd_notify(3): a notification that cannot be delivered is not the service's failure.
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
    except OSError as exc:
        if not _failed:  # once: WATCHDOG=1 would repeat it every few seconds
            _failed.append(exc)
            log.warning("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Half of WatchdogSec (as systemd recommends), or None when no watchdog is armed for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


@contextlib.contextmanager
def keep_starting(status: str, every: float = 10.0):
    """Around a long step of the start (an index migration on the first boot of a new
    version): STATUS=`status`, and every `every` s the start timeout extended and the watchdog
    fed, so that systemd neither kills a start that is working nor the health check after an
    update (service_tool/update_cmd.py) takes it for a failed one. Nothing when not run under
    systemd."""
    if not os.environ.get("NOTIFY_SOCKET"):
        yield
        return
    done = threading.Event()

    def keep() -> None:
        while True:
            fields = [f"STATUS={status}", f"EXTEND_TIMEOUT_USEC={int(every * 3e6)}"]
            notify(*fields, *(["WATCHDOG=1"] if watchdog_interval() else []))
            if done.wait(every):
                return

    keeper = threading.Thread(target=keep, name="start-keeper", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        done.set()
        keeper.join()
