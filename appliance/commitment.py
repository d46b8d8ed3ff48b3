"""Storage Commitment: what the archive commits to, decided once, kept until reported (SC-*).

A request is decided the moment it arrives (SC-06, SC-07): an instance is committed when the
index holds it under the referenced SOP class, its class is one commitment covers (SC-10),
and its stored file still names it (read again here, so a file lost since it was stored is
not promised). The decision is committed to the index before the N-ACTION-RSP is sent, so
an acknowledged request is reported even after a crash or restart (SC-24); the row goes when
the report has been delivered or abandoned.
"""

from __future__ import annotations

import datetime
import json
import time
from dataclasses import dataclass
from pathlib import Path

from peewee import fn

from appliance.codes import status, uids
from appliance.store.db import Index
from appliance.store.header import Unparseable, read_header
from appliance.store.models import CommitmentRequest, Instance

COMMITTABLE_CLASSES = frozenset(uids.DEFAULT_STORAGE_CLASSES)  # SC-10: the 8 storage classes


@dataclass
class Report:
    """The content of one N-EVENT-REPORT (SC-08), and where it goes."""

    id: int  # of its CommitmentRequest row
    transaction_uid: str
    requester: str
    committed: list[tuple[str, str]]  # (SOP class, SOP instance)
    failed: list[tuple[str, str, int]]  # (SOP class, SOP instance, failure reason)
    attempts: int = 0

    @property
    def event_type(self) -> int:
        return 1 if not self.failed else 2  # PS3.4 J.3.3: 1 all committed, 2 failures exist


class Commitments:
    """Decides and keeps commitment requests. One per daemon; safe from association threads."""

    def __init__(self, index: Index, store_root: Path):
        self.index = index
        self.store_root = store_root

    def accept(self, transaction_uid: str, references: list[tuple[str, str]], requester: str,
               held: bool) -> Report:
        """Decide every reference now and keep the result; raises peewee's DatabaseError (and
        OSError) when it cannot be kept, which the caller answers with 0110 (SC-03). `held`:
        the N-ACTION's association will try to deliver it first (SC-11); else it is due now."""
        committed, failed = [], []
        for sop_class, sop_instance in references:
            reason = self._failure(sop_class, sop_instance)
            if reason is None:
                committed.append((sop_class, sop_instance))
            else:
                failed.append((sop_class, sop_instance, reason))
        with self.index.write():
            row = CommitmentRequest.create(
                transaction_uid=transaction_uid, requester=requester,
                received_at=datetime.datetime.now(datetime.timezone.utc), committed=json.dumps(committed),
                failed=json.dumps(failed), next_attempt=None if held else time.time())
        return Report(row.id, transaction_uid, requester, committed, failed)

    def _failure(self, sop_class: str, sop_instance: str) -> int | None:
        """None if committed, else the Failure Reason (SC-08)."""
        if sop_class not in COMMITTABLE_CLASSES:
            return status.SOP_CLASS_NOT_SUPPORTED
        found = Instance.select(Instance.sop_class_uid, Instance.file_sop_instance_uid, Instance.path,
                                Instance.transfer_syntax_uid).where(
            Instance.sop_instance_uid == sop_instance).tuples().first()
        if found is None:
            return status.NO_SUCH_OBJECT_INSTANCE
        indexed_class, file_instance, path, syntax = found
        if indexed_class != sop_class:
            return status.CLASS_INSTANCE_CONFLICT
        try:
            header = read_header(self.store_root / path, syntax == uids.IMPLICIT_LE)
        except (OSError, Unparseable):
            return status.PROCESSING_FAILURE
        if (header.text(0x00080016), header.text(0x00080018)) != (indexed_class, file_instance):
            return status.PROCESSING_FAILURE
        return None

    # --- what the reporter reads and records ----------------------------------------------

    def recover(self) -> int:
        """At start: reports an association was holding when the service stopped are due now."""
        with self.index.write():
            return CommitmentRequest.update(next_attempt=time.time()).where(
                CommitmentRequest.next_attempt.is_null()).execute()

    def due(self, now: float) -> list[Report]:
        """Reports waiting for a new association whose time has come, oldest first."""
        rows = CommitmentRequest.select().where(CommitmentRequest.next_attempt <= now).order_by(
            CommitmentRequest.id)
        return [_report(row) for row in rows]

    def next_due(self) -> float | None:
        return CommitmentRequest.select(fn.MIN(CommitmentRequest.next_attempt)).scalar()

    def done(self, report: Report) -> None:
        """Delivered, or abandoned: nothing more to do for it."""
        with self.index.write():
            CommitmentRequest.delete().where(CommitmentRequest.id == report.id).execute()

    def postpone(self, report: Report, attempts: int, until: float) -> None:
        """A failed delivery (`attempts` counts it, SC-20) or a move to a new association."""
        with self.index.write():
            CommitmentRequest.update(attempts=attempts, next_attempt=until).where(
                CommitmentRequest.id == report.id).execute()

    def postpone_peer(self, requester: str, until: float) -> None:
        """Every report for `requester` waiting for a new association: not before `until`."""
        with self.index.write():
            CommitmentRequest.update(next_attempt=until).where(
                (CommitmentRequest.requester == requester) & CommitmentRequest.next_attempt.is_null(False)
                & (CommitmentRequest.next_attempt < until)).execute()

def _report(row: CommitmentRequest) -> Report:
    return Report(row.id, row.transaction_uid, row.requester, [tuple(r) for r in json.loads(row.committed)],
                  [tuple(r) for r in json.loads(row.failed)], row.attempts)
