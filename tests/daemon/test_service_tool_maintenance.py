"""`service-tool reindex` and `service-tool backup` against the real daemon's data directory.

One appliance stores a small archive whose index values depend on arrival order (a Patient ID
coerced for a second name, EL-06), on the policy (a default Accession Number, EL-02) and on a
duplicate SOP Instance UID (ST-17); each reindex test works on a copy of its data directory
and compares the rebuilt index, or the daemon's C-FIND answers from it, with the original's.
On both index backends (IX-01): on PostgreSQL the copy of the data directory comes with a copy
of the original's database.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import threading
from contextlib import closing
from pathlib import Path

import pytest

import datasets
import index_backend as backend
import scu
from helpers import Appliance, service_tool, tool, wait_for
from query_archive import uid

pytestmark = pytest.mark.index_backends

NOBODY = 65534  # uid and gid of Debian's nobody and nogroup
POLICY = {"storage_scp": {"default_values": {"accession_number": "NOACC"}}}
STUDY_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "OtherPatientIDs", "StudyDate",
              "StudyTime", "AccessionNumber", "StudyID", "StudyInstanceUID", "ReferringPhysicianName",
              "StudyDescription", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
IMAGE_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "InstanceNumber")
STUDIES = ("S301", "S302", "S303", "S304")
DUPLICATE = uid("S304.1.1")


def run(app: Appliance, *args: str) -> subprocess.CompletedProcess:
    return service_tool(app.config_path, *args)


def sent_instances():
    """(name, dataset) in the order they are stored."""
    def image(study, series, number, **kwargs):
        return datasets.image(rows=8, columns=8, study_uid=uid(study), series_uid=uid(f"{study}.{series}"),
                              sop_instance_uid=uid(f"{study}.{series}.{number}"),
                              **{"InstanceNumber": str(number), **kwargs})
    yield "S301 first", image("S301", 1, 1, StudyDescription="CT CHEST")
    yield "S301 second", image("S301", 1, 2, StudyDescription="CT CHEST")
    yield "S301 other series", image("S301", 2, 1, StudyDescription="CT CHEST", SeriesNumber="2")
    yield "EL-06: PID-1 of another name", image("S302", 1, 1, patient_name="Roe^Richard")
    yield "EL-02: no accession number", image("S303", 1, 1, AccessionNumber="", PatientSex="X")
    yield "duplicate, first", image("S304", 1, 1)
    yield "ST-17: duplicate, second", image("S304", 1, 1, InstanceNumber="2")


def answers(app: Appliance) -> dict:
    """Study Root C-FIND answers at STUDY level (every study) and IMAGE level (the study with
    the duplicate, whose reassigned UID is random: only its form is compared)."""
    def found(assoc, keys: dict) -> list[dict]:
        rows = []
        *pending, (final, _) = scu.find(assoc, datasets.STUDY_ROOT_FIND, scu.identifier(keys))
        assert final == 0x0000
        for status, identifier in pending:
            assert status == 0xFF00
            row = {e.keyword: str(e.value) for e in identifier if e.keyword in keys}
            if row.get("SOPInstanceUID", "").startswith("2.25."):
                row["SOPInstanceUID"] = "2.25.(reassigned)"
            rows.append(row)
        return sorted(rows, key=lambda r: sorted(r.items()))

    with scu.association(app.qr_port, "EX_QUERY_SCP", scu.query_contexts()) as assoc:
        return {"studies": found(assoc, {"QueryRetrieveLevel": "STUDY", **dict.fromkeys(STUDY_KEYS, ""),
                                         "StudyInstanceUID": "\\".join(uid(s) for s in STUDIES)}),
                "images": found(assoc, {"QueryRetrieveLevel": "IMAGE", **dict.fromkeys(IMAGE_KEYS, ""),
                                        "StudyInstanceUID": uid("S304"), "SeriesInstanceUID": uid("S304.1")})}


def instance_rows(app: Appliance) -> list[tuple]:
    return app.index_rows("SELECT path, sop_instance_uid, file_sop_instance_uid, received_at, calling_ae, "
                          "transfer_syntax_uid, size FROM instance ORDER BY path")


@pytest.fixture(scope="module")
def stored(tmp_path_factory, new_index_url):
    """A stopped appliance that stored `sent_instances`, with its C-FIND answers and index rows."""
    root = tmp_path_factory.mktemp("maintenance")
    app = Appliance(root / "appliance", POLICY, index_url=new_index_url()).start()
    try:
        with scu.association(app.storage_port, app.storage_title, calling="MODALITY1") as assoc:
            for n, (name, ds) in enumerate(sent_instances()):
                assert scu.send_file(assoc, datasets.write(ds, root / f"{n}.dcm")) == 0, name
        app.answers = answers(app)
    finally:
        assert app.stop() == 0, app.log()
    app.rows = instance_rows(app)
    studies = {study["StudyInstanceUID"]: study for study in app.answers["studies"]}
    assert studies[uid("S302")]["PatientID"] == "PID-1_2"  # the archive holds what it should
    assert studies[uid("S303")]["AccessionNumber"] == "NOACC"
    assert [r["SOPInstanceUID"] for r in app.answers["images"]] == [DUPLICATE, "2.25.(reassigned)"]
    return app


@pytest.fixture
def archive(stored, make_appliance):
    """A stopped appliance on a copy of `stored`'s data directory (file times kept), and of its database."""
    app = make_appliance(POLICY, start=False)
    shutil.copytree(stored.data_dir, app.data_dir)
    backend.copy(stored, app)
    return app


