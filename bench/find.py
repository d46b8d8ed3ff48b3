#!/usr/bin/env python3
"""QUERY-RETRIEVE-SCP C-FIND benchmark: the appliance at 1,000,000 instances, its index on SQLite
and on PostgreSQL, next to DCMTK dcmqrscp.

A benchmark script, not a test. Study Root C-FIND at STUDY level, timed from the client side
over loopback (a pynetdicom SCU and a raw-socket one, below), against

  appliance  the real daemon (tests/support/helpers.Appliance: temporary data dir, free ports, sd_notify
             READY) on an index of 1,000,000 instances: 100,000 studies x 2 series x 5 instances,
             40,000 patients. The first 20 studies (200 instances, 8x8 pixels) go through the
             real ingest path (DCMTK storescu -> STORAGE-SCP); the daemon is stopped and the
             other 99,980 studies are bulk-inserted into the same index, opened through
             appliance.store.db.Index (the real schema and migrations), in transactions of 1,000
             studies: the statement peewee's insert_many builds for each model, run with the
             DB-API's executemany (building the SQL text of a 1M-row insert_many in peewee takes
             4 minutes). Every column is filled; the *_folded columns through
             appliance.store.coercion. Files for the bulk rows do not exist (C-FIND does not read
             them). Nothing is cached between runs.
  appliance-pg  the same daemon with its index on PostgreSQL (IX-01, [index] url): one server for
             the run (bench/lab.postgres_cluster: tests/support/postgres.PostgresCluster, Debian's
             binaries, 127.0.0.1 on a free port, fsync and synchronous_commit on, shared_buffers
             512MB), a new database (UTF8, C) the daemon creates its tables in at its first start.
             The same 20 studies through STORAGE-SCP, the daemon stopped, the same generated rows
             (the generator and bulk_fill are shared) loaded with psycopg's COPY ... FROM STDIN per
             table and batch; then the id sequences set past them (setval), VACUUM ANALYZE and a
             CHECKPOINT, so that neither autovacuum nor the load's checkpoint runs during the
             measurements. Its queries ask for the same values as the SQLite appliance's.
  dcmqrscp   DCMTK dcmqrscp (TCP_NODELAY=1; one process per association: Debian's 3.6.7
             segfaults after the first association with --single-process) on the same shape
             scaled down 250x: 4,000 instances, 400 studies, 160 patients, as real 8x8 files
             registered with dcmqridx. Not 10,000: DCMTK's index holds at most 500 studies per
             storage area (it deletes the oldest study beyond) and an index.dat of at most 32 MiB
             (8,032 bytes per instance: 4,172 instances), both compiled in.

Data shape (deterministic, seed SEED): surnames from a list with a DOE family (DOE, DOELL,
DOERING ...: every 320th patient, all upper case) and 6 % Latin-1 names (Müller, Sørensen ...,
mixed case, ISO_IR 100); Study Dates uniform over 2006-01-01..2025-12-31, except exactly 1 % of
the studies (every 100th), which fall on 2026-01-01..2026-01-31 and nowhere else; unique
Accession Numbers; every patient has at least one study.

Queries (one association per query, Study Root FIND, Implicit VR LE only; every identifier
carries QueryRetrieveLevel=STUDY and the viewer's return keys PatientName, PatientID,
PatientBirthDate, PatientSex, StudyDate, StudyTime, AccessionNumber, StudyID, StudyInstanceUID,
ReferringPhysicianName, StudyDescription, NumberOfStudyRelatedSeries,
NumberOfStudyRelatedInstances, all empty except the matching key):

  patient_id  PatientID = a random existing ID (a new one each repetition)
  name_doe    PatientName = DOE*
  date_year   StudyDate = 20200101-20201231 (5 % of the studies: about 5,000 at 1M, 20 at 4k)
  accession   AccessionNumber = a random existing number (a new one each repetition)
  universal   every return key universal (empty) and StudyDate = 20260101-20260131, the window
              holding exactly 1 % of the studies: 1,000 at 1M, 4 at 4k. (A Study Root STUDY
              query with every key empty is refused C001 by design, rule QF-16, so the date
              window is what makes a "universal" query answerable.)

Each query is measured with two SCUs, each on its own association, with the same values:
  pynetdicom  the brief's instrument (target and verdict): AE.send_c_find, every response decoded
              as a viewer written with pynetdicom would; TCP_NODELAY set on its socket (as DCMTK
              with TCP_NODELAY=1: otherwise the RQ's second P-DATA-TF waits ~40 ms for a delayed
              ACK). --nagle leaves pynetdicom's default.
  raw         the servers' share: the same RQ PDUs (tests/support/pdus.py) on a plain socket; only each
              response's Status is parsed in the timed part.
One unmeasured warm-up request, then --reps repetitions (default 50; after --budget seconds
(default 45) a query stops, but never before 3 measured). The time of one is from sending the
C-FIND-RQ to receiving the final response; the client's CPU time is recorded too. p50/p95 are
nearest-rank (with few repetitions p95 is the maximum). Matches are counted from the pending
responses and compared with what the generator put in; in the first two requests every
returned identifier is decoded (after the clock stops) and its matching key checked. Target:
exact-key queries (patient_id, accession) p95 < 20 ms at 1,000,000 instances. The plan SQLite
chooses for each query is printed through appliance.query.matching.plan; PostgreSQL's as EXPLAIN
(ANALYZE, BUFFERS) of the same statement (the plan the server runs, with its times), and which
tables matching.plan finds read whole (dialect.scans). The index is in the OS page cache (SQLite's
file) or in shared_buffers and the page cache (PostgreSQL's, just loaded): warm-cache figures.
With the index on PostgreSQL the server's CPU is the daemon's and PostgreSQL's (postmaster and
backends) together; PostgreSQL's share is recorded as index_server_cpu_percent.

Usage (from the repository):
  .venv/bin/python bench/find.py [--quick] [--json out.json] [--only appliance,appliance-pg,dcmqrscp]
                                 [--reps 50] [--budget 45] [--nagle]

--quick: 10,000 / 1,000 instances, 10 repetitions: a sanity run (its figures are kept in
find-previous-quick.json). A full run takes about 15 minutes on 2 cores. PostgreSQL must be
installed (Debian's `postgresql`, as tests/run.sh installs it) for appliance-pg. Traffic goes only to
127.0.0.1; every subprocess has a timeout; every loop is bounded; temporary dirs are removed
and processes stopped in `finally`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import math
import os
import random
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import store  # noqa: E402  (bench/store.py: log, run, machine description, quiet-machine wait)
import helpers  # noqa: E402  (tests/support/helpers.py, on the path bench/store.py sets up)
import pdus  # noqa: E402  (tests/support/pdus.py: A-ASSOCIATE-RQ and C-FIND-RQ PDUs, encoded by pynetdicom)
from datasets import CR, CT, ELE, ILE, MR, SC, US, image  # noqa: E402

sys.path.insert(0, str(store.REPO))
from appliance.store import coercion  # noqa: E402
from appliance.store.db import SqliteIndex  # noqa: E402
from appliance.store.models import Instance, Patient, Series, Study  # noqa: E402

log = store.log
RESULTS = store.RESULTS
PREVIOUS = RESULTS / "find-previous.json"  # --quick runs use find-previous-quick.json
SEED = 20261122
HOST = "127.0.0.1"
QR_TITLE = "EX_QUERY_SCP"
DCMQR_TITLE = "DCMQRSCP"
SCU_TITLE = "BENCH_FIND"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
SERIES_PER_STUDY = 2
INSTANCES_PER_SERIES = 5
SAMPLE_STUDIES = 20  # x 10 instances = the 200 sent through the real ingest path
WINDOW = ("20260101", "20260131")  # the "universal" query's date window: exactly 1 % of studies
WINDOW_EVERY = 100
YEAR = ("20200101", "20201231")
BATCH_STUDIES = 1000  # studies per bulk-insert transaction
WARMUP = 1
QUIET_WAIT = 15.0  # before each query, wait up to this long for the shared machine to be idle
# DCMTK's index (dcmqrdbi, compiled in): at most 500 studies per storage area (the quota is cut
# to 500, and dcmqridx/C-STORE then delete the oldest study) and an index.dat of at most 32 MiB
# (44,006 bytes + 8,032 per instance: 4,172 instances; beyond, "DB ALERT: attempt to seek
# beyond 33554432 bytes" and a heap corruption). 400 studies x 10 = 4,000 instances fit.
DCMQR_MAX_STUDIES = 500
DCMQR_STUDIES = 400
DIMSE_TIMEOUT = 120.0
STEP_TIMEOUT = 600  # no single subprocess may take longer
NODELAY = True  # the SCU's socket; --nagle turns it off

RETURN_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
               "AccessionNumber", "StudyID", "StudyInstanceUID", "ReferringPhysicianName", "StudyDescription",
               "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
QUERIES = {  # name -> what the table calls it
    "patient_id": "PatientID exact (random)",
    "name_doe": "PatientName DOE*",
    "date_year": f"StudyDate {YEAR[0]}-{YEAR[1]}",
    "accession": "AccessionNumber exact (random)",
    "universal": f"universal, StudyDate {WINDOW[0]}-{WINDOW[1]}",
}
TARGET_MS = 20.0
TARGETS = {"patient_id": TARGET_MS, "accession": TARGET_MS}  # p95 at 1,000,000 instances

# --- the data shape ---------------------------------------------------------------------------

SURNAMES = (
    "SMITH JOHNSON WILLIAMS BROWN JONES GARCIA MILLER DAVIS RODRIGUEZ MARTINEZ HERNANDEZ LOPEZ "
    "GONZALEZ WILSON ANDERSON THOMAS TAYLOR MOORE JACKSON MARTIN LEE PEREZ THOMPSON WHITE HARRIS "
    "SANCHEZ CLARK RAMIREZ LEWIS ROBINSON WALKER YOUNG ALLEN KING WRIGHT SCOTT TORRES NGUYEN HILL "
    "FLORES GREEN ADAMS NELSON BAKER HALL RIVERA CAMPBELL MITCHELL CARTER ROBERTS SCHMIDT SCHNEIDER "
    "FISCHER WEBER MEYER WAGNER BECKER SCHULZ HOFFMANN KOCH RICHTER KLEIN WOLF NEUMANN SCHWARZ "
    "ZIMMERMANN BRAUN HOFMANN HARTMANN LANGE SCHMITT WERNER KRAUSE MEIER LEHMANN HUBER MAYER HERRMANN "
    "KAISER FUCHS PETERS LANG SCHOLZ MOELLER WEISS JUNG HAHN VOGEL FRIEDRICH KELLER GUENTHER FRANK "
    "BERGER WINKLER ROTH BECK LORENZ BAUMANN FRANKE ALBRECHT SCHUSTER SIMON LUDWIG BOEHM WINTER "
    "KRAUS MARTENS SCHUMACHER VOGT STEIN JAEGER OTTO SOMMER GROSS SEIDEL HEINRICH BRANDT HAAS "
    "SCHREIBER GRAF SCHULTE DIETRICH ZIEGLER KUHN KUEHN POHL ENGEL HORN BUSCH BERGMANN THOMAS VOIGT "
    "SAUER ARNOLD WOLFF PFEIFFER DUBOIS LAURENT BERNARD PETIT DURAND LEROY MOREAU ROUSSEAU FOURNIER "
    "GIRARD BONNET ROSSI RUSSO FERRARI ESPOSITO BIANCHI ROMANO COLOMBO RICCI MARINO GRECO BRUNO "
    "GALLO CONTI DE_JONG JANSEN DE_VRIES VAN_DIJK BAKKER VISSER SMIT MEIJER HANSEN JOHANSEN OLSEN "
    "LARSEN ANDERSEN PEDERSEN NILSSON ERIKSSON KARLSSON PERSSON SVENSSON GUSTAFSSON NOWAK KOWALSKI "
    "WISNIEWSKI WOJCIK KOWALCZYK KAMINSKI NOVAK SVOBODA DVORAK CERNY PROCHAZKA KUCERA HORVATH NAGY "
    "TOTH SZABO KOVACS VARGA MURPHY KELLY OSULLIVAN WALSH OBRIEN BYRNE RYAN OCONNOR SILVA SANTOS "
    "FERREIRA PEREIRA OLIVEIRA COSTA RODRIGUES ALVES").split()
SURNAMES = tuple(s.replace("_", " ") for s in SURNAMES)
DOE_EVERY = 320  # one patient in 320 (0.31 %) has a DOE-family surname
DOE_FAMILY = ("DOE", "DOE", "DOE", "DOELL", "DOERING", "DOERR", "DOERFLER", "DOERNER", "DOEHLER")
LATIN1_SURNAMES = ("Müller", "Schröder", "Jäger", "Gómez", "Núñez", "Sørensen", "Åberg", "Östlund",
                   "Lefèvre", "Weiß", "Fernández", "Böhm", "Köhler", "Krämer", "Pérez", "Ibáñez",
                   "Mårtensson", "Þórsson", "Ørsted", "Göransson", "Hämäläinen", "Françoise-Lévy",
                   "Groß", "Lindén", "Sánchez", "Müller-Lüdenscheidt", "Çelik")
FIRST_NAMES = ("JOHN JANE MICHAEL MARY DAVID ANNA JAMES LINDA ROBERT MARIA WILLIAM SUSAN THOMAS "
               "KAREN PETER LAURA PAUL SARAH MARK EMMA ANDREW JULIA STEFAN SABINE KLAUS MONIKA HANS "
               "PETRA JAN EVA LUCA SOFIA PIERRE CLAIRE JUAN CARMEN ERIK INGRID PIOTR AGNIESZKA").split()
LATIN1_FIRST = ("Jürgen", "Hélène", "Søren", "José", "François", "Zoë", "Björn", "Åsa", "Ramón",
                "Ingrid", "Dörte", "Inês", "Gisèle", "Jörg", "Mónica", "Ólafur")
REFERRING = ("SMITH^ANNA^^DR", "WEBER^KLAUS^^DR", "GARCIA^LUIS", "MILLER^SUSAN^J^DR", "Müller^Hans^^Dr.",
             "CARTER^PAUL", "LEE^GRACE^^DR", "DUBOIS^MARC", "ROSSI^ELENA^^DR", "NOWAK^PIOTR",
             "Sørensen^Ida", "KING^ROBERT^^DR^MD", "DOE^JOHN^^DR", "HALL^EMMA", "BAKER^TOM")
MODALITIES = (("CT", CT, 0.35, 526_000), ("MR", MR, 0.25, 133_000), ("CR", CR, 0.20, 8_400_000),
              ("US", US, 0.10, 921_000), ("OT", SC, 0.10, 310_000))
DESCRIPTIONS = {
    "CT": ("CT HEAD W/O CONTRAST", "CT CHEST W CONTRAST", "CT ABDOMEN PELVIS", "CT ANGIO CHEST", "CT SPINE"),
    "MR": ("MR BRAIN", "MR KNEE LEFT", "MR KNEE RIGHT", "MR LUMBAR SPINE", "MR SHOULDER"),
    "CR": ("CHEST PA LAT", "HAND LEFT", "PELVIS AP", "KNEE 2 VIEWS", "SKULL"),
    "US": ("US ABDOMEN", "US THYROID", "US OBSTETRIC", "US CAROTID", "US BREAST"),
    "OT": ("SECONDARY CAPTURE", "REPORT SCREENSHOT", "DOSE REPORT"),
}
BODY_PARTS = {"CT": ("HEAD", "CHEST", "ABDOMEN", "SPINE"), "MR": ("BRAIN", "KNEE", "LSPINE", "SHOULDER"),
              "CR": ("CHEST", "HAND", "PELVIS", "KNEE", "SKULL"), "US": ("ABDOMEN", "THYROID", "BREAST"),
              "OT": ("",)}
SERIES_DESCRIPTIONS = ("AXIAL", "CORONAL", "SAGITTAL", "SCOUT", "T1", "T2 FLAIR", "PA", "LATERAL", "SR")
CALLING = {"CT": ("CT_SCANNER1", "CT_SCANNER2"), "MR": ("MR_3T", "MR_15T"), "CR": ("CR_ROOM1", "DR_ROOM2"),
           "US": ("US_CART1",), "OT": ("WORKSTATION1",)}
DAY0 = datetime.date(2006, 1, 1)
DAYS = (datetime.date(2025, 12, 31) - DAY0).days + 1


@dataclass
class PatientRec:
    index: int
    patient_id: str
    name: str  # the PN value, "LAST^FIRST[^M]"
    birth_date: str
    sex: str  # as in the files; the index keeps coercion.normalise_sex of it
    other_ids: str
    other_names: str
    charset: str  # "" or "ISO_IR 100"
    doe: bool
    studies: int = 0


@dataclass
class StudyRec:
    index: int
    patient: PatientRec
    uid: str
    date: str
    time: str
    accession: str
    study_id: str
    referring: str
    description: str
    exam_type: str
    modality: str
    sop_class: str
    size: int
    series: list = field(default_factory=list)  # of SeriesRec


@dataclass
class SeriesRec:
    uid: str
    number: str
    description: str
    operators: str
    body_part: str
    instances: list  # of (sop_instance_uid, instance_number, transfer_syntax, path, size, received_at, calling)


class Shape:
    """The generated archive: patients up front, studies streamed in order (deterministic)."""

    def __init__(self, n_studies: int, seed: int = SEED):
        self.n_studies = n_studies
        self.n_patients = n_studies * 2 // 5
        self.rng = random.Random(seed)
        rng = self.rng
        self.patients = [self._patient(rng, k) for k in range(self.n_patients)]
        owners = list(range(self.n_patients)) + [rng.randrange(self.n_patients)
                                                 for _ in range(n_studies - self.n_patients)]
        rng.shuffle(owners)
        self.owners = owners
        for k in owners:
            self.patients[k].studies += 1
        self.accessions: list[str] = []
        # what the queries must find (expected matches), filled in as studies are generated
        self.expected = {"name_doe": sum(p.studies for p in self.patients if p.doe), "date_year": 0,
                         "universal": 0}
        self.generated = 0

    @staticmethod
    def _patient(rng: random.Random, k: int) -> PatientRec:
        r = rng.random()
        doe = k % DOE_EVERY == 17  # deterministic, so that even 160 patients have one
        latin1 = not doe and r < 0.06
        if doe:
            last, first = rng.choice(DOE_FAMILY), rng.choice(FIRST_NAMES)
        elif latin1:
            last, first = rng.choice(LATIN1_SURNAMES), rng.choice(LATIN1_FIRST)
        else:
            last, first = rng.choice(SURNAMES), rng.choice(FIRST_NAMES)
        name = f"{last}^{first}" + (f"^{rng.choice('ABCDEFGHJKLMNPRSTW')}" if rng.random() < 0.1 else "")
        birth = DAY0 - datetime.timedelta(days=rng.randrange(0, 90 * 365))
        s = rng.random()
        sex = "M" if s < 0.48 else "F" if s < 0.96 else "O" if s < 0.97 else ""
        pid = f"{(k * 7907 + 104729) % 10**8:08d}"  # unique for k < 10**8 (7907 is prime)
        other_ids = f"OLD{pid}" if rng.random() < 0.05 else ""
        other_names = f"{last}^{rng.choice(FIRST_NAMES)}" if rng.random() < 0.02 else ""
        charset = "ISO_IR 100" if latin1 or rng.random() < 0.2 else ""
        return PatientRec(k, pid, name, birth.strftime("%Y%m%d"), sex, other_ids, other_names, charset, doe)

    def studies(self):
        """Yield every study once, in order, with its series and instances."""
        rng = self.rng
        for i in range(self.n_studies):
            patient = self.patients[self.owners[i]]
            if i % WINDOW_EVERY == WINDOW_EVERY // 3:
                day = datetime.date(2026, 1, rng.randrange(1, 32))
            else:
                day = DAY0 + datetime.timedelta(days=rng.randrange(DAYS))
            date = day.strftime("%Y%m%d")
            tm = f"{rng.randrange(24):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}"
            if rng.random() < 0.3:
                tm += f".{rng.randrange(1000000):06d}"
            m = rng.random()
            for modality, sop_class, weight, size in MODALITIES:
                m -= weight
                if m < 0:
                    break
            accession = f"AC{(i * 7919 + 31337) % 10**9:09d}"  # unique for i < 10**9
            referring = rng.choice(REFERRING) if rng.random() < 0.9 else ""
            description = rng.choice(DESCRIPTIONS[modality])
            study = StudyRec(i, patient, f"2.25.{rng.getrandbits(128)}", date, tm, accession,
                             str(rng.randrange(1, 100000)), referring, description,
                             rng.choice((BODY_PARTS[modality][0], "", "")),  # EL-12 as if configured
                             modality, sop_class, size)
            received = datetime.datetime.combine(day, datetime.time(int(tm[:2]), int(tm[2:4])),
                                                 tzinfo=datetime.timezone.utc)
            for s in range(SERIES_PER_STUDY):
                instances = []
                ts = ILE if rng.random() < 0.2 else ELE
                calling = rng.choice(CALLING[modality])
                for n in range(INSTANCES_PER_SERIES):
                    name = f"{rng.getrandbits(128):032x}"
                    received += datetime.timedelta(seconds=rng.randrange(1, 30))
                    instances.append((f"2.25.{rng.getrandbits(128)}", str(n + 1), ts, f"{name[:2]}/{name}.dcm",
                                      size + rng.randrange(-size // 10, size // 10 + 1), received, calling))
                study.series.append(SeriesRec(
                    f"2.25.{rng.getrandbits(128)}", str(s + 1), rng.choice(SERIES_DESCRIPTIONS),
                    "TECH^A" if rng.random() < 0.5 else "", rng.choice(BODY_PARTS[modality]), instances))
            self.accessions.append(accession)
            if YEAR[0] <= date <= YEAR[1]:
                self.expected["date_year"] += 1
            if WINDOW[0] <= date <= WINDOW[1]:
                self.expected["universal"] += 1
            self.generated += 1
            yield study

    def expected_matches(self, query: str, value: str) -> int:
        if query == "patient_id":
            return self.by_id[value].studies
        if query == "accession":
            return 1
        return self.expected[query]

    @property
    def by_id(self) -> dict:
        if not hasattr(self, "_by_id"):
            self._by_id = {p.patient_id: p for p in self.patients}
        return self._by_id


def dataset(study: StudyRec, series: SeriesRec, instance: tuple):
    """The Part 10 dataset of one generated instance (8x8 pixels)."""
    p = study.patient
    uid, number, _ts, _path, _size, _received, _calling = instance
    elements = dict(StudyDate=study.date, StudyTime=study.time, AccessionNumber=study.accession,
                    Modality=study.modality, ReferringPhysicianName=study.referring, PatientBirthDate=p.birth_date,
                    PatientSex=p.sex, StudyID=study.study_id, SeriesNumber=series.number, InstanceNumber=number,
                    StudyDescription=study.description, SeriesDescription=series.description,
                    OperatorsName=series.operators, BodyPartExamined=series.body_part)
    if p.other_ids:
        elements["OtherPatientIDs"] = p.other_ids
    if p.other_names:
        elements["OtherPatientNames"] = p.other_names
    return image(study.sop_class, ELE, rows=8, columns=8, bits=8 if study.modality in ("US", "OT") else 16,
                 patient_name=p.name, patient_id=p.patient_id, study_uid=study.uid, series_uid=series.uid,
                 sop_instance_uid=uid, charset=p.charset or None, **elements)


def write_files(studies: list[StudyRec], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for study in studies:
        for series in study.series:
            for instance in series.instances:
                path = directory / f"{instance[0]}.dcm"
                dataset(study, series, instance).save_as(path, enforce_file_format=True)
                files.append(path)
    return files


# --- filling the appliance's index --------------------------------------------------------------

PATIENT_FIELDS = (Patient.id, Patient.patient_id, Patient.original_patient_id, Patient.last_name,
                  Patient.first_name, Patient.name_folded, Patient.birth_date, Patient.sex,
                  Patient.other_patient_ids, Patient.other_patient_names)
STUDY_FIELDS = (Study.id, Study.patient, Study.study_instance_uid, Study.study_date, Study.study_time,
                Study.accession_number, Study.study_id, Study.referring_physician,
                Study.referring_physician_folded, Study.study_description, Study.exam_type)
SERIES_FIELDS = (Series.id, Series.study, Series.series_instance_uid, Series.modality, Series.series_number,
                 Series.series_description, Series.operators_name, Series.body_part, Series.exam_type)
INSTANCE_FIELDS = (Instance.id, Instance.series, Instance.sop_instance_uid, Instance.file_sop_instance_uid,
                   Instance.sop_class_uid, Instance.instance_number, Instance.transfer_syntax_uid,
                   Instance.specific_character_set, Instance.path, Instance.size, Instance.received_at,
                   Instance.calling_ae)


def insert(model, fields, rows: list) -> None:
    """peewee insert_many's statement for one row, executed for all rows with executemany.

    peewee builds the SQL text of a multi-row insert_many value by value in Python (about 20 µs
    a value: 4 minutes for this index); its one-row statement with the same fields, run through
    the DB-API's executemany, stores the same values (the rows hold values already in the form
    the fields' db_value gives: str, int, timezone-aware datetime as the ingest path writes)."""
    if not rows:
        return
    sql, _ = model.insert_many(rows[:1], fields=list(fields)).sql()
    model._meta.database.cursor().executemany(sql, rows)


