"""Event-driven waits for the two polling loops of each accepted association (pynetdicom 3.0).

pynetdicom runs every association as two threads that poll: the association reactor sleeps
1 ms between looks at its DIMSE message queue, and the DUL reactor sleeps 1 ms between
looks at its socket and its outgoing queue. On this hardware such a sleep returns after
1.2-2.5 ms, so every C-STORE waits several of them, and an association that is merely open
(VE-03 lets a modality keep one open for a whole exam) costs about 12 % of a core.

We keep pynetdicom's loops and change only how their threads wait, and only for the
associations our listeners accept: the association thread waits on its DIMSE queue, the DUL
thread waits in select() on its socket and on a pipe that every outgoing primitive rings.
Both wake at once when there is work and otherwise look at their timers every `IDLE_WAIT`
(ARTIM, idle timeout, abort and release are therefore noticed within that time).

pynetdicom has no hook for this; `install` replaces the `time` module the two loops sleep
through with `_Clock`, which behaves exactly like `time` for every other thread and call.
"""

from __future__ import annotations

import os
import queue
import select
import threading
import time
import weakref

from pynetdicom import association as pynetdicom_association
from pynetdicom import dul as pynetdicom_dul

IDLE_WAIT = 0.02  # seconds between timer checks of an association with nothing to do
_REACTOR_POLL = 0.001  # the association reactor's hard-coded poll (association.py)


class _Clock:
    """Stands in for `time` inside pynetdicom.association and pynetdicom.dul."""

    def __init__(self):
        self.waits: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # thread -> wait

    def sleep(self, seconds: float) -> None:
        wait = self.waits.get(threading.current_thread())
        (wait or time.sleep)(seconds)

    def __getattr__(self, name: str):
        return getattr(time, name)


_clock = _Clock()


def install() -> None:
    for module in (pynetdicom_association, pynetdicom_dul):
        if getattr(module, "time", None) not in (time, _clock):
            raise RuntimeError(f"{module.__name__} no longer sleeps through the time module")
        module.time = _clock


class _RingingQueue(queue.Queue):
    """The DUL's outgoing queue: a put also wakes the DUL thread."""

    def __init__(self, bell: int):
        super().__init__()
        self._bell = bell

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        try:
            os.write(self._bell, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of rings: the DUL thread is awake anyway


def attach(assoc) -> None:
    """EVT_CONN_OPEN (before the threads start): make this association's loops event-driven."""
    dul = assoc.dul
    listen, bell = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    weakref.finalize(dul, _close, listen, bell)
    dul.to_provider_queue = _RingingQueue(bell)  # still empty: nothing was sent yet
    sock = dul.socket.socket
    messages = assoc.dimse.msg_queue

    def dul_wait(seconds: float) -> None:
        if not dul.to_provider_queue.empty():
            return
        try:
            ready, _, _ = select.select([sock, listen], [], [], IDLE_WAIT)
        except (OSError, ValueError):  # the socket was closed under us: plain sleep
            time.sleep(seconds)
            return
        if listen in ready:
            try:
                while os.read(listen, 4096):
                    pass
            except BlockingIOError:
                pass

    def association_wait(seconds: float) -> None:
        if seconds != _REACTOR_POLL:  # other waits in association.py keep their meaning
            time.sleep(seconds)
            return
        with messages.not_empty:
            if not messages._qsize():  # Queue's own size hook; qsize() would re-take the lock
                messages.not_empty.wait(IDLE_WAIT)

    _clock.waits[dul] = dul_wait
    _clock.waits[assoc] = association_wait


def _close(*fds: int) -> None:
    for fd in fds:
        os.close(fd)
