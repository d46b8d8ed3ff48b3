"""`service-tool study list|show|delete|edit` against the real daemon (MG-01, MG-02, MG-03, AU-01).

Studies are stored with DCMTK storescu and pynetdicom, found with C-FIND, exported with
DCMTK movescu to a DCMTK storescp, committed with pynetdicom; the index is the real SQLite file.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

import datasets
import scu
from commitment_peer import Modality
from helpers import Appliance, dcmtk, free_port, service_tool, storescp, wait_for
from query_archive import uid

pytestmark = pytest.mark.index_backends  # content management on SQLite and on PostgreSQL (IX-01)

MODALITY = "MODALITY1"


@pytest.fixture(scope="module")
def box(tmp_path_factory, new_index_url):
    """An appliance that knows a DCMTK storescp ("STORESCP") and a modality for commitment."""
    root = tmp_path_factory.mktemp("studies")
    ports = {"STORESCP": free_port(), MODALITY: free_port()}
    app = Appliance(root / "appliance", {"remote_aes": [
        {"ae_title": title, "host": "127.0.0.1", "port": port} for title, port in ports.items()]},
        index_url=new_index_url()).start()
    app.ports = ports
    app.files = root / "files"
    app.files.mkdir()
    yield app
    assert app.stop() == 0, app.log()


def store_study(app, label: str, series: int = 1, per_series: int = 2, calling: str = "TEST_SCU",
                **elements) -> list[tuple[str, str]]:
    """Study `label` with `series` series of `per_series` CT instances, stored with DCMTK
    storescu; its (SOP class, SOP instance UID) pairs."""
    directory = app.files / label
    directory.mkdir()
    references = []
    for s in range(1, series + 1):
        for n in range(1, per_series + 1):
            instance = uid(f"{label}.{s}.{n}")
            ds = datasets.image(rows=16, columns=16, study_uid=uid(label), series_uid=uid(f"{label}.{s}"),
                                sop_instance_uid=instance, InstanceNumber=str(n), SeriesNumber=str(s), **elements)
            datasets.write(ds, directory / f"{s}-{n}.dcm")
            references.append((datasets.CT, instance))
    run = dcmtk("storescu", "-aet", calling, "-aec", app.storage_title, "127.0.0.1", str(app.storage_port),
                "+sd", str(directory), timeout=120)
    assert run.returncode == 0, run.stderr
    return references


def tool(app, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    if stdin is None:
        return service_tool(app.config_path, *args)
    return subprocess.run([str(Path(".venv/bin/service-tool").resolve()), "--config", str(app.config_path), *args],
                          input=stdin, capture_output=True, text=True, timeout=60)


def listed(app, *filters: str) -> list[dict]:
    run = tool(app, "study", "list", "--json", *filters)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def found(app, level: str, **keys) -> list:
    """Study Root C-FIND answers (identifiers) at `level`."""
    with scu.association(app.qr_port, "EX_QUERY_SCP", scu.query_contexts()) as assoc:
        responses = scu.find(assoc, datasets.STUDY_ROOT_FIND, scu.identifier({"QueryRetrieveLevel": level, **keys}))
    assert responses[-1][0] == 0x0000, responses[-1]
    return [identifier for status, identifier in responses if status in (0xFF00, 0xFF01)]


def files_of(app, study_label: str) -> list[Path]:
    rows = app.index_rows("SELECT i.path FROM instance i JOIN series s ON i.series_id = s.id JOIN study t "
                          "ON s.study_id = t.id WHERE t.study_instance_uid = ?", uid(study_label))
    return [app.data_dir / "store" / path for (path,) in rows]


def consistent(app) -> None:
    """No row without a file, no file without a row, nothing left in the spool (MG-02)."""
    rows = {path for (path,) in app.index_rows("SELECT path FROM instance")}
    files = {str(p.relative_to(app.data_dir / "store")) for p in app.stored_files() if p.stat().st_size}
    assert rows == files
    assert not [p for p in (app.data_dir / "spool").iterdir() if p.suffix == ".old"]


# --- list and show (MG-01) ----------------------------------------------------------------------------------

def test_list_filters_match_as_c_find_does(box):
    store_study(box, "S501", patient_id="MG-A", patient_name="Lister^Anna", StudyDate="20240105",
                StudyDescription="CT HEAD")
    store_study(box, "S502", series=2, patient_id="MG-B", patient_name="Lister^Bert", StudyDate="20240320")
    by_uid = {s["study_instance_uid"]: s for s in listed(box, "--name", "lister*")}
    assert set(by_uid) == {uid("S501"), uid("S502")}
    second = by_uid[uid("S502")]
    assert (second["patient_id"], second["patient_name"], second["study_date"], second["instances"],
            second["series_count"], second["modalities"]) == ("MG-B", "Lister^Bert", "20240320", 4, 2, ["CT"])
    assert second["bytes"] == sum(p.stat().st_size for p in files_of(box, "S502"))
    assert second["first_received"] <= second["last_received"] and second["last_received"].endswith("+00:00")
    assert [s["study_instance_uid"] for s in listed(box, "--patient-id", "MG-?", "--date", "20240301-")] \
        == [uid("S502")]
    today = time.strftime("%Y%m%d", time.gmtime())
    assert uid("S501") in {s["study_instance_uid"] for s in listed(box, "--received", today)}
    assert listed(box, "--received", "20000101-20000102") == []
    text = tool(box, "study", "list", "--patient-id", "MG-A")
    assert "MG-A" in text.stdout and "Lister^Anna" in text.stdout and "1 study, 2 instances" in text.stdout


def test_a_bad_filter_is_refused_naming_it(box):
    run = tool(box, "study", "list", "--date", "2024-01-05")
    assert run.returncode == 1 and "--date: StudyDate '2024-01-05' is not a valid date" in run.stderr, run.stderr
    run = tool(box, "study", "list", "--received", "yesterday")
    assert run.returncode == 1 and "--received" in run.stderr, run.stderr


def test_show_lists_series_and_unknown_study_is_refused(box):
    store_study(box, "S503", series=2, per_series=3, patient_id="MG-C")
    run = tool(box, "study", "show", uid("S503"), "--json")
    assert run.returncode == 0, run.stderr
    study = json.loads(run.stdout)
    assert [(s["series_instance_uid"], s["instances"]) for s in study["series"]] == [
        (uid("S503.1"), 3), (uid("S503.2"), 3)]
    assert study["edits"] == []
    run = tool(box, "study", "show", uid("S599"))
    assert run.returncode == 1 and f"no study {uid('S599')}" in run.stderr


# --- delete (MG-02) -----------------------------------------------------------------------------------------

def test_delete_at_each_level_frees_the_space_and_is_logged(box):
    store_study(box, "S510", series=2, per_series=3, patient_id="MG-D")
    (instance_file,) = datasets.stored_paths(box, uid("S510.1.1"))
    run = tool(box, "study", "delete", uid("S510"), "--instance", uid("S510.1.1"), "--yes")
    assert run.returncode == 0 and "1 instances, 0 series removed" in run.stdout, run.stdout + run.stderr
    assert not instance_file.exists()
    assert sorted(str(i.SOPInstanceUID) for i in found(box, "IMAGE", StudyInstanceUID=uid("S510"),
                                                       SeriesInstanceUID=uid("S510.1"), SOPInstanceUID="")) \
        == [uid("S510.1.2"), uid("S510.1.3")]
    series_files = files_of(box, "S510")
    run = tool(box, "study", "delete", uid("S510"), "--series", uid("S510.2"), "--yes")
    assert run.returncode == 0 and "1 series removed" in run.stdout, run.stdout + run.stderr
    assert [str(s.SeriesInstanceUID) for s in found(box, "SERIES", StudyInstanceUID=uid("S510"),
                                                    SeriesInstanceUID="")] == [uid("S510.1")]
    remaining = files_of(box, "S510")
    assert len(remaining) == len(series_files) - 3
    run = tool(box, "study", "delete", uid("S510"), "--yes")
    assert run.returncode == 0 and "deleted the study" in run.stdout, run.stdout + run.stderr
    assert not any(p.exists() for p in remaining)
    assert found(box, "STUDY", StudyInstanceUID=uid("S510")) == []
    assert box.index_rows("SELECT COUNT(*) FROM patient WHERE patient_id = 'MG-D'") == [(0,)]
    box.wait_log(rf"study {uid('S510')} \(patient 'MG-D'\): deleted 2 instances, \d+ bytes freed; 1 series, "
                 r"the study, the patient removed; [\d.]+ s, asked by \w+")
    consistent(box)


def test_delete_asks_first_and_refuses_what_is_not_there(box):
    store_study(box, "S511", patient_id="MG-E")
    run = tool(box, "study", "delete", uid("S511"), stdin="n\n")
    assert run.returncode == 1 and "nothing deleted" in run.stderr and "MG-E" in run.stdout
    assert len(files_of(box, "S511")) == 2
    run = tool(box, "study", "delete", uid("S511"), "--series", uid("S599.1"), "--yes")
    assert run.returncode == 1 and f"no series {uid('S599.1')} in study {uid('S511')}" in run.stderr
    run = tool(box, "study", "delete", uid("S511"), stdin="y\n")
    assert run.returncode == 0, run.stderr
    assert files_of(box, "S511") == []


def test_a_commitment_request_for_a_deleted_instance_answers_0112(box):
    """MG-02, SC-08: the commitment decision after a deletion finds no such instance."""
    references = store_study(box, "S512", calling=MODALITY)
    assert tool(box, "study", "delete", uid("S512"), "--instance", references[0][1], "--yes").returncode == 0
    report = Modality(MODALITY, box.ports[MODALITY]).commit(box.storage_port, "1.2.3.512", references)
    assert report.committed == references[1:]
    assert report.failed == [(*references[0], 0x0112)]


def test_delete_during_a_c_move_of_the_study_ends_cleanly(box, tmp_path):
    """MG-02: a C-MOVE reading the study while it is deleted finishes with a final status; what
    arrived is whole; the service keeps serving."""
    store_study(box, "S513", series=2, per_series=100)
    received = tmp_path / "received"
    received.mkdir()
    with storescp(box.ports["STORESCP"], "STORESCP", received):
        mover = subprocess.Popen(
            ["movescu", "-S", "-aet", "MOVER", "-aec", "EX_QUERY_SCP", "-aem", "STORESCP", "-k",
             "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid('S513')}", "127.0.0.1", str(box.qr_port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: len(list(received.iterdir())) >= 5, "the first instances at storescp", 60)
        deleted = tool(box, "study", "delete", uid("S513"), "--yes")
        output, _ = mover.communicate(timeout=120)
    assert deleted.returncode == 0, deleted.stderr
    assert mover.returncode in (0, 69), output  # success, or the A702 of a sub-operation whose file went
    for path in received.iterdir():
        datasets.read_dataset(datasets.dataset_bytes(path), implicit_vr=False).PixelData  # each one whole
    box.wait_log(r"C-MOVE .*(completed|failed)")
    assert "Traceback" not in box.log()
    assert scu.echo(box.qr_port, "EX_QUERY_SCP") == 0x0000
    consistent(box)


def test_kill_during_a_delete_leaves_each_instance_whole_or_gone(make_appliance):
    """MG-02: kill -9 at a point inside the deletion of 200 instances, then a restart: no row
    without a file, no file without a row. The kill lands after a delay swept across the
    deletion's duration, so that some runs catch it between its steps."""
    app = make_appliance()
    app.files = app.root / "files"
    app.files.mkdir()
    for attempt, delay in enumerate((0.0, 0.005, 0.015, 0.03)):
        label = f"S52{attempt}"
        store_study(app, label, series=2, per_series=100)
        with socket.socket(socket.AF_UNIX) as control:
            control.connect(str(app.data_dir / "control.sock"))
            control.sendall(json.dumps({"command": "study_delete", "study": uid(label)}).encode() + b"\n")
            time.sleep(delay)  # where in the deletion the power goes: swept on purpose
            os.kill(app.proc.pid, signal.SIGKILL)
        app.proc.wait(10)
        app.start()
        consistent(app)
        left = len(files_of(app, label))
        images = [found(app, "IMAGE", StudyInstanceUID=uid(label), SeriesInstanceUID=uid(f"{label}.{s}"),
                        SOPInstanceUID="") for s in (1, 2)]
        assert len(images[0]) + len(images[1]) == left