class SqliteBulk:
    """Where bulk_fill writes on SQLite: the index file through appliance.store.db.SqliteIndex,
    peewee insert_many's statements run with executemany, a transaction per batch."""

    backend = "sqlite"

    def __init__(self, path: Path):
        self.index = SqliteIndex(path)  # the real schema; the daemon has already migrated it
        db = self.index.db
        # This connection only: no fsync per commit and a bigger page cache (the appliance's own
        # connections keep their PRAGMAs; the file is checkpointed and closed at the end).
        db.execute_sql("PRAGMA synchronous=OFF")
        db.execute_sql("PRAGMA cache_size=-524288")

    def next_ids(self) -> dict:
        return {m: (m.select(m.id).order_by(m.id.desc()).scalar() or 0) + 1 for m in (Patient, Study, Series, Instance)}

    def patient_ids(self) -> dict:
        return dict(Patient.select(Patient.patient_id, Patient.id).tuples())

    def write(self, tables: list[tuple]) -> None:
        """[(model, fields, rows)] in one transaction."""
        with self.index.db.atomic():
            for model, fields, rows in tables:
                insert(model, fields, rows)

    def close(self) -> dict:
        self.index.close()  # wal_checkpoint(TRUNCATE): the database file alone is complete
        return {}


class PostgresBulk:
    """Where bulk_fill writes on PostgreSQL: the database the daemon created, over psycopg, one
    COPY ... FROM STDIN per table and batch, a transaction per batch (this session only:
    synchronous_commit off, as SQLite's synchronous=OFF above). At the end the id sequences
    are set past the rows written (the daemon's next INSERT must not collide), VACUUM ANALYZE
    (statistics for the planner, and the visibility map and hint bits a live archive's
    autovacuum would have set, so that no autovacuum starts during the measurements) and a
    CHECKPOINT (the load's dirty buffers are written now, not during the queries)."""

    backend = "postgresql"

    def __init__(self, url: str):
        import psycopg
        self.conn = psycopg.connect(url, autocommit=False, connect_timeout=10)
        self.conn.execute("SET synchronous_commit = off")
        self.conn.commit()

    def next_ids(self) -> dict:
        return {m: self.conn.execute(f'SELECT COALESCE(MAX(id), 0) + 1 FROM "{m._meta.table_name}"').fetchone()[0]
                for m in (Patient, Study, Series, Instance)}

    def patient_ids(self) -> dict:
        return dict(self.conn.execute("SELECT patient_id, id FROM patient").fetchall())

    def write(self, tables: list[tuple]) -> None:
        with self.conn.cursor() as cur:
            for model, fields, rows in tables:
                if not rows:
                    continue
                columns = ", ".join(f'"{f.column_name}"' for f in fields)
                with cur.copy(f'COPY "{model._meta.table_name}" ({columns}) FROM STDIN') as copy:
                    for row in rows:
                        copy.write_row(row)
        self.conn.commit()

    def close(self) -> dict:
        figures = {}
        try:
            for model in (Patient, Study, Series, Instance):
                table = model._meta.table_name
                self.conn.execute(f"SELECT setval(pg_get_serial_sequence('\"{table}\"', 'id'), "
                                  f'(SELECT MAX(id) FROM "{table}"))')
            self.conn.commit()
            self.conn.autocommit = True  # VACUUM runs outside a transaction
            t = time.monotonic()
            self.conn.execute("VACUUM ANALYZE")
            figures["vacuum_analyze_seconds"] = round(time.monotonic() - t, 1)
            t = time.monotonic()
            self.conn.execute("CHECKPOINT")
            figures["checkpoint_seconds"] = round(time.monotonic() - t, 1)
        finally:
            self.conn.close()
        return figures


