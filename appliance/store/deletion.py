"""`service-tool study delete`: a study, a series or an instance removed, rows and files together (MG-02).

Crash-safe in batches (files.py says how a removal is journaled): the batch's files get their
spool names, their rows go in one durable transaction, with the series, study and patient
rows left empty, and then the files. A kill -9 at any point leaves each instance either
wholly there or wholly gone. Something reading an instance meanwhile fails cleanly: a C-MOVE
sub-operation whose file went is a failed one (QM-12), a commitment decision finds no row
(0112) or no file (0110); a file already open is read to its end.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from appliance.store.catalog import NotFound, study_id
from appliance.store.db import Index
from appliance.store.files import StorageArea
from appliance.store.models import Instance, Patient, Series, Study

log = logging.getLogger("appliance.store")

BATCH = 500  # instances per transaction: bounds the spool and the time the index is held


@dataclass
class Deleted:
    """What a deletion removed."""

    study_instance_uid: str
    patient_id: str
    patient_name: str
    accession_number: str
    study_description: str
    instances: int = 0
    bytes: int = 0
    series_removed: int = 0
    study_removed: bool = False
    patient_removed: bool = False
    seconds: float = 0.0
    sop_classes: dict[str, int] = field(default_factory=dict)  # for the audit trail (AU-01)

    def describe(self) -> str:
        removed = [f"{self.series_removed} series"] + ["the study"] * self.study_removed \
            + ["the patient"] * self.patient_removed
        return (f"study {self.study_instance_uid} (patient {self.patient_id!r}): deleted {self.instances} instances, "
                f"{self.bytes} bytes freed; {', '.join(removed)} removed; {self.seconds} s")


def delete(index: Index, area: StorageArea, study_instance_uid: str, series_instance_uid: str = "",
           sop_instance_uid: str = "", forget_cached_rows: Callable[[], None] = lambda: None,
           patient_id: str = "") -> Deleted:
    """Remove the study (of `patient_id`, when its UID is filed under several patients), or one
    series or instance of it; NotFound when the index has no such thing. `forget_cached_rows`:
    called inside each transaction, for the ingest's row caches."""
    started = time.monotonic()
    study = (Study.select(Study.id, Study.study_instance_uid, Study.accession_number, Study.study_description,
                          Patient.id.alias("patient_row"), Patient.patient_id, Patient.last_name,
                          Patient.first_name)
             .join(Patient).where(Study.id == study_id(study_instance_uid, patient_id)).dicts().first())
    targets = (Instance.select(Instance.id, Instance.path, Instance.size, Instance.sop_class_uid, Instance.series)
               .join(Series).where(Series.study == study["id"]))
    if series_instance_uid:
        targets = targets.where(Series.series_instance_uid == series_instance_uid)
    if sop_instance_uid:
        targets = targets.where(Instance.sop_instance_uid == sop_instance_uid)
    rows = list(targets.tuples())
    if not rows:
        part = (f"series {series_instance_uid}" if series_instance_uid else f"instance {sop_instance_uid}")
        raise NotFound(f"no {part} in study {study_instance_uid}")
    first = study["first_name"]
    deleted = Deleted(study_instance_uid, study["patient_id"],
                      f"{study['last_name']}^{first}" if first else study["last_name"],
                      study["accession_number"], study["study_description"])
    classes: Counter[str] = Counter()
    for start in range(0, len(rows), BATCH):
        batch = rows[start:start + BATCH]
        retired = area.retire_all([path for _, path, _, _, _ in batch])
        try:
            with index.write():
                Instance.delete().where(Instance.id.in_([row[0] for row in batch])).execute()
                _remove_empty_parents(deleted, {row[4] for row in batch}, study["id"], study["patient_row"])
                index.rows_changed()  # other boxes sharing the index forget theirs (IX-02)
                forget_cached_rows()
        except BaseException:
            for entry in retired:
                entry.finish()  # the rows stay: so do their files
            raise
        area.remove_retired(retired)
        deleted.instances += len(batch)
        deleted.bytes += sum(row[2] for row in batch)
        classes.update(row[3] for row in batch)
    deleted.sop_classes = dict(classes)
    deleted.seconds = round(time.monotonic() - started, 3)
    return deleted


def _remove_empty_parents(deleted: Deleted, series_ids: set[int], study_id: int, patient_id: int) -> None:
    """Series, study and patient rows with nothing left under them go in the same transaction."""
    empty = [series for series in series_ids if not Instance.select().where(Instance.series == series).exists()]
    if empty:
        deleted.series_removed += Series.delete().where(Series.id.in_(empty)).execute()
    if not Series.select().where(Series.study == study_id).exists():
        Study.delete().where(Study.id == study_id).execute()  # its edit history goes with it (CASCADE)
        deleted.study_removed = True
        if not Study.select().where(Study.patient == patient_id).exists():
            Patient.delete().where(Patient.id == patient_id).execute()
            deleted.patient_removed = True