def test_delete_and_edit_need_the_running_service(make_appliance):
    app = make_appliance(start=False)
    for args in (("delete", uid("S530"), "--yes"), ("edit", uid("S530"), "--set", "AccessionNumber=X")):
        run = service_tool(app.config_path, "study", *args)
        assert run.returncode == 1 and "the service is not running" in run.stderr, run.stderr


def test_list_and_show_read_a_stopped_box(make_appliance):
    app = make_appliance()
    app.files = app.root / "files"
    app.files.mkdir()
    store_study(app, "S531", patient_id="MG-OFF")
    assert app.stop() == 0
    run = service_tool(app.config_path, "study", "list", "--json")
    assert run.returncode == 0, run.stderr
    assert [(s["patient_id"], s["instances"]) for s in json.loads(run.stdout)] == [("MG-OFF", 2)]
    run = service_tool(app.config_path, "study", "show", uid("S531"))
    assert run.returncode == 0 and "MG-OFF" in run.stdout, run.stderr


# --- edit (MG-03) -------------------------------------------------------------------------------------------

def test_an_edit_shows_in_c_find_at_once_and_in_the_history(box):
    store_study(box, "S540", patient_id="MG-F", patient_name="Typo^Tom")
    run = tool(box, "study", "edit", uid("S540"), "--set", "PatientName=Correct^Tom", "--set",
               "AccessionNumber=ACC-540", "--set", "StudyDescription=CT CHEST", "--set", "PatientSex=m",
               "--set", "PatientBirthDate=19800202", "--set", "ReferringPhysicianName=Who^Doctor")
    assert run.returncode == 0, run.stderr
    assert "PatientName: 'Typo^Tom' -> 'Correct^Tom'" in run.stdout
    (study,) = found(box, "STUDY", StudyInstanceUID=uid("S540"), PatientName="", AccessionNumber="",
                     StudyDescription="", PatientSex="", PatientBirthDate="", ReferringPhysicianName="")
    assert (study.PatientName, study.AccessionNumber, study.StudyDescription, study.PatientSex,
            study.PatientBirthDate, study.ReferringPhysicianName) == (
        "Correct^Tom", "ACC-540", "CT CHEST", "M", "19800202", "Who^Doctor")
    assert [str(s.StudyInstanceUID) for s in found(box, "STUDY", PatientName="correct^tom",
                                                                      StudyInstanceUID="")] == [uid("S540")]
    edits = json.loads(tool(box, "study", "show", uid("S540"), "--json").stdout)["edits"]
    assert [(e["keyword"], e["old_value"], e["new_value"]) for e in edits] == [
        ("PatientName", "Typo^Tom", "Correct^Tom"), ("PatientBirthDate", "19700101", "19800202"),
        ("PatientSex", "F", "M"), ("AccessionNumber", "ACC1", "ACC-540"), ("StudyDescription", "", "CT CHEST"),
        ("ReferringPhysicianName", "Ref^Doctor", "Who^Doctor")]
    assert all(e["edited_at"].endswith("+00:00") for e in edits)
    box.wait_log(rf"study {uid('S540')} edited by \w+: PatientName 'Typo\^Tom' -> 'Correct\^Tom'")