def bulk_fill(target, shape: Shape, studies) -> dict:
    """Insert every study `studies` yields (and all patients not yet indexed) into the index
    through `target` (SqliteBulk or PostgresBulk: the same rows either way)."""
    started = time.monotonic()
    try:
        next_id = target.next_ids()
        patient_rows = target.patient_ids()
        sample_patients = len(patient_rows)
        new = []
        for p in shape.patients:
            if p.patient_id in patient_rows:
                continue
            patient_rows[p.patient_id] = next_id[Patient]
            last, first = coercion.split_name(p.name)
            new.append((next_id[Patient], p.patient_id, p.patient_id, last, first, coercion.fold_name(last, first),
                        p.birth_date, coercion.normalise_sex(p.sex), p.other_ids, p.other_names))
            next_id[Patient] += 1
        target.write([(Patient, PATIENT_FIELDS, new)])
        batch: list[StudyRec] = []
        done = 0

        def flush():
            studies_, series_, instances_ = [], [], []
            for st in batch:
                sid = next_id[Study]
                next_id[Study] += 1
                studies_.append((sid, patient_rows[st.patient.patient_id], st.uid, st.date, st.time, st.accession,
                                 st.study_id, st.referring, coercion.pn_search_key(st.referring), st.description,
                                 st.exam_type))
                for se in st.series:
                    rid = next_id[Series]
                    next_id[Series] += 1
                    series_.append((rid, sid, se.uid, st.modality, se.number, se.description, se.operators,
                                    se.body_part, st.exam_type))
                    for uid, number, ts, rel, size, received, calling in se.instances:
                        instances_.append((next_id[Instance], rid, uid, uid, st.sop_class, number, ts,
                                           st.patient.charset, rel, size, received, calling))
                        next_id[Instance] += 1
            target.write([(Study, STUDY_FIELDS, studies_), (Series, SERIES_FIELDS, series_),
                          (Instance, INSTANCE_FIELDS, instances_)])
            batch.clear()

        last_log = time.monotonic()
        for st in studies:
            batch.append(st)
            if len(batch) >= BATCH_STUDIES:
                done += len(batch)
                flush()
                if time.monotonic() - last_log > 15:
                    last_log = time.monotonic()
                    log(f"   {done} studies inserted ({time.monotonic() - started:.0f} s)")
        done += len(batch)
        flush()
        inserted = time.monotonic() - started
    finally:
        after = target.close()
    return {"studies": done, "patients": len(new), "sample_patients": sample_patients, "backend": target.backend,
            "insert_seconds": round(inserted, 1), **after, "seconds": round(time.monotonic() - started, 1)}


