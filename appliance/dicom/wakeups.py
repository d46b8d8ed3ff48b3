"""Event-driven waits for the two polling loops of each accepted association (pynetdicom 3.0).

pynetdicom runs every association as two threads that poll: the association reactor sleeps
1 ms between looks at its DIMSE message queue, and the DUL reactor sleeps 1 ms between
looks at its socket and its outgoing queue. On this hardware such a sleep returns after
1.2-2.5 ms, so every C-STORE waits several of them, and an association that is merely open
(VE-03 lets a modality keep one open for a whole exam) costs about 12 % of a core.

We keep pynetdicom's loops and change only how their threads wait, and only for the
associations our listeners accept: the association thread waits on its DIMSE queue, which
every primitive from the DUL (release, abort) also notifies; the DUL thread waits in select()
on its socket and on an eventfd that every outgoing primitive rings. Both wake at once when
there is work and otherwise look at their timers every `IDLE_WAIT` (ARTIM and the idle
timeout are therefore noticed within that time).

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


class _Bell:
    """An eventfd that other threads ring to wake the DUL thread out of its wait.

    Closed by the DUL thread itself when its loop ends, so the number is never waited on or
    read after it may have been reused; a ring after that is ignored."""

    def __init__(self):
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._lock = threading.Lock()

    def ring(self) -> None:
        with self._lock:
            if self.fd >= 0:
                os.eventfd_write(self.fd, 1)

    def silence(self) -> None:
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass

    def close(self) -> None:
        with self._lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


class _RingingQueue(queue.Queue):
    """The DUL's outgoing queue: a put also wakes the DUL thread."""

    def __init__(self, bell: _Bell):
        super().__init__()
        self._bell = bell

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._bell.ring()


class _NotifyingQueue(queue.Queue):
    """The DUL's queue to the association thread (A-RELEASE-RQ, A-ABORT, …): a put also wakes
    the association thread, which otherwise waits on its DIMSE queue only and would notice a
    release request up to IDLE_WAIT late (20 ms per association)."""

    def __init__(self, wake: threading.Condition):
        super().__init__()
        self._wake = wake

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        with self._wake:
            self._wake.notify_all()


def attach(assoc) -> None:
    """EVT_CONN_OPEN (before the threads start): make this association's loops event-driven.

    The wait functions must not refer to `dul` or `assoc`: they are the values of weak-keyed
    maps keyed by those objects, and a reference back would keep both alive for ever."""
    dul = assoc.dul
    bell = _Bell()
    outgoing = dul.to_provider_queue = _RingingQueue(bell)  # both still empty: nothing moved yet
    messages = assoc.dimse.msg_queue
    incoming = dul.to_user_queue = _NotifyingQueue(messages.not_empty)
    sock = dul.socket.socket

    def dul_wait(seconds: float) -> None:
        if not outgoing.empty():
            return
        try:
            ready, _, _ = select.select([sock, bell.fd], [], [], IDLE_WAIT)
        except (OSError, ValueError):  # the socket was closed under us: plain sleep
            time.sleep(seconds)
            return
        if bell.fd in ready:
            bell.silence()

    def association_wait(seconds: float) -> None:
        if seconds != _REACTOR_POLL:  # other waits in association.py keep their meaning
            time.sleep(seconds)
            return
        with messages.not_empty:
            # Queue's own size hook; qsize() would re-take the lock. Checked under the lock
            # that `incoming` notifies through, so no wake-up is lost.
            if not messages._qsize() and not incoming._qsize():
                messages.not_empty.wait(IDLE_WAIT)

    run = dul.run

    def run_then_close() -> None:  # Thread.run of the DUL: its loop, then the bell goes
        try:
            run()
        finally:
            bell.close()

    dul.run = run_then_close
    weakref.finalize(dul, bell.close)  # a DUL thread that never started
    _clock.waits[dul] = dul_wait
    _clock.waits[assoc] = association_wait