def test_an_edited_study_is_exported_with_the_new_values_and_the_file_is_unchanged(box, tmp_path):
    """MG-03, D-9: movescu to a DCMTK storescp; the received file carries the edited values,
    every other element is byte-equal to the stored file, which is unchanged."""
    store_study(box, "S541", per_series=1, patient_id="MG-G", patient_name="Old^Name")
    (stored,) = files_of(box, "S541")
    before = hashlib.sha256(stored.read_bytes()).hexdigest()
    run = tool(box, "study", "edit", uid("S541"), "--set", "PatientName=New^Name", "--set",
               "AccessionNumber=ACC-541")
    assert run.returncode == 0, run.stderr
    received = tmp_path / "received"
    received.mkdir()
    with storescp(box.ports["STORESCP"], "STORESCP", received):
        moved = dcmtk("movescu", "-S", "-aet", "MOVER", "-aec", "EX_QUERY_SCP", "-aem", "STORESCP", "-k",
                      "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid('S541')}", "127.0.0.1",
                      str(box.qr_port))
        assert moved.returncode == 0, moved.stdout + moved.stderr
        (arrived,) = wait_for(lambda: list(received.iterdir()), "the exported instance")
    original = datasets.read_dataset(datasets.dataset_bytes(stored), implicit_vr=False)
    sent = datasets.read_dataset(datasets.dataset_bytes(arrived), implicit_vr=False)
    differ = {int(tag) for tag in set(original.keys()) | set(sent.keys())
              if (original.get_item(tag).value if tag in original else None)
              != (sent.get_item(tag).value if tag in sent else None)}
    assert differ == {0x00100010, 0x00080050}
    assert (sent.PatientName, sent.AccessionNumber) == ("New^Name", "ACC-541")
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == before