def index_files(app: Appliance) -> list[Path]:
    return [app.data_dir / f"index.sqlite{suffix}" for suffix in ("", "-wal", "-shm")]


def aside(app: Appliance) -> list[Path]:
    return aside_of(app.data_dir)


def aside_of(directory: Path) -> list[Path]:
    return sorted(directory.glob("index.sqlite.replaced-*"))


def test_reindex_rebuilds_a_lost_index_that_answers_as_before(archive, stored):
    backend.lose(archive)  # on PostgreSQL: a new, empty database

    result = run(archive, "reindex", "--json", "--progress-every", "3")

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert {k: summary[k] for k in ("files", "instances", "studies", "unreadable", "superseded", "old_index",
                                    "carried_instances", "carried_commitment_requests")} == {
        "files": 7, "instances": 7, "studies": 4, "unreadable": 0, "superseded": 0, "old_index": None,
        "carried_instances": 0, "carried_commitment_requests": 0}
    assert result.stderr.splitlines() == [
        "reindex: 3/7 files", "warning: Patient ID 'PID-1' already belongs to another name; indexed as 'PID-1_2'",
        "reindex: 6/7 files"]
    rebuilt = {row[0]: row for row in instance_rows(archive)}
    for path, indexed_uid, file_uid, _, calling, syntax, size in stored.rows:
        # The first file keeps the duplicated UID and the second gets a new one (ST-17); from whom
        # comes from the File Meta's Source AE Title; only when is lost (the file's time instead).
        assert rebuilt[path][2] == file_uid and (rebuilt[path][1] == file_uid) == (indexed_uid == file_uid)
        assert rebuilt[path][4:] == (calling, syntax, size) and calling == "MODALITY1"
    archive.start()
    assert answers(archive) == stored.answers


def test_reindex_run_by_root_leaves_the_archive_to_the_services_user(archive, tmp_path):
    # On the box the data directory belongs to the service's user and the installer is root: an
    # index root made would stop the service from starting.
    outside = Path(tempfile.mkdtemp(prefix="reindex-owner-"))  # a path the user can reach
    try:
        outside.chmod(0o755)
        directory = outside / "data"
        shutil.copytree(archive.data_dir, directory)
        for path in [directory, *directory.rglob("*")]:
            os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
        config = tmp_path / "owned.toml"
        config.write_text(f'[storage]\ndata_dir = "{directory}"\n[index]\nurl = "{archive.index_url}"\n')

        result = service_tool(config, "reindex")

        assert result.returncode == 0, result.stderr
        assert aside_of(directory)  # a new index was made (on PostgreSQL: the old content kept)
        assert {(path.name, path.stat().st_uid, path.stat().st_gid) for path in directory.rglob("*")
                if (path.stat().st_uid, path.stat().st_gid) != (NOBODY, NOBODY)} == set()
    finally:
        shutil.rmtree(outside)


@pytest.mark.index_backends("sqlite")  # an index file's damage
def test_reindex_over_a_corrupted_index_keeps_it_aside(archive, stored):
    garbage = os.urandom(8192)
    index_files(archive)[0].write_bytes(garbage)

    result = run(archive, "reindex")

    assert result.returncode == 0, result.stderr
    [kept] = aside(archive)
    assert kept.read_bytes() == garbage
    lines = result.stdout.splitlines()
    assert lines[0].startswith("index rebuilt: 7 files, 7 instances, 4 studies, 0 unreadable, ")
    assert lines[-2].startswith("old index not used (file is not a database): received times are file times")
    assert lines[-1] == f"old index kept as {kept}"
    archive.start()
    assert answers(archive) == stored.answers