TABLES = ("patient", "study", "series", "instance")


def index_counts(app) -> dict:
    """Rows per table of `app`'s index, on either backend (helpers.Appliance.index_rows)."""
    return {t: app.index_rows(f"SELECT COUNT(*) FROM {t}")[0][0] for t in TABLES}


def index_bytes(app) -> int:
    """The index file and its log on SQLite; on PostgreSQL, the database's size (tables, their
    indexes and TOAST; the server's WAL not included)."""
    if app.index_url:
        return app.index_rows("SELECT pg_database_size(current_database())")[0][0]
    path = app.data_dir / "index.sqlite"
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def fill_appliance(root: Path, shape: Shape, index_url: str = "") -> tuple[dict, Path]:
    """Start the daemon once (it creates the data dir and index; on the PostgreSQL database
    `index_url` if given), C-STORE the sample through STORAGE-SCP, stop it, bulk-insert the
    rest. Returns (figures, data dir)."""
    started = time.monotonic()
    studies = shape.studies()
    sample = [next(studies) for _ in range(min(SAMPLE_STUDIES, shape.n_studies))]
    files = write_files(sample, root / "sample")
    app = helpers.Appliance(root / "ingest", index_url=index_url)
    app.start()
    try:
        t = time.monotonic()
        for part in range(0, len(files), 100):  # well below ARG_MAX
            store.run(["storescu", "-aet", "BENCH_SCU", "-aec", app.storage_title, "-to", "10", "-ts", "60",
                       HOST, str(app.storage_port), *map(str, files[part:part + 100])],
                      timeout=STEP_TIMEOUT, env=store.dcmtk_env())
        ingest_s = time.monotonic() - t
        stored = app.index_rows("SELECT COUNT(*) FROM instance")[0][0]
    finally:
        rc = app.stop(timeout=60)
    if rc != 0:
        raise RuntimeError(f"the daemon exited {rc} after the sample ingest:\n{app.log()[-3000:]}")
    if stored != len(files):
        raise RuntimeError(f"sample ingest: {stored} of {len(files)} instances indexed:\n{app.log()[-3000:]}")
    shutil.rmtree(root / "sample")
    log(f"   {len(files)} sample instances stored through STORAGE-SCP in {ingest_s:.1f} s; bulk insert ...")
    target = PostgresBulk(index_url) if index_url else SqliteBulk(app.data_dir / "index.sqlite")
    bulk = bulk_fill(target, shape, studies)
    figures = {"sample_instances": len(files), "sample_ingest_seconds": round(ingest_s, 2), "bulk": bulk,
               "seconds": round(time.monotonic() - started, 1), "counts": index_counts(app),
               "index_bytes": index_bytes(app)}
    return figures, app.data_dir