def test_a_new_patient_id_moves_the_study(box):
    store_study(box, "S542", patient_id="MG-H", patient_name="Move^Me")
    store_study(box, "S543", patient_id="MG-I", patient_name="Target^Tina")
    run = tool(box, "study", "edit", uid("S542"), "--set", "PatientID=MG-I")
    assert run.returncode == 0, run.stderr
    assert box.index_rows("SELECT COUNT(*) FROM patient WHERE patient_id = 'MG-H'") == [(0,)]
    assert sorted(str(s.StudyInstanceUID) for s in found(box, "STUDY", PatientID="MG-I", StudyInstanceUID="")) == [
        uid("S542"), uid("S543")]
    run = tool(box, "study", "edit", uid("S542"), "--set", "PatientID=MG-NEW")
    assert run.returncode == 0, run.stderr
    (study,) = found(box, "STUDY", PatientID="MG-NEW", PatientName="", StudyInstanceUID="")
    assert (str(study.StudyInstanceUID), study.PatientName) == (uid("S542"), "Target^Tina")
    # Later instances of the edited study are stored under it.
    with scu.association(box.storage_port, box.storage_title) as assoc:
        ds = datasets.image(rows=8, columns=8, study_uid=uid("S542"), series_uid=uid("S542.1"),
                            sop_instance_uid=uid("S542.1.9"), patient_id="MG-H", patient_name="Move^Me")
        assert scu.send_file(assoc, datasets.write(ds, box.files / "late.dcm")) in (0x0000, 0xB000)
    assert [s["instances"] for s in listed(box, "--patient-id", "MG-NEW")] == [3]


