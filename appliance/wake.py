"""A wake-up for a thread waiting in select(): a socket pair, safe to ring from a signal handler.

The daemon's main loop is woken by SIGTERM/SIGHUP and by the control socket's thread. A
threading.Event cannot serve there: a Python signal handler runs in the main thread between two
bytecodes, possibly while that thread holds the Event's own lock inside Event.wait(), and its
Event.set() then waits for that lock forever (seen: a SIGTERM hung the service about once in 70
starts under load). Ringing is a non-blocking send, which takes no lock. A signal the kernel
delivers to another thread does not interrupt the main thread's wait, so the Python handler would
only run once the wait ends: `wake_on_signals` also has the C-level handler write to the pair.
"""

from __future__ import annotations

import select
import signal
import socket


class Wake:
    def __init__(self):
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)

    def fileno(self) -> int:
        """For select() beside other sockets, by a waiter that ends once rung."""
        return self._read.fileno()

    @property
    def closed(self) -> bool:
        return self._write.fileno() == -1

    def wake_on_signals(self) -> None:
        """Every signal with a Python handler also rings (main thread only)."""
        signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)

    def ring(self) -> None:
        try:
            self._write.send(b"\0")
        except BlockingIOError:
            pass  # the pair is full of wake-ups not yet taken: the waiter wakes anyway

    def wait(self, timeout: float | None) -> None:
        """Until rung (a ring since the last wait counts) or `timeout` seconds pass."""
        select.select([self._read], [], [], timeout)
        self._clear()

    def _clear(self) -> None:
        try:
            while self._read.recv(4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        self._read.close()
        self._write.close()