# --- DCMTK dcmqrscp -------------------------------------------------------------------------------

class DcmQrScp:
    """dcmqrscp (one process per association) on a storage area filled with dcmqridx."""

    def __init__(self, root: Path, shape: Shape):
        self.root = root
        self.area = root / "area"
        self.port = helpers.free_port()
        self.title = DCMQR_TITLE
        self.shape = shape
        self.proc = None

    def fill(self) -> dict:
        started = time.monotonic()
        self.area.mkdir(parents=True)
        files = write_files(list(self.shape.studies()), self.area / "files")
        written = time.monotonic() - started
        for part in range(0, len(files), 500):
            store.run(["dcmqridx", str(self.area), *map(str, files[part:part + 500])], timeout=STEP_TIMEOUT)
        self.config = self.root / "dcmqrscp.cfg"
        self.config.write_text(
            f"NetworkTCPPort  = {self.port}\nMaxPDUSize      = 131072\nMaxAssociations = 16\n\n"
            "HostTable BEGIN\nHostTable END\n\nVendorTable BEGIN\nVendorTable END\n\n"
            f"AETable BEGIN\n{self.title}  {self.area}  RW  ({DCMQR_MAX_STUDIES}, 1024mb)  ANY\nAETable END\n")
        index = self.area / "index.dat"
        return {"instances": len(files), "write_seconds": round(written, 1),
                "seconds": round(time.monotonic() - started, 1), "index_bytes": index.stat().st_size}

    def __enter__(self):
        self.log_file = open(self.root / "dcmqrscp.log", "wb")
        # --fork (the default): with --single-process, Debian's dcmqrscp 3.6.7 segfaults after the
        # first association is released
        self.proc = subprocess.Popen(["dcmqrscp", "-c", str(self.config), str(self.port)],
                                     env=store.dcmtk_env(), stdout=self.log_file, stderr=self.log_file)
        self.pid = self.proc.pid
        store.wait_for_echo(self.proc, self.title, HOST, self.port, self.root / "dcmqrscp.log")
        return self

    def __exit__(self, *exc):
        store.terminate(self.proc)
        self.log_file.close()


# --- the C-FIND client ----------------------------------------------------------------------------

def identifier(query: str, value: str):
    from pydicom.dataset import Dataset
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in RETURN_KEYS:
        setattr(ds, keyword, "")
    key = {"patient_id": "PatientID", "name_doe": "PatientName", "date_year": "StudyDate",
           "accession": "AccessionNumber", "universal": "StudyDate"}[query]
    setattr(ds, key, value)
    return ds


def fixed_value(query: str) -> str | None:
    return {"name_doe": "DOE*", "date_year": f"{YEAR[0]}-{YEAR[1]}", "universal": f"{WINDOW[0]}-{WINDOW[1]}"}.get(query)


def wrong_match(query: str, value: str, ident) -> bool:
    """Does a returned identifier fail the request's matching key?"""
    if ident is None:
        return True
    if query == "patient_id":
        return str(ident.get("PatientID", "")) != value
    if query == "accession":
        return str(ident.get("AccessionNumber", "")) != value
    if query == "name_doe":
        return not str(ident.get("PatientName", "")).casefold().startswith("doe")
    lo, hi = value.split("-")
    return not lo <= str(ident.get("StudyDate", "")) <= hi


def percentile(values: list[float], p: float):
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(math.ceil(p / 100 * len(ordered)) - 1, 0)], 2)


class PynetdicomSCU:
    """The brief's instrument: a pynetdicom AE, one association, send_c_find per request."""

    name = "pynetdicom"

    def __init__(self, port: int, title: str):
        from pynetdicom import AE
        self.ae = AE(ae_title=SCU_TITLE)
        self.ae.acse_timeout = 30
        self.ae.dimse_timeout = DIMSE_TIMEOUT
        self.ae.network_timeout = DIMSE_TIMEOUT
        self.ae.add_requested_context(STUDY_ROOT_FIND, ILE)
        self.assoc = self.ae.associate(HOST, port, ae_title=title, max_pdu=131072)
        if not self.assoc.is_established:
            self.ae.shutdown()
            raise ConnectionError("association not established")
        if NODELAY:
            # As DCMTK with TCP_NODELAY=1: pynetdicom writes the RQ's command and identifier as
            # two P-DATA-TF PDUs, and with Nagle on the second waits for the peer's delayed ACK.
            self.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def find(self, ds) -> tuple[int | None, list]:
        """(final status or None, the pending responses' identifiers), decoded as they come."""
        idents = []
        for status, ident in self.assoc.send_c_find(ds, STUDY_ROOT_FIND):
            if not status or "Status" not in status:  # timeout, abort or an unusable response
                return None, idents
            code = int(status.Status)
            if code not in (0xFF00, 0xFF01):
                return code, idents
            idents.append((code, ident))
        return None, idents

    def close(self):
        if self.assoc.is_established:
            self.assoc.release()
        self.ae.shutdown()


class RawSCU:
    """The servers' share: a socket that sends the pre-encoded C-FIND-RQ PDUs (tests/support/pdus.py,
    pynetdicom's encoders) and reads the responses' PDVs without decoding them: only each
    command's Status is parsed; identifiers are kept as bytes and decoded after the clock stops."""

    name = "raw"

    def __init__(self, port: int, title: str):
        self.sock = pdus.connect(port, HOST, timeout=DIMSE_TIMEOUT)
        self.buffer = bytearray()
        self.sock.sendall(pdus.request(SCU_TITLE, title, contexts=((STUDY_ROOT_FIND, (ILE,)),), max_length=131072))
        pdu = self.read_pdu()
        if pdu[:1] != b"\x02" or context_result(pdu[6:]) != 0:
            self.sock.close()
            raise ConnectionError(f"association not accepted: {pdus.rejection(pdu)}")
        self.message_id = 0

    def read_pdu(self) -> bytes:
        while True:
            if len(self.buffer) >= 6:
                end = 6 + int.from_bytes(self.buffer[2:6], "big")
                if len(self.buffer) >= end:
                    pdu = bytes(self.buffer[:end])
                    del self.buffer[:end]
                    return pdu
            chunk = self.sock.recv(262144)
            if not chunk:
                return b""
            self.buffer += chunk

    def find(self, ds) -> tuple[int | None, list]:
        self.message_id += 1
        rq = b"".join(pdus.p_data(pdus.c_find(STUDY_ROOT_FIND, ds, self.message_id)))
        self.sock.sendall(rq)
        idents, command, data, pending = [], bytearray(), bytearray(), None
        while True:
            try:
                pdu = self.read_pdu()
            except OSError:
                return None, idents
            if pdu[:1] != b"\x04":
                return None, idents
            i = 6
            while i + 6 <= len(pdu):
                length = int.from_bytes(pdu[i:i + 4], "big")
                control = pdu[i + 5]
                fragment = pdu[i + 6:i + 4 + length]
                i += 4 + length
                if control & 1:
                    command += fragment
                    if control & 2:
                        code = command_status(command)
                        command.clear()
                        if code in (0xFF00, 0xFF01):
                            pending = code
                        else:
                            return code, idents
                else:
                    data += fragment
                    if control & 2:
                        idents.append((pending, bytes(data)))
                        data.clear()

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.sendall(pdus.RELEASE_RQ)
            self.read_pdu()
        self.sock.close()


