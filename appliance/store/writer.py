"""The C-STORE pipeline's index writes, run by one thread, several per transaction.

Each association thread hands its instance's index work here and meanwhile flushes the
instance's file; the work waits for nothing but the thread. When several associations store
at once, every job queued by the time a transaction starts goes into it, so one WAL flush
commits them all (group commit). Each job runs in its own savepoint: one that fails (a
constraint, a bug) is rolled back alone and fails only its own instance.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Callable

from appliance.store.db import Index

log = logging.getLogger(__name__)

_MAX_BATCH = 64  # jobs per transaction


class Job:
    def __init__(self, work: Callable[[], Any]):
        self.work = work
        self.value: Any = None
        self.error: BaseException | None = None
        self._done = threading.Event()

    def result(self) -> Any:
        """The work's return value once its transaction is committed; its exception (or the
        commit's) re-raised."""
        self._done.wait()
        if self.error is not None:
            raise self.error
        return self.value


class IndexWriter:
    def __init__(self, index: Index, on_rollback: Callable[[], None]):
        """`on_rollback` is called (in the writer's thread) after any job or transaction was
        rolled back: caches of row ids may name rows that are not there."""
        self.index = index
        self.on_rollback = on_rollback
        self._queue: collections.deque[Job] = collections.deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="index-writer", daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[], Any]) -> Job:
        job = Job(work)
        with self._wake:
            if self._stopping:
                job.error = RuntimeError("the index is closing")
                job._done.set()
                return job
            self._queue.append(job)
            self._wake.notify()
        return job

    def run(self, work: Callable[[], Any]) -> Any:
        return self.submit(work).result()

    def stop(self) -> None:
        """Commit what is queued, then end the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(30)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._stopping:
                    self._wake.wait()
                if not self._queue:
                    return
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), _MAX_BATCH))]
            self._commit(batch)

    def _commit(self, batch: list[Job]) -> None:
        rolled_back = False
        try:
            with self.index.write():
                for job in batch:
                    try:
                        with self.index.db.atomic():  # a savepoint
                            job.value = job.work()
                    except Exception as exc:
                        job.error = exc
                        rolled_back = True
        except Exception as exc:  # the commit (or BEGIN) failed: nothing of the batch is kept
            log.error("index transaction of %d instances failed: %s: %s", len(batch), type(exc).__name__, exc)
            for job in batch:
                job.error = job.error or exc
            rolled_back = True
        if rolled_back:
            self.on_rollback()
        for job in batch:
            job._done.set()
