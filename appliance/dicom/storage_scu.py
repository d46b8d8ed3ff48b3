"""STORAGE-SCU: sends the instances of one C-MOVE to its destination (SU-*, PC-08..PC-12).

One job is one association carrying every instance (SU-02), one C-STORE at a time (SU-16),
opened under STORAGE-SCU's own title with the Move Originator fields set (QM-02, QM-03). The
first failure ends the job (QM-11, SU-05, SU-08); the caller turns the outcome into C-MOVE
responses. At most `max_associations` jobs send at once; later ones wait for a slot (SU-03).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from appliance import __version__
from appliance.config.model import Config, RemoteAE
from appliance.codes import status, uids
from appliance.dicom import dimse
from appliance.dicom.pdu import Proposal
from appliance.dicom.requestor import Association, Failed, Local, tls_towards
from appliance.log import alert
from appliance.query.retrieve import Item
from appliance.store import export

log = logging.getLogger("appliance.storage_scu")

# SU-07 (D-2): C-STORE-RSP statuses that count as a sent instance with a warning.
WARNINGS = {0xB000, 0xB006, 0xB007, 0x0107, 0x0116}
# SU-09: each US class and its retired/current counterpart.
US_COUNTERPARTS = {uids.US_RETIRED: uids.US, uids.US: uids.US_RETIRED,
                   uids.US_MULTIFRAME_RETIRED: uids.US_MULTIFRAME, uids.US_MULTIFRAME: uids.US_MULTIFRAME_RETIRED}
_LOSSLESS_ALTERNATIVE = {uids.IMPLICIT_LE: uids.EXPLICIT_LE, uids.EXPLICIT_LE: uids.IMPLICIT_LE}  # PC-12
_MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: odd context IDs 1..255
_SLOT_CHECK = 0.5  # seconds between cancel checks while a job waits for a slot or a retry

_numbers = itertools.count(1)


@dataclass
class Job:
    destination: RemoteAE
    items: list[Item]
    originator_title: str  # QM-03: the C-MOVE requestor's calling AE title
    originator_message_id: int  # QM-03: the C-MOVE-RQ's Message ID
    cancelled: Callable[[], bool]
    sent: Callable[["Progress"], None]  # after every instance sent (QM-08)


@dataclass
class Progress:
    completed: int = 0
    warnings: int = 0
    remaining: int = 0
    failed_uids: list[str] = field(default_factory=list)  # failed and not attempted (QM-11)
    cancelled: bool = False
    failure: str = ""  # why the job stopped early, for the log


class StorageSCU:
    """One per daemon, kept across reloads: running jobs keep their slots under a new limit.
    `configure` must be called before the first export."""

    def __init__(self, store_root: Path):
        self.store_root = store_root
        self.slots = _Slots()

    def configure(self, config: Config) -> None:
        """Settings for the jobs that start from now on (a reload)."""
        self.settings = config.storage_scu
        self.config = config  # the TLS files, for destinations with tls = true (SE-10)
        # What STORAGE-SCP accepts in JPEG Baseline (PC-02) must go back out in it: JPEG is
        # never decompressed (SU-12 is not built).
        self.jpeg_classes = config.storage_scp.jpeg_sop_classes
        self.timeouts = config.timeouts
        self.local = Local(self.settings.ae_title.strip(), self.settings.max_pdu_size, config.network.max_pdu_send,
                           config.network.socket_buffer_size, uids.IMPLEMENTATION_UID_QR_SCU,
                           uids.implementation_version_name(__version__))
        self.slots.resize(self.settings.max_associations)

    def export(self, job: Job) -> Progress:
        progress = Progress(remaining=len(job.items))
        if not job.items:
            return progress  # QM-16: nothing to send, no association
        destination = job.destination
        prefix = (f"STORAGE-SCU #{next(_numbers)} {self.local.title}->{destination.ae_title}"
                  f"@{destination.host}:{destination.port}")
        if not self.slots.take(job.cancelled, lambda: log.info(
                "%s: waiting for a free export association (storage_scu.max_associations %d)", prefix,
                self.settings.max_associations)):
            progress.cancelled = True
            return progress
        try:
            return self._export(job, progress, prefix)
        finally:
            self.slots.give()

    def _export(self, job: Job, progress: Progress, prefix: str) -> Progress:
        started = time.monotonic()
        proposals = self.proposals(job.items)
        try:
            association = self._open(job, proposals, prefix)
        except Failed as exc:
            return self._failed(progress, job.items, 0, f"no association: {exc}", prefix)
        if association is None:
            progress.cancelled = True
            return progress
        log.info("%s: association accepted (%d of %d presentation contexts) for %s C-MOVE #%d, %d instances",
                 prefix, len(association.accepted), len(proposals), job.originator_title,
                 job.originator_message_id, len(job.items))
        sent_bytes = 0
        ready = self._prepare(association, job.items[0])
        report = _Once()  # the last instance's log line and Pending (QM-08)
        for index, item in enumerate(job.items):
            if job.cancelled():
                report()
                association.release_quietly()
                progress.cancelled = True
                log.info("%s: cancelled by %s after %d instances", prefix, job.originator_title, index)
                return progress
            message_id = index % 0xFFFF + 1  # a US: a move of more instances wraps round
            try:
                current = ready.get()
                size = self._send(association, message_id, item, current, job)
                # While the destination stores this instance: with one operation at a time
                # (SU-16) whatever is done between an answer and the next request leaves the
                # link idle, so the last one is reported and the next one read from here.
                report()
                if index + 1 < len(job.items):
                    ready = self._prepare(association, job.items[index + 1])
                code = self._answer(association, message_id, item)
            except (Failed, export.Unreadable) as exc:
                report()
                association.abort()
                return self._failed(progress, job.items, index, str(exc), prefix)
            if code not in WARNINGS and code != status.SUCCESS:  # SU-08
                self._log_store(prefix, item, current, code)
                association.release_quietly()
                return self._failed(progress, job.items, index,
                                    f"the destination answered C-STORE status 0x{code:04X} to {item.sop_instance_uid}",
                                    prefix)
            sent_bytes += size
            progress.completed += 1
            progress.warnings += code in WARNINGS
            progress.remaining -= 1
            report = _Once(self._log_store, prefix, item, current, code)
            report.then(job.sent, progress)
        report()
        association.release_quietly()
        elapsed = max(time.monotonic() - started, 1e-6)
        log.info("%s: association released; %d instances sent (%d with warnings), %d bytes in %.2f s (%.1f MB/s)",
                 prefix, progress.completed, progress.warnings, sent_bytes, elapsed, sent_bytes / elapsed / 1e6)
        return progress

    def proposals(self, items: list[Item]) -> list[Proposal]:
        """PC-08..PC-11: the classes of the move set (and their US counterparts, SU-09) that
        STORAGE-SCU may send, each with the transfer syntaxes of its matrix: one context per
        syntax ("single"), or one per class with all of them ("multiple")."""
        allowed = self.settings.sop_classes
        classes: list[str] = []
        stored: dict[str, list[str]] = {}
        for item in items:
            candidates = [item.sop_class_uid]
            if self.settings.us_conversion and item.sop_class_uid in US_COUNTERPARTS:
                candidates.append(US_COUNTERPARTS[item.sop_class_uid])
            for sop_class in candidates:
                if sop_class in allowed and sop_class not in classes:
                    classes.append(sop_class)
                syntaxes = stored.setdefault(sop_class, [])
                if item.transfer_syntax_uid not in syntaxes:
                    syntaxes.append(item.transfer_syntax_uid)
        groups = []
        for sop_class in classes:
            matrix = [uids.EXPLICIT_LE, uids.IMPLICIT_LE]
            if sop_class in self.jpeg_classes:
                matrix.insert(0, uids.JPEG_BASELINE)
            # The syntaxes actually stored first: in "multiple" mode the destination picks the
            # first one it supports.
            ordered = [ts for ts in stored[sop_class] if ts in matrix] + [ts for ts in matrix
                                                                          if ts not in stored[sop_class]]
            if self.settings.context_mode == "single":
                groups.extend((sop_class, (ts,)) for ts in ordered)
            else:
                groups.append((sop_class, tuple(ordered)))
        return [Proposal(2 * i + 1, sop_class, syntaxes) for i, (sop_class, syntaxes) in enumerate(groups)]

    def _open(self, job: Job, proposals: list[Proposal], prefix: str) -> Association | None:
        """SU-04: the association, after up to `open_retries` more attempts; None if cancelled."""
        if not proposals:
            raise Failed("STORAGE-SCU may send none of the SOP classes to be moved (storage_scu.sop_classes)")
        if len(proposals) > _MAX_CONTEXTS:
            raise Failed(f"{len(proposals)} presentation contexts needed, more than one association carries (SU-02)")
        destination = job.destination
        attempts = self.settings.open_retries + 1
        attempt = 1
        while True:
            try:
                association = Association.request(destination.host, destination.port, destination.ae_title,
                                                  self.local, proposals, self.timeouts,
                                                  tls_towards(destination, self.config), destination.tls_subject)
                if not association.accepted:
                    association.release_quietly()
                    raise Failed(f"{destination.ae_title} accepted none of the {len(proposals)} presentation contexts")
                return association
            except Failed as exc:
                if attempt == attempts:
                    raise
                log.warning("%s: attempt %d of %d failed (%s); next in %g s (storage_scu.open_retry_delay)", prefix,
                            attempt, attempts, exc, self.settings.open_retry_delay)
            deadline = time.monotonic() + self.settings.open_retry_delay
            while (left := deadline - time.monotonic()) > 0:
                if job.cancelled():
                    return None
                time.sleep(min(_SLOT_CHECK, left))
            attempt += 1

    def _prepare(self, association: Association, item: Item) -> "_Ready":
        """The context and the outgoing data set of `item`, or the failure to raise at its turn."""
        try:
            context_id, send_class, send_syntax = self._context(association, item)
            outgoing = export.prepare(self.store_root / item.path, item.transfer_syntax_uid, item.index_values,
                                      send_class, send_syntax)
            return _Ready(_Prepared(context_id, send_class, send_syntax, outgoing))
        except (Failed, export.Unreadable) as exc:
            return _Ready(error=exc)

    @staticmethod
    def _send(association: Association, message_id: int, item: Item, prepared: "_Prepared", job: Job) -> int:
        """The C-STORE-RQ with the Move Originator fields (QM-03) and its data set; its size."""
        command = dimse.store_request(message_id, prepared.send_class, item.sop_instance_uid,
                                              job.originator_title, job.originator_message_id)
        outgoing = prepared.outgoing
        if not outgoing.as_stored:
            data = outgoing.rebuilt()
            association.send_bytes_message(prepared.context_id, command, data)
            return len(data)
        try:
            fd = os.open(outgoing.path, os.O_RDONLY)
            try:
                association.send_message(prepared.context_id, command, fd, outgoing.offset, outgoing.length)
            finally:
                os.close(fd)
        except OSError as exc:  # the file: the socket's errors are Failed already
            raise export.Unreadable(f"stored file {outgoing.path.name} cannot be read: {exc}") from exc
        return outgoing.length

    def _answer(self, association: Association, message_id: int, item: Item) -> int:
        """The status of the C-STORE-RSP to `message_id` (SU-06..SU-08)."""
        answer = association.receive_command(self.settings.dimse_timeout, "C-STORE-RSP", "storage_scu.dimse_timeout")
        code = answer.us(dimse.STATUS)
        if (answer.field, answer.message_id) != (dimse.C_STORE_RQ | dimse.RESPONSE, message_id) \
                or code is None:
            raise Failed(f"the destination answered with something other than a C-STORE-RSP with a status for "
                         f"message {message_id} ({item.sop_instance_uid})")
        return code

    @staticmethod
    def _log_store(prefix: str, item: Item, prepared: "_Prepared", code: int) -> None:
        level = logging.INFO if code == status.SUCCESS else logging.WARNING if code in WARNINGS else logging.ERROR
        notes = []
        if prepared.send_class != item.sop_class_uid:
            notes.append(f"sent as class {prepared.send_class} (SU-09)")
        if prepared.send_syntax != item.transfer_syntax_uid:
            notes.append(f"converted to {prepared.send_syntax}")
        if prepared.outgoing.changed:
            notes.append("index values applied: " + ", ".join(prepared.outgoing.changed))
        log.log(level, "%s: C-STORE %s status 0x%04X%s", prefix, item.sop_instance_uid, code,
                "; " + "; ".join(notes) if notes else "")

    def _context(self, association: Association, item: Item) -> tuple[int, str, str]:
        """PC-12 and SU-09: (context ID, class, syntax) to send `item` with; Failed if none fits."""
        classes = [item.sop_class_uid]
        if self.settings.us_conversion and item.sop_class_uid in US_COUNTERPARTS:
            classes.append(US_COUNTERPARTS[item.sop_class_uid])
        stored = item.transfer_syntax_uid
        for sop_class in classes:
            for syntax in (stored, _LOSSLESS_ALTERNATIVE.get(stored)):
                for context_id, accepted in association.accepted.items():
                    if accepted == (sop_class, syntax):
                        return context_id, sop_class, syntax
        raise Failed(f"the destination accepted no presentation context for class {item.sop_class_uid} in {stored} "
                     f"or a lossless alternative ({item.sop_instance_uid})")

    @staticmethod
    def _failed(progress: Progress, items: list[Item], index: int, why: str, prefix: str) -> Progress:
        """QM-11/QM-12: the failed instance and every one not attempted count as failed."""
        progress.failed_uids = [item.sop_instance_uid for item in items[index:]]
        progress.remaining = 0
        progress.failure = why
        alert(log, "%s: export stopped after %d of %d instances: %s", prefix, index, len(items), why)
        return progress


class _Once:
    """Calls queued for later, run at the first call of the object and never again."""

    def __init__(self, *call):
        self.calls = [call] if call else []

    def then(self, *call) -> None:
        self.calls.append(call)

    def __call__(self) -> None:
        calls, self.calls = self.calls, []
        for function, *args in calls:
            function(*args)


@dataclass(frozen=True)
class _Prepared:
    context_id: int
    send_class: str
    send_syntax: str
    outgoing: export.Outgoing


@dataclass(frozen=True)
class _Ready:
    """A prepared instance, or why it cannot be sent (raised when its turn comes, not before)."""

    prepared: _Prepared | None = None
    error: Exception | None = None

    def get(self) -> _Prepared:
        if self.error is not None:
            raise self.error
        return self.prepared


class _Slots:
    """SU-03: at most `limit` jobs send at once; the others wait, in no particular order."""

    def __init__(self):
        self.limit = 0
        self.used = 0
        self.changed = threading.Condition()

    def resize(self, limit: int) -> None:
        with self.changed:
            self.limit = limit
            self.changed.notify_all()

    def take(self, cancelled: Callable[[], bool], waiting: Callable[[], None]) -> bool:
        """A slot, after calling `waiting` once if there is none free; False if cancelled first."""
        with self.changed:
            if self.used >= self.limit:
                waiting()
            while self.used >= self.limit:
                if cancelled():
                    return False
                self.changed.wait(_SLOT_CHECK)
            self.used += 1
            return True

    def give(self) -> None:
        with self.changed:
            self.used -= 1
            self.changed.notify()