def context_result(ac_body: bytes) -> int | None:
    """Result of the first presentation context item (0x21) in an A-ASSOCIATE-AC body."""
    i = 68
    while i + 4 <= len(ac_body):
        item_type, length = ac_body[i], int.from_bytes(ac_body[i + 2:i + 4], "big")
        if item_type == 0x21:
            return ac_body[i + 6]
        i += 4 + length
    return None


def command_status(command: bytes) -> int | None:
    """Status (0000,0900) of an Implicit VR Little Endian command set."""
    i = 0
    while i + 8 <= len(command):
        group, element = int.from_bytes(command[i:i + 2], "little"), int.from_bytes(command[i + 2:i + 4], "little")
        length = int.from_bytes(command[i + 4:i + 8], "little")
        if (group, element) == (0x0000, 0x0900):
            return int.from_bytes(command[i + 8:i + 10], "little")
        i += 8 + length
    return None


def decoded(ident):
    if ident is None or not isinstance(ident, bytes):
        return ident
    from io import BytesIO
    from pydicom.filereader import read_dataset
    return read_dataset(BytesIO(ident), is_implicit_VR=True, is_little_endian=True)


def run_query(scu, query: str, value: str, check: bool) -> dict:
    """One C-FIND: wall and client CPU seconds from sending the RQ to the final response.
    The returned identifiers are checked after the clock stops (all of them if `check`)."""
    ds = identifier(query, value)
    t0, c0 = time.perf_counter(), time.process_time()
    final, idents = scu.find(ds)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    wrong = sum(wrong_match(query, value, decoded(ident)) for _, ident in idents) if check else 0
    return {"seconds": seconds, "cpu": cpu, "matches": len(idents), "wrong": wrong, "final": final,
            "pending": sorted({code for code, _ in idents})}


def server_cpu_seconds(server: int | tuple[int, ...]) -> float:
    """The server processes and their children (dcmqrscp forks one per association; with the
    index on PostgreSQL, the server is the daemon and the postmaster with its backends)."""
    pids = []
    for pid in (server,) if isinstance(server, int) else server:
        pids.append(pid)
        with contextlib.suppress(OSError):
            pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return sum(store.cpu_seconds(p) or 0.0 for p in pids)