def test_reindex_over_a_readable_index_carries_over_what_the_files_lack(archive, stored):
    """Received time, calling AE, the ST-17 UID and a pending commitment report (SC-24)."""
    commitment = ("1.2.3.4", "MODALITY1", "2026-01-01 10:00:00+00:00", f'[["{datasets.CT}", "{DUPLICATE}"]]',
                  "[]", 1, 1767261600.0)
    backend.execute(archive, "INSERT INTO commitment_request (transaction_uid, requester, received_at, committed, "
                             "failed, attempts, next_attempt) VALUES (?, ?, ?, ?, ?, ?, ?)", *commitment)
    as_read = archive.index_rows("SELECT transaction_uid, requester, received_at, committed, failed, attempts, "
                                 "next_attempt FROM commitment_request")
    old_inode = index_files(archive)[0].stat().st_ino if not backend.is_postgresql(archive) else None

    result = run(archive, "reindex", "--json")

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["carried_instances"], summary["carried_commitment_requests"]) == (7, 1)
    assert summary["old_index_unreadable"] == ""
    assert instance_rows(archive) == stored.rows
    assert archive.index_rows("SELECT transaction_uid, requester, received_at, committed, failed, attempts, "
                              "next_attempt FROM commitment_request") == as_read
    [kept] = aside(archive)
    assert str(kept) == summary["old_index"]
    if old_inode is not None:  # SQLite: the old file itself
        assert kept.stat().st_ino == old_inode and as_read == [commitment]
    else:  # PostgreSQL: its content as it was, in an SQLite file with this release's schema
        with closing(sqlite3.connect(f"file:{kept}?mode=ro", uri=True)) as db:
            assert db.execute("SELECT transaction_uid, requester, received_at FROM commitment_request").fetchall() \
                == [commitment[:3]]
            assert sorted(db.execute("SELECT path, sop_instance_uid, file_sop_instance_uid, calling_ae "
                                     "FROM instance").fetchall()) == [(r[0], r[1], r[2], r[4]) for r in stored.rows]
    assert not any(p.exists() for p in index_files(archive)[1:])


def test_reindex_is_refused_while_the_service_runs(archive, stored):
    archive.start()
    listing = sorted(p.name for p in archive.data_dir.iterdir())
    digest = None if backend.is_postgresql(archive) else \
        hashlib.sha256(index_files(archive)[0].read_bytes()).hexdigest()

    result = run(archive, "reindex")

    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith(f"reindex refused: {archive.data_dir} is in use by the appliance service (pid ")
    assert sorted(p.name for p in archive.data_dir.iterdir()) == listing
    assert instance_rows(archive) == stored.rows
    if digest is not None:
        assert hashlib.sha256(index_files(archive)[0].read_bytes()).hexdigest() == digest


def test_unreadable_files_are_reported_and_left_in_place(archive, stored):
    store = archive.data_dir / "store"
    garbage = store / "ab" / f"ab{'0' * 30}.dcm"
    garbage.write_bytes(os.urandom(1000))
    real = store / stored.rows[0][0]
    truncated = store / "cd" / f"cd{'1' * 30}.dcm"
    truncated.write_bytes(real.read_bytes()[:-100])
    (store / "ab" / "notes.txt").write_text("not an instance")

    result = run(archive, "reindex", "--json")

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert {k: summary[k] for k in ("files", "instances", "unreadable", "ignored")} == {
        "files": 9, "instances": 7, "unreadable": 2, "ignored": 1}
    assert sorted(line.split(":")[0] for line in summary["unreadable_files"]) == [
        f"store/ab/{garbage.name}", f"store/cd/{truncated.name}"]
    assert garbage.exists() and truncated.exists()
    assert instance_rows(archive) == stored.rows


def test_interrupted_placement_is_indexed_as_recovery_would_keep_it(archive, stored):
    """Store files still journaled in spool/ (ST-06) are indexed as start-up recovery would keep
    them: one the old index has, and a sealed one it lost (its row not flushed), whether or
    not an old index is readable; an unsealed one (a partial receive) never."""
    store, spool = archive.data_dir / "store", archive.data_dir / "spool"
    indexed = stored.rows[0][0]
    os.link(store / indexed, spool / Path(indexed).name)
    lost_row = store / "ef" / f"ef{'2' * 30}.dcm"
    shutil.copyfile(store / stored.rows[1][0], lost_row)  # sealed, as every stored file is
    with open(lost_row, "r+b") as f:  # another last pixel byte, the same size: an ST-17 duplicate,
        f.seek(-1, os.SEEK_END)       # not an identical re-send (ST-25, which the next test is)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    os.link(lost_row, spool / lost_row.name)
    partial = store / "ef" / f"ef{'3' * 30}.dcm"
    shutil.copyfile(store / stored.rows[2][0], partial)
    with open(partial, "r+b") as f:
        f.write(bytes(128))  # the preamble without its seal
    os.link(partial, spool / partial.name)

    result = run(archive, "reindex", "--json")

    assert result.returncode == 0, result.stderr
    assert {k: json.loads(result.stdout)[k] for k in ("files", "instances", "unacknowledged")} == {
        "files": 9, "instances": 8, "unacknowledged": 1}
    backend.lose(archive)

    result = run(archive, "reindex", "--json")

    assert result.returncode == 0, result.stderr
    assert {k: json.loads(result.stdout)[k] for k in ("files", "instances", "unacknowledged")} == {
        "files": 9, "instances": 8, "unacknowledged": 1}