def test_an_edited_patient_keeps_receiving_its_studies_and_no_other_patient_gets_in(box):
    """MG-03 with ST-26: after the patient's name was corrected through one of its studies,
    later instances of both studies, sent with the old name, are stored under them (no other
    patient: the operator said who it is); one naming another Patient ID is still a conflict
    (A900, hierarchy_conflict refuse)."""
    store_study(box, "S545", patient_id="MG-K", patient_name="Wrong^Name")
    store_study(box, "S546", patient_id="MG-K", patient_name="Wrong^Name")
    run = tool(box, "study", "edit", uid("S545"), "--set", "PatientName=Right^Name")
    assert run.returncode == 0, run.stderr

    def late(assoc, study: str, patient_id: str) -> int:
        ds = datasets.image(rows=8, columns=8, study_uid=uid(study), series_uid=uid(f"{study}.1"),
                            patient_id=patient_id, patient_name="Wrong^Name")
        return scu.send_file(assoc, datasets.write(ds, box.files / "late.dcm"))

    with scu.association(box.storage_port, box.storage_title) as assoc:
        assert late(assoc, "S545", "MG-K") == 0x0000
        assert late(assoc, "S546", "MG-K") == 0x0000
        assert late(assoc, "S545", "MG-OTHER") == 0xA900
    assert [(s["study_instance_uid"], s["patient_name"], s["instances"]) for s in listed(box, "--patient-id", "MG-K")] \
        == [(uid("S545"), "Right^Name", 3), (uid("S546"), "Right^Name", 3)]
    box.wait_log(rf"C-STORE .* status 0xA900: Study Instance UID of another patient: {uid('S545')} belongs to "
                 r"patient MG-K, this instance names patient MG-OTHER\n")