def measure_one(scu_class, port: int, title: str, server_pid: int | tuple[int, ...], shape: Shape, query: str,
                values: list[str], budget: float) -> dict:
    """WARMUP + len(values) requests over one association, at most `budget` seconds (>= 3 measured).
    `server_pid`: the server's, or (the daemon's, the postmaster's) with the index on PostgreSQL."""
    try:
        scu = scu_class(port, title)
    except (ConnectionError, OSError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    ms, cpu_ms, matches, expected, finals, problems = [], [], [], [], set(), []
    pending: set[int] = set()
    first_ms = None
    cpu = {}
    index_pids = server_pid[1:] if isinstance(server_pid, tuple) else ()  # PostgreSQL's postmaster
    try:
        deadline = time.monotonic() + budget
        for rep, value in enumerate(values):
            if rep >= WARMUP + 3 and time.monotonic() > deadline:
                break
            if rep == WARMUP:  # CPU accounting over the measured requests only
                cpu = {"wall": time.monotonic(), "machine": store.machine_cpu_seconds(),
                       "own": store.own_cpu_seconds(), "server": server_cpu_seconds(server_pid),
                       "index": server_cpu_seconds(index_pids) if index_pids else None}
            r = run_query(scu, query, value, check=rep < WARMUP + 1)
            if r["final"] is None:
                problems.append(f"no final response (timeout, abort or undecodable) for {value!r}")
                break
            want = shape.expected_matches(query, value)
            if (r["final"] != 0 or r["matches"] != want or r["wrong"]) and len(problems) < 5:
                problems.append(f"{value!r}: final 0x{r['final']:04X}, {r['matches']} matches (expected {want})"
                                + (f", {r['wrong']} not matching the key" if r["wrong"] else ""))
            if rep == 0:
                first_ms = round(1000 * r["seconds"], 2)
            if rep < WARMUP:
                continue
            ms.append(1000 * r["seconds"])
            cpu_ms.append(1000 * r["cpu"])
            matches.append(r["matches"])
            expected.append(want)
            finals.add(r["final"])
            pending.update(r["pending"])
        if cpu:
            wall = time.monotonic() - cpu["wall"]
            server = server_cpu_seconds(server_pid) - cpu["server"]
            own = store.own_cpu_seconds() - cpu["own"]
            others = store.machine_cpu_seconds() - cpu["machine"] - server - own
            index = server_cpu_seconds(index_pids) - cpu["index"] if index_pids else None
            cpu = {"server_cpu_percent": round(100 * server / wall, 1), "client_cpu_percent": round(100 * own / wall, 1),
                   # everything else on the machine meanwhile, in % of all CPUs: a disturbed run shows here
                   "others_busy_percent": round(max(100 * others / wall / (os.cpu_count() or 1), 0.0), 1),
                   **({"index_server_cpu_percent": round(100 * index / wall, 1)} if index is not None else {})}
    finally:
        scu.close()
    return {
        "reps": len(ms), "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95),
        "max_ms": round(max(ms), 2) if ms else None, "first_ms": first_ms,
        "client_cpu_p50_ms": percentile(cpu_ms, 50),
        "matches_min": min(matches, default=None), "matches_max": max(matches, default=None),
        "matches_mean": round(statistics.mean(matches), 1) if matches else None,
        "expected_mean": round(statistics.mean(expected), 1) if expected else None,
        "final_statuses": [f"0x{s:04X}" for s in sorted(finals)],
        "pending_statuses": [f"0x{s:04X}" for s in sorted(pending)],
        "problems": problems, **cpu,
    }


def measure(port: int, title: str, server_pid: int | tuple[int, ...], shape: Shape, reps: int, budget: float,
            rng: random.Random) -> dict:
    """Each query with the pynetdicom SCU, then with the raw SCU (same values, new association)."""
    out = {}
    for query in QUERIES:
        values = [fixed_value(query) or (rng.choice(shape.patients).patient_id if query == "patient_id"
                                         else rng.choice(shape.accessions)) for _ in range(WARMUP + reps)]
        out[query] = {"machine_busy_before_percent": store.wait_quiet(QUIET_WAIT)}
        for scu_class in (PynetdicomSCU, RawSCU):
            res = out[query][scu_class.name] = measure_one(scu_class, port, title, server_pid, shape, query, values,
                                                           budget)
            if "error" in res:
                log(f"   {query} ({scu_class.name}): {res['error']}")
                continue
            log(f"   {query} ({scu_class.name}): p50 {res['p50_ms']} ms, p95 {res['p95_ms']} ms over {res['reps']}, "
                f"client CPU p50 {res['client_cpu_p50_ms']} ms, matches {res['matches_min']}..{res['matches_max']} "
                f"(expected mean {res['expected_mean']}), others busy {res.get('others_busy_percent')} %"
                + (f"; PROBLEMS: {res['problems']}" if res["problems"] else ""))
    return out


# --- EXPLAIN QUERY PLAN through the appliance's own SQL ------------------------------------------

def query_plans(index_path: Path | None = None, url: str = "") -> dict | str:
    """The query plan of each query's statement (appliance.query.matching builds it as the
    service does), on a read-only connection to the index after the daemon stopped.

    SQLite: EXPLAIN QUERY PLAN through matching.plan. PostgreSQL (`url`): EXPLAIN (ANALYZE,
    BUFFERS) of the statement with the server's own settings, i.e. the plan it runs, with its
    times; and, under "scans", what dialect.scans finds in matching.plan's plan (made with
    sequential scans dear: a table read whole even then has no index for the condition)."""
    try:
        from appliance.query import identifier as parsing, matching
        from appliance.query.keys import STUDY_ROOT
        from appliance.store import dialect, models
        from peewee import SqliteDatabase
    except ImportError as exc:
        return f"appliance.query not importable ({exc})"
    if not callable(getattr(matching, "plan", None)):
        return "appliance.query.matching has no plan() (EXPLAIN QUERY PLAN of an identifier's statement)"
    if url:
        from appliance.store.postgres import read_only_database
        db = read_only_database(url)
    else:
        db = SqliteDatabase(f"file:{index_path}?mode=ro", uri=True)
    models.database.initialize(db)
    plans = {}
    try:
        for query in QUERIES:
            value = fixed_value(query) or {"patient_id": "00104729", "accession": "AC000031337"}[query]
            try:
                parsed = parsing.parse(identifier(query, value), STUDY_ROOT)
                if not url:
                    plans[query] = matching.plan(parsed)
                    continue
                sql, params = matching.select(parsed).sql()
                lines = [row[0] for row in db.execute_sql("EXPLAIN (ANALYZE, BUFFERS) " + sql, params).fetchall()]
                plans[query] = [line.strip() for line in lines]
                plans.setdefault("scans", {})[query] = dialect.current().scans(matching.plan(parsed))
            except Exception as exc:  # report, do not lose the run's figures
                plans[query] = [f"could not explain: {type(exc).__name__}: {exc}"]
    finally:
        db.close()
    return plans


# --- report -----------------------------------------------------------------------------------

def machine() -> dict:
    m = store.machine()
    text = store.run(["dcmqrscp", "--version"], check=False).stdout.strip().splitlines()
    m["tools"]["dcmqrscp"] = text[0] if text else "?"
    m["sqlite"] = sqlite3.sqlite_version
    return m


def code_fingerprint() -> dict:
    """Which appliance code a daemon started now runs (the tree may have uncommitted edits)."""
    digest = hashlib.sha256()
    for path in sorted((store.REPO / "appliance").rglob("*.py")):
        digest.update(str(path.relative_to(store.REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    git = store.run(["git", "-C", str(store.REPO), "rev-parse", "--short", "HEAD"], check=False).stdout.strip()
    dirty = store.run(["git", "-C", str(store.REPO), "status", "--porcelain", "--", "appliance"],
                      check=False).stdout.splitlines()
    return {"git": git, "appliance_py_sha256": digest.hexdigest()[:16], "uncommitted": dirty}


def matches_cell(r: dict | None) -> str:
    if not r or r.get("matches_min") is None:
        return "-"
    cell = (str(r["matches_min"]) if r["matches_min"] == r["matches_max"]
            else f"{r['matches_mean']} ({r['matches_min']}-{r['matches_max']})")
    if r["matches_mean"] != r["expected_mean"]:
        cell += f" (expected {r['expected_mean']})"
    return cell


def scale(n) -> str:
    return f"{n / 1e6:g}M" if isinstance(n, int) and n >= 1_000_000 else f"{n / 1e3:g}k" if isinstance(n, int) else "?"


ENGINES = {  # results key -> what the table calls it
    "appliance": "appliance (SQLite)",
    "appliance-pg": "appliance (PostgreSQL)",
    "dcmqrscp": "dcmqrscp",
}
APPLIANCES = ("appliance", "appliance-pg")


def verdict(query: str, results: dict, client: str = "pynetdicom", engine: str = "appliance") -> str:
    app = results.get(engine) or {}
    r = (app.get("queries") or {}).get(query, {}).get(client) or {}
    if query not in TARGETS or r.get("p95_ms") is None:
        return ""
    if app.get("instances") != 1_000_000:
        return "(not 1M)"
    return "met" if r["p95_ms"] < TARGETS[query] and not r.get("problems") else "NOT met"


def compact(plan: list[str]) -> list[str]:
    """PostgreSQL's EXPLAIN ANALYZE for the printout (the record keeps it whole): the nodes,
    their conditions, rows and times, without cost estimates and buffer counts."""
    keep = ("->", "SubPlan", "Index Cond", "Hash Cond", "Recheck Cond", "Filter", "Execution Time")
    out = []
    for i, line in enumerate(plan):
        if i == 0 or line.startswith(keep):
            line = re.sub(r"\(cost=[^)]*\) ", "", line).removeprefix("->  ")
            out.append(re.sub(r"\(actual time=[0-9.]+\.\.([0-9.]+) rows=(\d+) loops=(\d+)\)",
                              r"(\2 rows x\3, \1 ms)", line))
    return out


def plan_lines(name: str, part: dict) -> list[str]:
    plans = part.get("plans")
    if not plans:
        return []
    if not isinstance(plans, dict):
        return [f"{name}: query plans skipped: {plans}"]
    pg = "scans" in plans
    lines = [f"{name}: " + ("EXPLAIN (ANALYZE, BUFFERS), the plan the server runs" if pg else "EXPLAIN QUERY PLAN")
             + f" (appliance.query.matching's statement, {scale(part.get('instances'))} index):"]
    for query in QUERIES:
        if query in plans:
            lines.append(f"  {query}: " + " | ".join(compact(plans[query]) if pg else plans[query]))
    if pg:
        lines.append("  whole-table reads with sequential scans made dear (matching.plan, dialect.scans): "
                     + "; ".join(f"{q}: {', '.join(v) or 'none'}" for q, v in plans["scans"].items()))
    return lines


def table(results: dict, previous: dict | None) -> str:
    prev_results = (previous or {}).get("results") or {}
    head = ("query", "engine", "index", "p50", "p95", "matches", "raw p50", "raw p95", "prev p50", "prev p95",
            "target", "verdict")
    rows = []
    for query, label in QUERIES.items():
        for engine, name in ENGINES.items():
            part = results.get(engine)
            if not part:
                continue
            q = (part.get("queries") or {}).get(query) or {}
            py, raw = q.get("pynetdicom") or {}, q.get("raw") or {}
            pp = (((prev_results.get(engine) or {}).get("queries") or {}).get(query) or {}).get("pynetdicom") or {}
            target = f"p95<{TARGETS[query]:g}ms" if query in TARGETS and engine in APPLIANCES else ""
            v = verdict(query, results, engine=engine) if engine in APPLIANCES else ""
            if v in ("met", "NOT met"):
                v += f" (raw: {verdict(query, results, 'raw', engine)})"
            rows.append((label, name, scale(part.get("instances")), py.get("p50_ms"), py.get("p95_ms"),
                         matches_cell(py), raw.get("p50_ms"), raw.get("p95_ms"), pp.get("p50_ms"), pp.get("p95_ms"),
                         target, v))
    lines = [store.text_table(head, [tuple("-" if v is None else v for v in r) for r in rows])]
    lines.append("ms from sending the C-FIND-RQ to the final response on loopback; p50/p95: pynetdicom SCU "
                 "(target and verdict); raw: a socket that decodes only each response's Status (the server's "
                 "share); matches: mean (min-max) over the repetitions; prev: the previous run, pynetdicom SCU")
    for engine in APPLIANCES:
        app = results.get(engine) or {}
        if not app:
            continue
        fill, bulk = app["fill"], app["fill"]["bulk"]
        extra = "".join(f", {k.replace('_seconds', '')} {bulk[k]} s"
                        for k in ("insert_seconds", "vacuum_analyze_seconds", "checkpoint_seconds") if k in bulk)
        lines.append(f"{engine} fill: {fill['seconds']} s: {fill['sample_instances']} instances through STORAGE-SCP "
                     f"in {fill['sample_ingest_seconds']} s, bulk insert of {bulk['studies']} studies in "
                     f"{bulk['seconds']} s ({extra[2:]}); index {fill['counts']}, {fill['index_bytes'] / 1e6:.0f} MB; "
                     f"daemon start {app.get('start_seconds')} s, peak RSS {app.get('peak_rss_mib')} MiB")
        if app.get("code"):
            c = app["code"]
            lines.append(f"{engine} code: {c['git']}, {len(c['uncommitted'])} uncommitted file(s) under appliance/, "
                         f"*.py sha256 {c['appliance_py_sha256']}")
        if app.get("postgres"):
            pg = app["postgres"]
            lines.append(f"{engine} server: PostgreSQL {pg.get('server_version')} on 127.0.0.1 (TCP), shared_buffers "
                         f"{pg.get('shared_buffers')}, fsync {pg.get('fsync')}, synchronous_commit "
                         f"{pg.get('synchronous_commit')}, jit {pg.get('jit')}")
    dq = results.get("dcmqrscp") or {}
    if dq:
        fill = dq["fill"]
        lines.append(f"dcmqrscp fill: {fill['seconds']} s ({fill['instances']} files written in "
                     f"{fill['write_seconds']} s, then dcmqridx); index.dat {fill['index_bytes'] / 1e6:.1f} MB")
    for name in ENGINES:
        part = results.get(name) or {}
        for query, per_client in (part.get("queries") or {}).items():
            for client in ("pynetdicom", "raw"):
                r = per_client.get(client) or {}
                if r.get("problems") or r.get("error"):
                    lines.append(f"{name} {query} ({client}): {r.get('error') or '; '.join(r['problems'])}")
                elif r.get("pending_statuses") and r["pending_statuses"] != ["0xFF00"]:
                    lines.append(f"{name} {query} ({client}): pending status {', '.join(r['pending_statuses'])}")
    for name in ENGINES:
        part = results.get(name) or {}
        measured = [r for q in (part.get("queries") or {}).values()
                    for r in (q.get("pynetdicom") or {}, q.get("raw") or {})]
        busy = [r["others_busy_percent"] for r in measured if r.get("others_busy_percent") is not None]
        if busy:
            lines.append(f"{name}: other processes kept the machine busy during the measurements: median "
                         f"{round(statistics.median(busy), 1)} %, max {max(busy)} % of all CPUs")
        index_cpu = [r["index_server_cpu_percent"] for r in measured if r.get("index_server_cpu_percent") is not None]
        if index_cpu:
            lines.append(f"{name}: of the server CPU, PostgreSQL's (postmaster and backends): median "
                         f"{round(statistics.median(index_cpu), 1)} %, max {max(index_cpu)} % of one CPU")
    for engine in APPLIANCES:
        lines += plan_lines(engine, results.get(engine) or {})
    return "\n".join(lines)


def run_appliance(engine: str, root: Path, n_studies: int, reps: int, budget: float, cluster=None) -> dict:
    """Fill an index (SQLite, or with `cluster` a new database on that PostgreSQL server), start
    the daemon on it, measure every query, stop it, read the plans."""
    shape = Shape(n_studies)
    index_url = ""
    if cluster is not None:
        _, index_url = cluster.database("find")
    log(f"{engine}: filling an index with {n_studies * 10} instances ({n_studies} studies)"
        + (f" on PostgreSQL {cluster.version}" if cluster else ""))
    fill, data_dir = fill_appliance(root, shape, index_url)
    log(f"   fill {fill['seconds']} s (bulk {fill['bulk']['seconds']} s), {fill['counts']}, "
        f"index {fill['index_bytes'] / 1e6:.0f} MB")
    app = helpers.Appliance(root / "serve", {"storage": {"data_dir": str(data_dir)}}, index_url=index_url)
    code = code_fingerprint()
    t = time.monotonic()
    app.start()
    start_s = round(time.monotonic() - t, 2)
    try:
        log(f"{engine}: started in {start_s} s; {len(QUERIES)} queries, {reps} repetitions each "
            f"(at most {budget:g} s per query)")
        title = app.config.get("query_retrieve_scp", {}).get("ae_title", QR_TITLE)
        server = (app.proc.pid, cluster.proc.pid) if cluster else app.proc.pid
        # the same values for both appliances (and a value sequence independent of the other engines)
        queries = measure(app.qr_port, title, server, shape, reps, budget, random.Random(SEED + 1))
        rss = store.vm_hwm_kib(app.proc.pid)
    finally:
        rc = app.stop(timeout=60)
    if rc != 0:
        log(f"{engine} exited {rc}; log tail:\n{app.log()[-3000:]}")
    result = {"instances": fill["counts"]["instance"], "studies": n_studies, "fill": fill, "code": code,
              "start_seconds": start_s, "peak_rss_mib": rss and round(rss / 1024, 1), "queries": queries,
              "plans": query_plans(url=index_url) if index_url else query_plans(data_dir / "index.sqlite")}
    if cluster:
        result["postgres"] = cluster.settings()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10,000 / 1,000 instances, 10 repetitions (sanity run)")
    parser.add_argument("--only", default=",".join(ENGINES),
                        help=f"comma-separated engines of {', '.join(ENGINES)} (default: all)")
    parser.add_argument("--reps", type=int, default=None, help="measured repetitions per query (default 50)")
    parser.add_argument("--budget", type=float, default=None, help="seconds per query and SCU (default 45)")
    parser.add_argument("--json", help="also write the full results to this file")
    parser.add_argument("--nagle", action="store_true", help="leave Nagle on in the SCU (pynetdicom's default)")
    parser.add_argument("--tmpdir", default=None, help="where the index and files go (default: $TMPDIR or /tmp)")
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    if unknown := only - set(ENGINES):
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    for tool in ("storescu", "echoscu", "dcmqrscp", "dcmqridx"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} not found")
    global NODELAY
    NODELAY = not args.nagle
    reps = args.reps or (10 if args.quick else 50)
    budget = args.budget or (20.0 if args.quick else 45.0)
    n_app, n_dq = (1_000, 100) if args.quick else (100_000, DCMQR_STUDIES)  # studies

    previous_path = PREVIOUS.with_name("find-previous-quick.json") if args.quick else PREVIOUS
    previous = None
    with contextlib.suppress(ValueError, OSError):
        previous = json.loads(previous_path.read_text())
    work = Path(tempfile.mkdtemp(prefix="bench-find-", dir=args.tmpdir))
    started = datetime.datetime.now(datetime.timezone.utc)
    results: dict = {}
    try:
        if "dcmqrscp" in only:
            log(f"dcmqrscp: generating {n_dq * 10} instances ({n_dq} studies) and indexing them with dcmqridx")
            shape = Shape(n_dq)
            scp = DcmQrScp(work / "dcmqrscp", shape)
            fill = scp.fill()
            log(f"   {fill['seconds']} s")
            with scp:
                log(f"dcmqrscp: {len(QUERIES)} queries, {reps} repetitions each (at most {budget:g} s per query)")
                results["dcmqrscp"] = {"instances": fill["instances"], "studies": n_dq, "fill": fill,
                                       "queries": measure(scp.port, scp.title, scp.pid, shape, reps, budget,
                                                          random.Random(SEED + 1))}
            shutil.rmtree(work / "dcmqrscp", ignore_errors=True)
        if "appliance" in only:
            results["appliance"] = run_appliance("appliance", work / "appliance", n_app, reps, budget)
            shutil.rmtree(work / "appliance", ignore_errors=True)
        if "appliance-pg" in only:
            with store.postgres_cluster() as cluster:
                results["appliance-pg"] = run_appliance("appliance-pg", work / "appliance-pg", n_app, reps, budget,
                                                        cluster)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record = {
        "date": started.isoformat(timespec="seconds"),
        "seconds": round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(), 1),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quick": args.quick,
        "seed": SEED,
        "machine": machine(),
        "results": results,
        "targets": {q: {"p95_ms_below": TARGETS[q], "client": "pynetdicom", "verdict": verdict(q, results),
                        "verdict_raw_scu": verdict(q, results, "raw"),
                        "verdict_postgresql": verdict(q, results, engine="appliance-pg"),
                        "verdict_postgresql_raw_scu": verdict(q, results, "raw", "appliance-pg")} for q in TARGETS},
    }
    print()
    if previous:
        print(f"previous: {previous.get('date')} ({'quick' if previous.get('quick') else 'full'})")
    print(table(results, previous))
    print(f"run time {record['seconds']} s")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2, default=str))
    RESULTS.mkdir(parents=True, exist_ok=True)
    if previous and previous.get("results"):
        for part, value in previous["results"].items():  # keep the half this run skipped (--only)
            record["results"].setdefault(part, value)
    previous_path.write_text(json.dumps(record, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