@pytest.mark.parametrize("journaled", [False, True], ids=["copy", "journaled-resend"])
def test_a_file_identical_to_an_indexed_one_is_reported_and_left_in_place(archive, stored, journaled):
    """ST-25: a later file with the data set of an indexed file with its SOP Instance UID is
    the same object, not a second instance: either a copy an archive stored before ST-25 kept
    as an ST-17 duplicate, or a re-send whose process was killed before its file went (sealed,
    still journaled; the service's recovery removes it at start). Only the first is indexed."""
    store = archive.data_dir / "store"
    copy = store / "ef" / f"ef{'4' * 30}.dcm"
    shutil.copy2(store / stored.rows[0][0], copy)
    os.utime(copy)  # arrived after the original
    if journaled:
        os.link(copy, archive.data_dir / "spool" / copy.name)

    result = run(archive, "reindex", "--json")

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert {k: summary[k] for k in ("files", "instances", "identical")} == {"files": 8, "instances": 7, "identical": 1}
    assert summary["identical_files"] == [
        f"store/ef/{copy.name}: already stored: the same data set as indexed instance {stored.rows[0][1]}"]
    assert instance_rows(archive) == stored.rows
    assert copy.exists()


def test_reindex_under_replace_policy_indexes_the_later_duplicate(archive, stored):
    """Stored with ST-17 (both kept), reindexed after a change to ST-18: the later file wins and
    the earlier one, superseded, is reported and kept."""
    archive.write_config({**archive.config, "storage_scp": {**POLICY["storage_scp"], "duplicate_policy": "replace"}})
    first, second = [row[0] for row in sorted(stored.rows, key=lambda r: r[3]) if row[2] == DUPLICATE]

    result = run(archive, "reindex")

    assert result.returncode == 0, result.stderr
    assert f"  store/{first}" in result.stdout.splitlines()
    assert archive.index_rows("SELECT path FROM instance WHERE sop_instance_uid = ?", DUPLICATE) == [(second,)]
    assert (archive.data_dir / "store" / first).exists()


def test_backup_while_a_client_stores(make_appliance, tmp_path):
    app = make_appliance()
    acknowledged, stop = [], threading.Event()

    def store():
        with scu.association(app.storage_port, app.storage_title) as assoc:
            while not stop.is_set():
                ds = datasets.image(rows=8, columns=8)
                if scu.send_file(assoc, datasets.write(ds, tmp_path / "sent.dcm")) == 0:
                    acknowledged.append(ds.SOPInstanceUID)

    client = threading.Thread(target=store)
    client.start()
    try:
        wait_for(lambda: len(acknowledged) >= 20, "20 instances stored")
        before = list(acknowledged)
        result = run(app, "backup", str(tmp_path / "copy.sqlite"), "--json")
        during = len(acknowledged)
        wait_for(lambda: len(acknowledged) > during + 5, "storing to go on after the backup")
    finally:
        stop.set()
        client.join(30)

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["path"] == str(tmp_path / "copy.sqlite") and summary["instances"] >= len(before)
    with closing(sqlite3.connect(f"file:{tmp_path / 'copy.sqlite'}?mode=ro", uri=True)) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        in_copy = {u for (u,) in copy.execute("SELECT sop_instance_uid FROM instance")}
    assert set(before) <= in_copy
    assert summary["size"] == (tmp_path / "copy.sqlite").stat().st_size
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_backup_to_the_default_place_never_replaces_a_file(archive, stored):
    result = run(archive, "backup")

    assert result.returncode == 0, result.stderr
    [made] = (archive.data_dir / "backups").iterdir()
    assert made.name.startswith("index-") and made.suffix == ".sqlite"
    assert result.stdout == (f"index backed up to {made}: {made.stat().st_size} bytes, 7 instances, 4 studies, "
                             f"{result.stdout.rsplit(', ', 1)[1]}")
    content = made.read_bytes()

    again = run(archive, "backup", str(made))

    assert (again.returncode, again.stdout) == (1, "")
    assert again.stderr == f"backup failed: {made} exists already; a backup never replaces a file\n"
    assert made.read_bytes() == content


@pytest.mark.parametrize("command", ["reindex", "backup"])
def test_help(command):
    result = tool(command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: service-tool {command} ")
