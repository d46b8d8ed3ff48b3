"""A small archive with the edge cases of C-FIND matching, stored through the real STORAGE-SCP.

Labels name studies (S1..), series (S1.1..) and instances (S1.1.1..); tests compare sets of
labels, so a failure says which entity was found or missed. UIDs are derived from the labels.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import datasets
import scu
from peewee import chunked

from appliance.store.db import open_index
from appliance.store import coercion, models

ROOT = "1.2.826.0.1.3680043.9.7433"  # test UIDs only


def uid(label: str) -> str:
    """S1 -> ROOT.1, S1.2 -> ROOT.1.2, S1.2.3 -> ROOT.1.2.3"""
    return f"{ROOT}.{label[1:]}"


def label(uid_value: str) -> str:
    return "S" + uid_value[len(ROOT) + 1:]


@dataclass(frozen=True)
class Patient:
    name: str
    id: str
    birth_date: str
    sex: str
    charset: str | None = None


DOE_JOHN = Patient("Doe^John", "PID-1", "19700101", "M")
DOE_JANE = Patient("DOE^JANE", "PID-2", "19800202", "F")
MULLER = Patient("Müller^Hans", "PID-3", "19600303", "M", "ISO_IR 100")
DOERING = Patient("Doering", "PID-4", "19900404", "X")  # no first name; sex X is indexed as U (EL-09)
PERCENT = Patient("Per%cent^Under_Score", "PID%5", "", "O")
GREEK = Patient("Παπαδόπουλος^Νίκος", "PID-6", "19500505", "M", "ISO_IR 192")  # CS-04

# label: (patient, study date, study time, accession, study id, referring, description,
#         [(modality, series number, [instance numbers])])
STUDIES = {
    "S1": (DOE_JOHN, "20240101", "083000", "ACC-1", "1", "Smith^Anna", "CT CHEST",
           [("CT", "1", ["1", "2"]), ("CT", "2", ["1"])]),
    "S2": (DOE_JOHN, "20240315", "1430", "ACC%2", "2", "Jones^Bob", "MR_HEAD", [("MR", "1", ["10"])]),
    "S3": (DOE_JANE, "20230701", "103000.5", "ACC_3", "3", "smith^anna", "ct chest", [("CT", "11", ["1"])]),
    "S4": (MULLER, "20220202", "235959", "ACC[4]", "4", "Meier^Jürgen", "Lunge", [("CR", "1", ["1"])]),
    "S5": (DOERING, "20240101", "000000", "ACC-5", "5", "", "CT CHEST", [("CT", "1", ["1"])]),
    "S6": (PERCENT, "20210101", "120000", "ACC-6", "6", "", "", [("OT", "1", ["1"])]),
    "S7": (GREEK, "20200101", "120000", "ACC-7", "7", "", "Θώρακας", [("CT", "1", ["1"])]),
}


def instances() -> dict[str, object]:
    """label -> pydicom dataset, one per instance of STUDIES."""
    made = {}
    for study, (patient, date, time, accession, study_id, referring, description, series) in STUDIES.items():
        for s, (modality, series_number, numbers) in enumerate(series, start=1):
            for i, number in enumerate(numbers, start=1):
                name = f"{study}.{s}.{i}"
                made[name] = datasets.image(
                    sop_class=datasets.CT, rows=8, columns=8, patient_name=patient.name, patient_id=patient.id,
                    study_uid=uid(study), series_uid=uid(f"{study}.{s}"), sop_instance_uid=uid(name),
                    charset=patient.charset, PatientBirthDate=patient.birth_date, PatientSex=patient.sex,
                    StudyDate=date, StudyTime=time, AccessionNumber=accession, StudyID=study_id,
                    ReferringPhysicianName=referring, StudyDescription=description, Modality=modality,
                    SeriesNumber=series_number, InstanceNumber=number, OperatorsName="Op^Erator",
                    OtherPatientIDs="OTHER-" + patient.id)
    return made


def populate(app, directory: Path) -> None:
    """Store every instance through the appliance's STORAGE-SCP (all must answer 0x0000)."""
    directory.mkdir(parents=True, exist_ok=True)
    with scu.association(app.storage_port, app.storage_title) as assoc:
        for name, ds in instances().items():
            status = scu.send_file(assoc, datasets.write(ds, directory / f"{name}.dcm"))
            assert status == 0, f"{name}: C-STORE status 0x{status:04X}"


def fill_index(app, instances: int) -> None:
    """Study S100 (patient MANY, series S100.1) with `instances` rows written straight into the
    stopped appliance's index, as bench/find.py does: storing that many through C-STORE would
    take minutes. The rows have no files; only C-FIND can use them."""
    index = open_index(app.index_url, app.data_dir)
    with index.write():
        patient = models.Patient.create(patient_id="MANY", original_patient_id="MANY", last_name="Many",
                                 name_folded=coercion.fold_name("Many", ""))
        study = models.Study.create(patient=patient, study_instance_uid=uid("S100"))
        series = models.Series.create(study=study, series_instance_uid=uid("S100.1"))
        now = datetime.datetime.now(datetime.timezone.utc)
        rows = [dict(series=series, sop_instance_uid=uid(f"S100.1.{n}"), file_sop_instance_uid=uid(f"S100.1.{n}"),
                     sop_class_uid=datasets.CT, instance_number=str(n), transfer_syntax_uid=datasets.ILE,
                     path=f"none/{n}", size=0, received_at=now) for n in range(1, instances + 1)]
        for batch in chunked(rows, 5000):  # PostgreSQL takes at most 65,535 parameters a statement
            models.Instance.insert_many(batch).execute()
    index.close()