@pytest.mark.parametrize("assignment, why", [
    ("PatientBirthDate=19801332", "PatientBirthDate: '19801332' is not a date"),
    ("AccessionNumber=" + "A" * 17, "AccessionNumber: 17 characters, more than the 16 of SH"),
    ("PatientName=A^B^C", "family and given name only"),
    ("PatientSex=X", "PatientSex: M, F, O or empty"),
    ("PatientID=", "a study needs a Patient ID"),
    ("StudyDescription=two\\values", "one value, without control characters or backslashes"),
    ("Modality=MR", "Modality cannot be edited"),
])
def test_invalid_edits_are_refused_naming_the_keyword(box, assignment, why):
    if not listed(box, "--patient-id", "MG-J"):
        store_study(box, "S544", patient_id="MG-J")
    run = tool(box, "study", "edit", uid("S544"), "--set", assignment)
    assert run.returncode == 1 and why in run.stderr, run.stderr
    assert json.loads(tool(box, "study", "show", uid("S544"), "--json").stdout)["edits"] == []


def test_a_study_uid_under_two_patients_is_chosen_by_patient_id(make_appliance):
    """ST-26 keep, MG-01..MG-03: one Study Instance UID filed under two patients; the study
    commands ask which (--patient-id) instead of taking the first."""
    app = make_appliance({"storage_scp": {"hierarchy_conflict": "keep"}})
    app.files = app.root / "files"
    app.files.mkdir()
    store_study(app, "S550", patient_id="MG-K1", patient_name="Keep^One")
    with scu.association(app.storage_port, app.storage_title) as assoc:
        ds = datasets.image(rows=8, columns=8, study_uid=uid("S550"), series_uid=uid("S550.7"),
                            sop_instance_uid=uid("S550.7.1"), patient_id="MG-K2", patient_name="Keep^Two")
        assert scu.send_file(assoc, datasets.write(ds, app.files / "other.dcm")) == 0x0000
    for args in (("show", uid("S550")), ("delete", uid("S550"), "--yes"),
                 ("edit", uid("S550"), "--set", "AccessionNumber=X")):
        run = service_tool(app.config_path, "study", *args)
        assert run.returncode == 1 and "is filed under 2 patients ('MG-K1', 'MG-K2'" in run.stderr, run.stderr
    run = service_tool(app.config_path, "study", "edit", uid("S550"), "--patient-id", "MG-K2", "--set", "PatientID=MG-K1")
    assert run.returncode == 1 and "has a study with this UID already" in run.stderr, run.stderr
    run = service_tool(app.config_path, "study", "delete", uid("S550"), "--patient-id", "MG-K1", "--yes")
    assert run.returncode == 0, run.stderr
    (left,) = listed(app)
    assert (left["patient_id"], left["instances"]) == ("MG-K2", 1)
    run = service_tool(app.config_path, "study", "show", uid("S550"), "--json")
    assert run.returncode == 0 and json.loads(run.stdout)["patient_id"] == "MG-K2", run.stderr
