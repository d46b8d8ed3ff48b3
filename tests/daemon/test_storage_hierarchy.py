"""ST-26: an instance is never filed silently under a parent it does not name.

An instance whose Series Instance UID the index holds in another study, or whose Study
Instance UID it holds for another patient (the Patient ID after EL-06/EL-07), is refused with
A900, an Error Comment and a log line naming both parents (storage_scp.hierarchy_conflict
"refuse", the default), or stored under the study and series it names ("keep"). Either way a
C-FIND or C-MOVE of each study finds exactly the instances acknowledged under it: pynetdicom
C-FIND at every level of both models, DCMTK movescu to DCMTK storescp for the C-MOVEs. Then a
reindex decides as the C-STOREs did. (The schema behind "keep": tests/unit/test_index_migrations.py.)
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from dataclasses import dataclass

import pytest
from pydicom.filereader import read_file_meta_info

import datasets
import scu
from helpers import Appliance, free_port, says_why, service_tool, wait_for
from helpers import storescp as storescp_process
from query_archive import label, uid
from test_move_dcmtk import DESTINATION, StoreSCP, assert_progress, movescu

pytestmark = pytest.mark.index_backends  # C-STORE on SQLite and on PostgreSQL (IX-01)

SUCCESS, PENDING, MISMATCH = 0x0000, 0xFF00, 0xA900
ALPHA = ("Alpha^Ann", "PID-H1")
BETA = ("Beta^Bob", "PID-H2")
GAMMA = ("Gamma^Gus", "PID-H1")  # ALPHA's Patient ID, another name: indexed as PID-H1_2 (EL-06)
ALPHA_CASE = ("ALPHA^ann", "PID-H1")  # ALPHA's name in other case: the same patient (EL-07)


@dataclass(frozen=True)
class Sent:
    """An instance stored in this order, and the refusal ST-26 gives it under "refuse"."""

    instance: str  # labels (query_archive.uid)
    patient: tuple[str, str]  # (name, Patient ID as sent)
    study: str
    series: str
    conflict: str = ""
    indexed_patient_id: str = ""  # when EL-06 coerces it

    @property
    def pid(self) -> str:
        return self.indexed_patient_id or self.patient[1]


SENT = (
    Sent("S401.1.1", ALPHA, "S401", "S401.1"),
    Sent("S402.1.1", ALPHA, "S402", "S402.1"),
    Sent("S490.1", ALPHA, "S402", "S401.1",
         f"Series Instance UID in another study: {uid('S401.1')} belongs to study {uid('S401')}, "
         f"this instance names study {uid('S402')}"),
    Sent("S403.1.1", ALPHA, "S403", "S403.1"),
    Sent("S490.2", BETA, "S403", "S403.2",
         f"Study Instance UID of another patient: {uid('S403')} belongs to patient PID-H1, "
         "this instance names patient PID-H2"),
    Sent("S404.1.1", ALPHA, "S404", "S404.1"),
    Sent("S490.3", GAMMA, "S404", "S404.2",
         f"Study Instance UID of another patient: {uid('S404')} belongs to patient PID-H1, "
         "this instance names patient PID-H1_2 (Patient ID PID-H1 of another name, EL-06)", "PID-H1_2"),
    Sent("S404.1.2", ALPHA_CASE, "S404", "S404.1"),
    Sent("S405.1.1", GAMMA, "S405", "S405.1", indexed_patient_id="PID-H1_2"),  # EL-07: the same coerced ID
)
STUDIES = sorted({s.study for s in SENT})


def acknowledged(policy: str) -> list[Sent]:
    return [s for s in SENT if not s.conflict or policy == "keep"]


@pytest.fixture(scope="module", params=["refuse", "keep"])
def app(request, tmp_path_factory, new_index_url):
    """An appliance with `hierarchy_conflict` = the param, STORESCP in its remote AE table,
    that stored SENT over one association (`app.responses`: each C-STORE-RSP's status)."""
    root = tmp_path_factory.mktemp(f"hierarchy-{request.param}")
    app = Appliance(root / "appliance", {
        "storage_scp": {"hierarchy_conflict": request.param},
        "remote_aes": [{"ae_title": DESTINATION, "host": "127.0.0.1", "port": free_port()}]},
        index_url=new_index_url()).start()
    app.policy = request.param
    app.responses = {}
    with scu.association(app.storage_port, app.storage_title) as assoc:
        for sent in SENT:
            name, patient_id = sent.patient
            ds = datasets.image(datasets.CT, rows=8, columns=8, patient_name=name, patient_id=patient_id,
                                study_uid=uid(sent.study), series_uid=uid(sent.series),
                                sop_instance_uid=uid(sent.instance))
            app.responses[sent.instance] = scu.store_response(assoc, datasets.write(ds, root / f"{sent.instance}.dcm"))
    yield app
    assert app.stop() == 0, app.log()


def hierarchy(app) -> list[tuple[str, str, str, str]]:
    """(Patient ID, study, series, instance) of every indexed instance, as labels."""
    found = app.index_rows("SELECT p.patient_id, st.study_instance_uid, se.series_instance_uid, i.sop_instance_uid "
                           "FROM instance i JOIN series se ON i.series_id = se.id JOIN study st ON se.study_id = st.id "
                           "JOIN patient p ON st.patient_id = p.id")
    return sorted((pid, label(study), label(series), label(sop)) for pid, study, series, sop in found)


def as_rows(sent: list[Sent]) -> list[tuple[str, str, str, str]]:
    return sorted((s.pid, s.study, s.series, s.instance) for s in sent)


def test_conflicts_are_refused_or_filed_where_the_instance_says(app):
    """ST-26: "refuse": A900 with an Error Comment that begins with the conflict (UL-05), one
    log line naming both parents (a WARNING: the sender's data, issue 22), nothing stored.
    "keep": 0000, a warning, and the instance under the study and series it names. EL-07:
    ALPHA's name in other case is no conflict."""
    for sent in SENT:
        response = app.responses[sent.instance]
        if sent.conflict and app.policy == "refuse":
            assert response.Status == MISMATCH, sent.instance
            assert says_why(response.ErrorComment, sent.conflict), (response.ErrorComment, sent.conflict)
            app.wait_log(rf"WARNING appliance\.storage_scp: .*C-STORE {re.escape(uid(sent.instance))} class "
                         rf"{re.escape(datasets.CT)} status 0xA900: {re.escape(sent.conflict)}\n")
        else:
            assert response.Status == SUCCESS and "ErrorComment" not in response, sent.instance
        if sent.conflict and app.policy == "keep":
            app.wait_log(rf"WARNING appliance\.store\.ingest: {re.escape(sent.conflict)}; filed under the study and "
                         r"series it names \(hierarchy_conflict keep\)\n")
    assert hierarchy(app) == as_rows(acknowledged(app.policy))
    assert len(app.stored_files()) == len(acknowledged(app.policy)) and app.in_flight() == []


# --- C-FIND: every level of both models -----------------------------------------------------------

COUNTS = {"PATIENT": "NumberOfPatientRelatedInstances", "STUDY": "NumberOfStudyRelatedInstances",
          "SERIES": "NumberOfSeriesRelatedInstances"}


def expected(acknowledged_rows: list[Sent], level: str, **fixed: str) -> list:
    """What a C-FIND at `level` restricted to `fixed` (pid, study, series) answers: per patient,
    study row (a Study Instance UID may be filed for two patients) or series row, its Patient
    ID or series and its instance count; at IMAGE level the instances."""
    rows = [s for s in acknowledged_rows if all(getattr(s, key) == value for key, value in fixed.items())]
    if level == "IMAGE":
        return sorted(s.instance for s in rows)
    parent = {"PATIENT": ("pid",), "STUDY": ("pid", "study"), "SERIES": ("pid", "study", "series")}[level]
    counts = Counter(tuple(getattr(s, key) for key in parent) for s in rows)
    return sorted((key[-1] if level == "SERIES" else key[0], count) for key, count in counts.items())


def answered(assoc, sop_class: str, level: str, fixed: dict) -> list:
    """The C-FIND's answers, in the form of `expected`."""
    keys = {"QueryRetrieveLevel": level, "PatientID": fixed.get("pid", "")}
    if level != "PATIENT":
        keys["StudyInstanceUID"] = uid(fixed["study"])
    if level in ("SERIES", "IMAGE"):
        keys["SeriesInstanceUID"] = uid(fixed["series"]) if "series" in fixed else ""
    keys.update({"SOPInstanceUID": ""} if level == "IMAGE" else {COUNTS[level]: ""})
    *pending, (final, _) = scu.find(assoc, sop_class, scu.identifier(keys))
    assert final == SUCCESS and {status for status, _ in pending} <= {PENDING}, (keys, final)
    if level == "IMAGE":
        return sorted(label(ds.SOPInstanceUID) for _, ds in pending)
    if level == "SERIES":
        return sorted((label(ds.SeriesInstanceUID), int(ds[COUNTS[level]].value)) for _, ds in pending)
    return sorted((str(ds.PatientID), int(ds[COUNTS[level]].value)) for _, ds in pending)


def _restrictions(model: str, level: str) -> list[dict]:
    """Every combination SENT names, for the keys a query at `level` of `model` needs."""
    keys = {"PATIENT": ("pid",), "STUDY": ("pid", "study"), "SERIES": ("pid", "study"),
            "IMAGE": ("pid", "study", "series")}[level]
    if model == "Study Root":
        keys = tuple(key for key in keys if key != "pid")
    return [dict(zip(keys, combination)) for combination in sorted({tuple(getattr(s, k) for k in keys) for s in SENT})]


FINDS = [("Patient Root", datasets.PATIENT_ROOT_FIND, level) for level in ("PATIENT", "STUDY", "SERIES", "IMAGE")] + \
        [("Study Root", datasets.STUDY_ROOT_FIND, level) for level in ("STUDY", "SERIES", "IMAGE")]


@pytest.mark.parametrize("model, sop_class, level", FINDS, ids=[f"{m}-{lv}" for m, _, lv in FINDS])
def test_c_find_of_each_study_finds_exactly_what_was_acknowledged_under_it(app, model, sop_class, level):
    """ST-26, QF-01: every patient, study, series and image level query over what SENT names
    (refused instances' parents included) answers what the acknowledged instances make:
    under "keep" a Study Root STUDY query for S403 finds it for both patients, and S401's
    series S401.1 does not hold the instance filed in S402's series of that UID."""
    with scu.association(app.qr_port, "EX_QUERY_SCP", scu.query_contexts()) as assoc:
        for fixed in _restrictions(model, level):
            assert answered(assoc, sop_class, level, fixed) == expected(acknowledged(app.policy), level, **fixed), \
                fixed


# --- C-MOVE: movescu to storescp ----------------------------------------------------------------

@pytest.fixture(scope="module")
def storescp(app, tmp_path_factory):
    root = tmp_path_factory.mktemp("storescp")
    directory = root / "received"
    directory.mkdir()
    port = next(ae["port"] for ae in app.config["remote_aes"] if ae["ae_title"] == DESTINATION)
    with storescp_process(port, DESTINATION, directory, "-d", "+B", log=root / "storescp.log") as proc:
        yield StoreSCP(port, directory, root / "storescp.log", proc)


def _series_members(series: str) -> str:
    """Every instance SENT with this Series Instance UID, whatever study it named."""
    return "\\".join(uid(s.instance) for s in SENT if s.series == series)


MOVES = {
    **{f"study-root-STUDY-{study}": ("-S", "STUDY", {"study": study}) for study in STUDIES},
    "patient-root-STUDY-S405-of-PID-H1_2": ("-P", "STUDY", {"pid": "PID-H1_2", "study": "S405"}),
    "study-root-SERIES-S401.1-in-S401": ("-S", "SERIES", {"study": "S401", "series": "S401.1"}),
    "study-root-SERIES-S401.1-in-S402": ("-S", "SERIES", {"study": "S402", "series": "S401.1"}),
    "study-root-IMAGE-S401.1-in-S401": ("-S", "IMAGE", {"study": "S401", "series": "S401.1"}),
    "study-root-IMAGE-S401.1-in-S402": ("-S", "IMAGE", {"study": "S402", "series": "S401.1"}),
    "patient-root-STUDY-S403-of-PID-H1": ("-P", "STUDY", {"pid": "PID-H1", "study": "S403"}),
    "patient-root-STUDY-S403-of-PID-H2": ("-P", "STUDY", {"pid": "PID-H2", "study": "S403"}),
    "patient-root-STUDY-S404-of-PID-H1": ("-P", "STUDY", {"pid": "PID-H1", "study": "S404"}),
    "patient-root-STUDY-S404-of-PID-H1_2": ("-P", "STUDY", {"pid": "PID-H1_2", "study": "S404"}),
    "patient-root-SERIES-S401.1-in-S402": ("-P", "SERIES", {"pid": "PID-H1", "study": "S402", "series": "S401.1"}),
    "patient-root-IMAGE-S403.2": ("-P", "IMAGE", {"pid": "PID-H2", "study": "S403", "series": "S403.2"}),
}


@pytest.mark.parametrize("model, level, fixed", MOVES.values(), ids=MOVES.keys())
def test_c_move_of_each_study_sends_exactly_what_was_acknowledged_under_it(app, storescp, model, level, fixed):
    """ST-26, QM-01: movescu asks for a study, series or images (at IMAGE level every instance
    sent with the series' UID, in whichever study); storescp receives exactly the instances
    acknowledged under what was named, or nothing. (tests/daemon/test_move_dcmtk.py checks the bytes;
    here EL-06's coerced Patient IDs go out overlaid, SU-14.)"""
    destination = storescp.reset()
    keys = [f"PatientID={fixed['pid']}"] if "pid" in fixed else []
    keys.append(f"StudyInstanceUID={uid(fixed['study'])}")
    if "series" in fixed:
        keys.append(f"SeriesInstanceUID={uid(fixed['series'])}")
    if level == "IMAGE":
        keys.append(f"SOPInstanceUID={_series_members(fixed['series'])}")
    wanted = expected(acknowledged(app.policy), "IMAGE", **fixed)

    moved = movescu(app, model, level, keys)

    assert_progress(moved, len(wanted))
    if wanted:
        wait_for(lambda: "Association Release" in destination.log(), "storescp to log the release")
    arrived = [label(read_file_meta_info(path).MediaStorageSOPInstanceUID) for path in destination.files()]
    assert sorted(arrived) == wanted, destination.log()


# --- reindex -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("reindexed_under", ["refuse", "keep"])
def test_reindex_decides_as_the_c_stores_did(app, make_appliance, reindexed_under):
    """ST-26 with reindex: rebuilt from the files alone under the policy they were stored with,
    the index files every instance where it was; an archive stored under "keep" and reindexed
    under "refuse" keeps the conflicting files out of the index, reported and left in place."""
    app.stored_files()  # the spool settled: every acknowledged file is stored for good
    copy = make_appliance({"storage_scp": {"hierarchy_conflict": reindexed_under}}, start=False,
                          name=f"reindex-{reindexed_under}")
    shutil.copytree(app.data_dir, copy.data_dir, ignore=shutil.ignore_patterns("index.sqlite*", "control.sock"))

    result = service_tool(copy.config_path, "reindex", "--json")

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    kept = acknowledged("keep" if app.policy == reindexed_under == "keep" else "refuse")
    assert hierarchy(copy) == as_rows(kept)
    refused = len(acknowledged(app.policy)) - len(kept)
    assert (summary["conflicting"], len(summary["conflicting_files"])) == (refused, refused)
    assert all(line.startswith("store/") and "belongs to" in line for line in summary["conflicting_files"])
    assert len(copy.stored_files()) == len(acknowledged(app.policy))  # left in place
