"""STORAGE-SCP's Storage Commitment Push Model SCP: N-ACTION in, decision kept, answer out.

The N-ACTION-RQ is validated in the conformance statement's terms (0123, 0120, 0121, 0110;
SC-01..SC-05), decided and stored by `appliance.commitment` before the N-ACTION-RSP 0000
goes out (SC-02, SC-24); the N-EVENT-REPORT follows, on this association (SC-11, through
`commitment_reports`) or over a new one (`commitment.Reporter`).
"""

from __future__ import annotations

import logging
import time

from io import BytesIO

from peewee import DatabaseError
from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode

from appliance.codes import status, uids
from appliance.commitment import Report
from appliance.dicom import dimse
from appliance.dicom.dimse import Message
from appliance.errors import DicomStatusError
from appliance.log import alert

log = logging.getLogger("appliance.commitment")

REQUEST_STORAGE_COMMITMENT = 1  # Action Type ID (PS3.4 J.3.2)
_TRANSACTION_UID = 0x00081195
_REFERENCED_SOP_SEQUENCE = 0x00081199
_REFERENCED_CLASS = 0x00081150
_REFERENCED_INSTANCE = 0x00081155


class CommitmentSCP:
    def __init__(self, services):
        self.services = services  # server.Services: commitments, the reporter and its sender

    def on_action(self, association, message: Message) -> None:
        report = self._decide(association, message)
        if report is None:
            return
        reporter = self.services.reporter
        if reporter.on_same_association:  # SC-11: the report follows on this association
            reporter.on_association(report, lambda: self.services.report_sender.on_association(
                association, message.context_id, report))
        else:
            reporter.wake()

    def _decide(self, association, message: Message) -> Report | None:
        """Validate, decide, keep and answer the N-ACTION; the report to send after its
        N-ACTION-RSP 0000, None when it was refused."""
        session = association.session
        request = message.command
        prefix = f"{session.prefix()}: N-ACTION #{request.message_id} (Storage Commitment)"
        action_type = request.us(dimse.ACTION_TYPE)
        try:
            if action_type != REQUEST_STORAGE_COMMITMENT:  # SC-01
                raise DicomStatusError(status.NO_SUCH_ACTION,
                                       f"Action Type ID {action_type} is not 1 (Request Storage Commitment)")
            transaction_uid, references = parse(_action_information(message, association.accepted[message.context_id][1]))
        except DicomStatusError as exc:  # SC-03..SC-05: the requester's mistake; UL-05: the reason goes back
            log.warning("%s status 0x%04X: %s", prefix, exc.status, exc.why)
            association.respond(message, exc.status, comment=exc.why)
            return None
        started = time.monotonic()
        try:
            report = self.services.commitments.accept(transaction_uid, references, session.title,
                                                      held=self.services.reporter.on_same_association)
        except (DatabaseError, OSError, MemoryError) as exc:  # SC-03
            why = f"the request cannot be kept: {type(exc).__name__}: {exc}"
            alert(log, "%s transaction %s status 0x%04X: %s", prefix, transaction_uid, status.PROCESSING_FAILURE, why)
            association.respond(message, status.PROCESSING_FAILURE, comment=why)
            return None
        log.info("%s transaction %s: %d instances, %d committed, %d not (%s), decided and kept in %.0f ms, "
                 "status 0x0000", prefix, transaction_uid, len(references), len(report.committed), len(report.failed),
                 _reasons(report), (time.monotonic() - started) * 1000)
        association.respond(message, status.SUCCESS, extra={dimse.ACTION_TYPE: dimse.us(action_type)})
        return report


def _action_information(message: Message, syntax: str) -> Dataset:
    if message.data is None:
        raise DicomStatusError(status.MISSING_ATTRIBUTE, "the N-ACTION-RQ carries no Action Information")
    try:
        return decode(BytesIO(message.data), syntax == uids.IMPLICIT_LE, True)
    except Exception as exc:  # pydicom on bytes the peer sent
        raise DicomStatusError(status.PROCESSING_FAILURE, f"Action Information cannot be decoded: {exc}") from exc


def parse(information: Dataset) -> tuple[str, list[tuple[str, str]]]:
    """Transaction UID and (SOP class, SOP instance) references; DicomStatusError 0120 for an
    absent attribute, 0121 for an empty one (SC-04, SC-05), 0110 for one that cannot be read."""
    try:
        transaction_uid = _value(information, _TRANSACTION_UID, "Transaction UID")
        if _REFERENCED_SOP_SEQUENCE not in information:
            raise DicomStatusError(status.MISSING_ATTRIBUTE, "Referenced SOP Sequence is missing")
        items = information[_REFERENCED_SOP_SEQUENCE].value
        if not items:
            raise DicomStatusError(status.MISSING_ATTRIBUTE_VALUE, "Referenced SOP Sequence is empty")
        references = []
        for number, item in enumerate(items, start=1):
            where = f" in item {number} of the Referenced SOP Sequence"
            references.append((_value(item, _REFERENCED_CLASS, "Referenced SOP Class UID", where),
                               _value(item, _REFERENCED_INSTANCE, "Referenced SOP Instance UID", where)))
    except DicomStatusError:
        raise
    except Exception as exc:  # a value pydicom cannot convert, a sequence that is not one
        raise DicomStatusError(status.PROCESSING_FAILURE, f"Action Information cannot be read: {exc!s:.200}") from exc
    return transaction_uid, references


def _value(dataset: Dataset, tag: int, name: str, where: str = "") -> str:
    if tag not in dataset:
        raise DicomStatusError(status.MISSING_ATTRIBUTE, f"{name} is missing{where}")
    value = dataset[tag].value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    elif value is not None and not isinstance(value, str):  # a sequence, several values: never str() them
        raise DicomStatusError(status.PROCESSING_FAILURE, f"{name} is not a single text value{where}")
    text = (value or "").strip(" \0")
    if not text:
        raise DicomStatusError(status.MISSING_ATTRIBUTE_VALUE, f"{name} is empty{where}")
    return text


def _reasons(report: Report) -> str:
    counts: dict[int, int] = {}
    for _, _, reason in report.failed:
        counts[reason] = counts.get(reason, 0) + 1
    return ", ".join(f"{n} x 0x{reason:04X}" for reason, n in sorted(counts.items())) or "none failed"
