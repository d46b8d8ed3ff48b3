"""`service-tool backup --full DIR` and `service-tool restore DIR` against the real daemon (MG-05).

Most tests work on copies of one small stopped archive (`archive`): a patient with a single
instance (LONE, whose rows a pruned backup must drop entirely), one with two studies and three
series, and one whose name needs a character set. A backup reads the index and the files
directly, so it needs no running service; the tests that need one (storing meanwhile, a
replacement under ST-18, a restore refused while the service runs) start it.

Where a test must hold a process at a known point (storescu between two C-STOREs, a backup
between its snapshot and its copy, a restore in the middle of its files), the process's stderr
is a small pipe the test stops reading (`Held`): the kernel then holds the process in its next
write there, so no sleep decides the timing.

On both index backends (IX-01). On PostgreSQL a backup's configuration names the original's
database, which still holds the archive: a restore onto a new box goes into an empty database
put in its place for the restore, which the new box keeps (index_backend.set_aside).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import threading
import tomllib
from contextlib import closing
from pathlib import Path

import pytest

import datasets
import index_backend as backend
import scu
from appliance.query.keys import KEYS, Level
from helpers import SERVICE_TOOL, Appliance, merge, service_tool, tool, wait_for
from query_archive import uid

pytestmark = pytest.mark.index_backends

NOBODY = 65534  # uid and gid of Debian's nobody and nogroup
PIPE_SIZE = 4096  # the smallest pipe Linux makes: a held child blocks soon
LONE = uid("S901")  # the only study of its patient, with one series of one instance


# --- the archive -------------------------------------------------------------------------------

def sent_instances():
    """(study label, series label, number, patient keywords): 10 instances in 4 studies."""
    lone = {"patient_name": "Lone^Only", "patient_id": "PID-LONE"}
    doe = {"patient_name": "Doe^John", "patient_id": "PID-DOE"}
    muller = {"patient_name": "Müller^Hans", "patient_id": "PID-MUE", "charset": "ISO_IR 100"}
    yield "S901", "S901.1", 1, lone
    for number in (1, 2, 3):
        yield "S902", "S902.1", number, doe
    for number in (1, 2):
        yield "S902", "S902.2", number, doe
    for number in (1, 2):
        yield "S903", "S903.1", number, doe
    for number in (1, 2):
        yield "S904", "S904.1", number, muller


def instance(study: str, series: str, number: int, patient: dict, rows: int = 8, **elements):
    return datasets.image(rows=rows, columns=rows, study_uid=uid(study), series_uid=uid(series),
                          sop_instance_uid=uid(f"{series}.{number}"), InstanceNumber=str(number),
                          SeriesNumber=series.rsplit(".", 1)[1], StudyDescription=f"study {study}",
                          **patient, **elements)


def store(app: Appliance, instances, directory: Path) -> None:
    directory.mkdir(exist_ok=True)
    with scu.association(app.storage_port, app.storage_title, calling="MODALITY1") as assoc:
        for n, ds in enumerate(instances):
            assert scu.send_file(assoc, datasets.write(ds, directory / f"{n}.dcm")) == 0, ds.SOPInstanceUID
    app.stored_files()  # the spool settled: every row flushed


@pytest.fixture(scope="module")
def stored(tmp_path_factory, new_index_url):
    """A stopped appliance holding `sent_instances`, with its C-FIND answers."""
    root = tmp_path_factory.mktemp("backup-full")
    app = Appliance(root / "appliance", index_url=new_index_url()).start()
    try:
        store(app, (instance(*sent) for sent in sent_instances()), root / "sent")
        app.answers = answers(app)
    finally:
        assert app.stop() == 0, app.log()
    assert len(app.answers[Level.IMAGE]) == 10 and len(app.answers[Level.STUDY]) == 4
    return app


@pytest.fixture
def archive(stored, make_appliance):
    """A stopped appliance on a copy of `stored`'s data directory, and of its database."""
    app = make_appliance(start=False)
    shutil.copytree(stored.data_dir, app.data_dir)
    backend.copy(stored, app)
    app.answers = stored.answers
    return app


# --- what the archive answers --------------------------------------------------------------------

def level_keys(*levels: Level) -> dict:
    return {key.keyword: "" for key in KEYS if key.level in levels}


def answers(app: Appliance) -> dict:
    """Every C-FIND answer, each identifier in full: PATIENT level in the Patient Root model;
    STUDY, SERIES (per study) and IMAGE (per series) levels in the Study Root model, each
    asking for every key the service supports at that level. Every Patient ID here starts with
    PID, which is what narrows the top-level queries enough (QF-15, QF-16)."""
    def found(sop_class: str, keys: dict) -> list:
        *pending, (final, _) = scu.find(assoc, sop_class, scu.identifier(keys))
        assert final == 0x0000
        assert {status for status, _ in pending} <= {0xFF00}
        return [(identifier.get("StudyInstanceUID", ""), identifier.get("SeriesInstanceUID", ""),
                 tuple(sorted((str(e.tag), e.VR, str(e.value)) for e in identifier))) for _, identifier in pending]

    P, S, SE, IM = Level
    with scu.association(app.qr_port, "EX_QUERY_SCP", scu.query_contexts()) as assoc:
        result = {P: found(datasets.PATIENT_ROOT_FIND, {"QueryRetrieveLevel": "PATIENT", **level_keys(P),
                                                        "PatientID": "PID*"}),
                  S: found(datasets.STUDY_ROOT_FIND, {"QueryRetrieveLevel": "STUDY", **level_keys(P, S),
                                                      "PatientID": "PID*"})}
        result[SE] = [row for study, _, _ in result[S] for row in found(
            datasets.STUDY_ROOT_FIND, {"QueryRetrieveLevel": "SERIES", **level_keys(SE), "StudyInstanceUID": study})]
        result[IM] = [row for study, series, _ in result[SE] for row in found(
            datasets.STUDY_ROOT_FIND, {"QueryRetrieveLevel": "IMAGE", **level_keys(IM), "StudyInstanceUID": study,
                                       "SeriesInstanceUID": series})]
    return {level: sorted(identifier for _, _, identifier in rows) for level, rows in result.items()}


def without(found: dict, value: str) -> dict:
    """`found` (answers) without the identifiers holding `value` (a UID, a Patient ID)."""
    return {level: [i for i in rows if value not in (v for _, _, v in i)] for level, rows in found.items()}


def file_digests(app: Appliance) -> dict[str, str]:
    """SHA-256 of every file the index names, by path under store/."""
    return {path: hashlib.sha256((app.data_dir / "store" / path).read_bytes()).hexdigest()
            for (path,) in app.index_rows("SELECT path FROM instance")}


# --- the commands --------------------------------------------------------------------------------

def backup_full(app: Appliance, directory: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    """`service-tool backup --full DIR --json`: the result and its summary (None if it failed)."""
    result = service_tool(app.config_path, "backup", "--full", str(directory), "--json", *args, timeout=120)
    return result, json.loads(result.stdout) if result.returncode == 0 else None


_new_boxes: list[Appliance] = []
_restored_databases: list[str] = []  # URLs of the databases restores filled (PostgreSQL)


@pytest.fixture(autouse=True)
def stop_new_boxes():
    """The boxes a test made with new_box and started are stopped when it ends, passed or failed,
    and the databases its restores filled are dropped."""
    yield
    while _new_boxes:
        box = _new_boxes.pop()
        if box.proc is not None and box.proc.poll() is None:
            assert box.stop() == 0, box.log()
    while _restored_databases:
        backend.drop(_restored_databases.pop())


def new_box(root: Path) -> Appliance:
    """A box with a fresh configuration path (no file there yet) and no data directory."""
    app = Appliance(root)
    app.config_path.unlink()
    _new_boxes.append(app)
    return app


def backed_up_index_url(directory: Path) -> str:
    """The `[index] url` of the configuration in DIR's backup ("" for SQLite, or no backup)."""
    try:
        config = tomllib.loads((directory / manifest(directory)["config"]).read_text())
    except (OSError, ValueError, KeyError):
        return ""
    return config.get("index", {}).get("url", "")


@contextlib.contextmanager
def restoring_into_a_new_database(directory: Path):
    """On PostgreSQL, the block's restores of DIR go into an empty database in place of the one
    the backed-up configuration names (the original's); the URL of the one they filled is
    yielded, and dropped at the end of the test. "" on SQLite."""
    url = backed_up_index_url(directory)
    name = f"restored_{len(_restored_databases) + 1}_{os.getpid()}"
    with backend.set_aside(url, name) as restored:
        if restored:
            _restored_databases.append(restored)
        yield restored


def restore(app: Appliance, directory: Path, *args: str) -> subprocess.CompletedProcess:
    """`service-tool restore DIR --data-dir` onto `app`, whose `config` becomes the written one
    (on PostgreSQL naming the database the restore filled: restoring_into_a_new_database)."""
    with restoring_into_a_new_database(directory) as restored:
        result = service_tool(app.config_path, "restore", str(directory), "--data-dir", str(app.data_dir), *args,
                              timeout=120)
    if result.returncode == 0:
        app.config = tomllib.loads(app.config_path.read_text())
        if restored:
            app.config["index"]["url"] = restored
            app.write_config(app.config)
        app.index_url = restored
    return result


def manifest(directory: Path) -> dict:
    return json.loads((directory / "backup.json").read_text())


def listing(directory: Path, *leaving: str) -> dict[str, bytes]:
    """Every file under `directory` with its content, but for the lock file (it holds the pid of
    its last holder) and `leaving`."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name not in ("appliance.lock", *leaving)}


def backup_index_rows(directory: Path, sql: str) -> list[tuple]:
    with closing(sqlite3.connect(directory / manifest(directory)["index"])) as db:
        return db.execute(sql).fetchall()


class Held:
    """A child process whose stderr is a pipe of PIPE_SIZE bytes that the test reads only when it
    wants the child to go on. A child that finds the pipe full blocks in its write to it, held
    there by the kernel: after everything it did before that line, before everything after.
    `filled`: the pipe starts full (with NUL bytes), so the first line already holds the child."""

    def __init__(self, args: list[str], filled: bool = False, env: dict | None = None):
        read_fd, write_fd = os.pipe()
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        if filled:
            os.set_blocking(write_fd, False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    os.write(write_fd, bytes(PIPE_SIZE))
            os.set_blocking(write_fd, True)
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=write_fd, env=env)
        os.close(write_fd)
        self.pipe = os.fdopen(read_fd, "rb", buffering=0)
        self.err = bytearray()

    def blocked(self) -> bool:
        """Whether the child waits for room in the pipe (its wait channel, e.g. anon_pipe_write)."""
        try:
            return "pipe_write" in Path(f"/proc/{self.proc.pid}/wchan").read_text()
        except OSError:
            return False

    def hold(self, what: str) -> None:
        """Until the child waits for room in the pipe; it must not have exited."""
        wait_for(lambda: self.proc.poll() is not None or self.blocked(), what, timeout=60)
        assert self.proc.poll() is None, f"exited {self.proc.returncode} before {what}: {self.text()}"

    def read(self, size: int = PIPE_SIZE) -> None:
        """Take up to `size` bytes out of the pipe (at least one: waits for them)."""
        self.err += self.pipe.read(size)

    def text(self) -> str:
        return self.err.replace(b"\0", b"").decode(errors="replace")

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        """Let the child run to its end: (exit code, stdout); its stderr is in text()."""
        drain = threading.Thread(target=lambda: self.err.extend(self.pipe.read()))
        drain.start()
        try:
            out = self.proc.communicate(timeout=timeout)[0]
        finally:
            drain.join(timeout)
            self.pipe.close()
        return self.proc.returncode, out.decode(errors="replace")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.proc.stdout.close()
        self.pipe.close()


def tool_args(config: Path, *args: str) -> list[str]:
    return [str(SERVICE_TOOL), "--config", str(config), *args]


# --- backup while storing, restore, answers ------------------------------------------------------

def test_backup_while_storescu_stores_restores_the_archive_as_it_was_at_the_snapshot(make_appliance, tmp_path):
    """MG-05. storescu (DCMTK) sends 200 instances of 5 studies, their series interleaved. After
    50 are acknowledged the test stops reading storescu's log, and storescu stops at its next
    line with no C-STORE in flight (each one is logged before it is sent and after its
    response). The original's answers then are the answers at the snapshot: the backup takes it
    now, and storescu goes on storing while the backup copies. Restored onto a new box (fresh
    configuration path, empty data directory), the archive answers every C-FIND at every level
    exactly as the original did at the snapshot, and every file it holds has the original's
    bytes; the instances stored after the snapshot are not in it."""
    original = make_appliance()
    sent = tmp_path / "sent"
    sent.mkdir()
    muller = {"patient_name": "Müller^Hans", "patient_id": "PID-MUE", "charset": "ISO_IR 100"}
    patients = [{"patient_name": "Doe^John", "patient_id": "PID-DOE"}, muller,
                {"patient_name": "Roe^Jane", "patient_id": "PID-ROE", "PatientSex": "O"}]
    files = []
    for n in range(200):
        study = f"S95{n % 5}"
        ds = instance(study, f"{study}.{n % 2 + 1}", n, patients[n % 5 % 3], rows=16)
        files.append(datasets.write(ds, sent / f"{n:03d}.dcm"))
    storescu = Held(["storescu", "-v", "-aet", "MODALITY1", "-aec", original.storage_title, "127.0.0.1",
                     str(original.storage_port), *map(str, files)], env={**os.environ, "TCP_NODELAY": "1"})
    try:
        while storescu.err.count(b"Received Store Response (Success)") < 50:
            storescu.read()
            assert storescu.proc.poll() is None, storescu.text()
        storescu.hold("storescu to stop at a full log pipe")
        at_snapshot = answers(original)
        snapshot_files = file_digests(original)
        (tmp_path / "dir").mkdir()
        with subprocess.Popen(tool_args(original.config_path, "backup", "--full", str(tmp_path / "dir"), "--json"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as backup:
            first = backup.stderr.readline()
            code, _ = storescu.finish()  # storing goes on while the backup copies
            out, err = backup.communicate(timeout=120)
    finally:
        if storescu.proc.poll() is None:
            storescu.kill()

    assert code == 0, storescu.text()[-2000:]
    assert backup.returncode == 0, first + err
    assert first.startswith("backup: index snapshot of "), first
    summary = json.loads(out)
    stored_at_snapshot = len(at_snapshot[Level.IMAGE])
    assert 50 <= stored_at_snapshot < 200
    assert (summary["instances"], summary["files"], summary["copied"], summary["deleted_during"]) == (
        stored_at_snapshot, stored_at_snapshot, stored_at_snapshot, 0)
    assert original.index_rows("SELECT COUNT(*) FROM instance") == [(200,)]
    assert original.stop() == 0, original.log()

    box = new_box(tmp_path / "box")
    result = restore(box, tmp_path / "dir")

    assert result.returncode == 0, result.stderr
    box.start()
    assert answers(box) == at_snapshot
    assert file_digests(box) == snapshot_files
    assert {str(p.relative_to(box.data_dir / "store")) for p in box.stored_files()} == set(snapshot_files)


# --- incremental, damaged copies -----------------------------------------------------------------

def test_a_second_backup_copies_only_what_is_new_and_drops_what_is_gone(archive, tmp_path):
    """MG-05: the second backup copies the new files only; the file of an instance replaced
    under ST-18 (its row now names the new file) leaves DIR, as do the first backup's index and
    configuration."""
    archive.config = merge(archive.config, {"storage_scp": {"duplicate_policy": "replace"}})
    archive.write_config(archive.config)
    directory = tmp_path / "dir"
    directory.mkdir()
    first, summary = backup_full(archive, directory)
    assert first.returncode == 0, first.stderr
    assert {k: summary[k] for k in ("generation", "files", "copied", "skipped", "removed")} == {
        "generation": 1, "files": 10, "copied": 10, "skipped": 0, "removed": 0}
    [(replaced,)] = archive.index_rows("SELECT path FROM instance WHERE sop_instance_uid = ?", uid("S902.2.1"))
    archive.start()
    added = [instance("S902", "S902.1", number, {"patient_name": "Doe^John", "patient_id": "PID-DOE"})
             for number in (4, 5, 6)]
    again = instance("S902", "S902.2", 1, {"patient_name": "Doe^John", "patient_id": "PID-DOE"},
                     ImageComments="sent again")
    store(archive, [*added, again], tmp_path / "sent")

    second, summary = backup_full(archive, directory)

    assert second.returncode == 0, second.stderr
    assert {k: summary[k] for k in ("generation", "files", "copied", "skipped", "removed", "instances")} == {
        "generation": 2, "files": 13, "copied": 4, "skipped": 9, "removed": 1, "instances": 13}
    assert f"store/{replaced}" not in manifest(directory)["files"]
    assert {name for name in listing(directory) if not name.startswith("store/")} == {
        "backup.json", "config-2.toml", "index-2.sqlite"}
    assert {name for name in listing(directory) if name.startswith("store/")} == {
        name for name in manifest(directory)["files"] if name.startswith("store/")}

    third, summary = backup_full(archive, directory)

    assert third.returncode == 0, third.stderr
    assert (summary["generation"], summary["copied"], summary["skipped"], summary["removed"]) == (3, 0, 13, 0)


def test_a_damaged_copy_in_the_backup_is_refused_by_restore_and_replaced_by_verify_all(archive, tmp_path):
    """MG-05: a byte flipped in DIR's copy of a stored file (same size). Restore checks every
    checksum and refuses, naming the file, leaving nothing behind. A plain backup does not read
    DIR's copies back (name and size identify an unchanged stored file; reading the whole
    backup on every run is what --verify-all is for), so it keeps the damaged copy; --verify-all
    finds it and copies it again, and the restore then succeeds. A second file damaged in the
    archive as well as in DIR is copied again too, with a warning: stored files never change."""
    directory = tmp_path / "dir"
    directory.mkdir()
    assert backup_full(archive, directory)[0].returncode == 0
    damaged, rotten = [name for name in manifest(directory)["files"] if name.startswith("store/")][:2]
    for path in (directory / damaged, directory / rotten, archive.data_dir / rotten):
        with open(path, "r+b") as f:
            f.seek(300)
            byte = f.read(1)
            f.seek(300)
            f.write(bytes([byte[0] ^ 0x01]))
    box = new_box(tmp_path / "box")

    refused = restore(box, directory)

    assert (refused.returncode, refused.stdout) == (1, "")
    *progress, message = refused.stderr.splitlines()
    assert progress[0].startswith("restore: backup 1 of ")
    assert message.startswith(f"restore refused: {directory / damaged} is not the file the manifest names: ")
    assert message.endswith(": the backup is damaged; the restore was undone")
    assert not box.data_dir.exists() and not box.config_path.exists()

    plain, summary = backup_full(archive, directory)

    assert plain.returncode == 0, plain.stderr
    assert (summary["copied"], summary["skipped"], summary["recopied"]) == (0, 10, [])

    verified, summary = backup_full(archive, directory, "--verify-all")

    assert verified.returncode == 0, verified.stderr
    assert (summary["copied"], summary["skipped"], summary["recopied"], summary["changed"]) == (
        2, 8, [damaged, rotten], [rotten])
    result = restore(box, directory)
    assert result.returncode == 0, result.stderr
    assert file_digests(box) == file_digests(archive)


# --- instances that go while the backup runs -----------------------------------------------------

def test_an_instance_replaced_between_snapshot_and_copy_leaves_the_backup_with_its_parents(make_appliance,
                                                                                           tmp_path):
    """MG-05, ST-18: the backup is held right after its snapshot (its first stderr line); the
    service then replaces LONE's only instance and removes its file. The backup finds the file
    gone, drops the instance from its index copy, and with it the series, study and patient it
    was the last of; the summary says so. The instance stored meanwhile is not in the backup."""
    app = make_appliance({"storage_scp": {"duplicate_policy": "replace"}})
    sent = list(sent_instances())
    store(app, [instance(*s) for s in sent[:4]], tmp_path / "sent")
    [(old,)] = app.index_rows("SELECT path FROM instance WHERE sop_instance_uid = ?", uid("S901.1.1"))
    directory = tmp_path / "dir"
    directory.mkdir()
    backup = Held(tool_args(app.config_path, "backup", "--full", str(directory)), filled=True)
    try:
        backup.hold("the backup to write its first line, after the snapshot")
        store(app, [instance(*sent[0], ImageComments="sent again")], tmp_path / "again")
        wait_for(lambda: not (app.data_dir / "store" / old).exists(), "the replaced file to go")
        code, out = backup.finish()
    finally:
        if backup.proc.poll() is None:
            backup.kill()

    assert code == 0, backup.text()
    assert "backup: index snapshot of 4 instances in 2 studies; 4 stored files" in backup.text()
    lines = out.splitlines()
    assert lines[0].startswith(f"full backup 1 in {directory}: 3 stored files (0 MB) of 3 instances in 1 studies; "
                               "3 copied (0 MB), 0 already there; ")
    assert "1 instance deleted during the backup is not in it" in lines
    assert backup_index_rows(directory, "SELECT sop_instance_uid FROM instance ORDER BY 1") == [
        (uid("S902.1.1"),), (uid("S902.1.2"),), (uid("S902.1.3"),)]
    assert backup_index_rows(directory, "SELECT patient_id FROM patient") == [("PID-DOE",)]
    assert backup_index_rows(directory, "SELECT study_instance_uid FROM study") == [(uid("S902"),)]
    assert backup_index_rows(directory, "SELECT series_instance_uid FROM series") == [(uid("S902.1"),)]
    assert sorted(manifest(directory)["files"]) == sorted(
        ["config-1.toml", "index-1.sqlite", *(f"store/{path}" for path, in app.index_rows(
            "SELECT path FROM instance WHERE sop_instance_uid != ?", uid("S901.1.1")))])


def test_a_file_the_archive_lost_is_named_and_left_out(archive, tmp_path):
    """A stored file missing while the index still names it was lost, not deleted: the backup
    leaves its instance (and the parents it was the last of) out and names the file; the
    restored box answers as the original did, without LONE."""
    [(lost,)] = archive.index_rows("SELECT path FROM instance WHERE sop_instance_uid = ?", uid("S901.1.1"))
    (archive.data_dir / "store" / lost).unlink()
    directory = tmp_path / "dir"
    directory.mkdir()

    result = service_tool(archive.config_path, "backup", "--full", str(directory))

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"full backup 1 in {directory}: 9 stored files (0 MB) of 9 instances in 3 studies;")
    assert lines[1:3] == ["WARNING: 1 stored files are missing although the index names them: lost from the "
                          "archive, not in the backup:", f"  store/{lost}"]
    assert "deleted during the backup" not in result.stdout
    box = new_box(tmp_path / "box")
    assert restore(box, directory).returncode == 0
    box.start()
    assert answers(box) == without(without(archive.answers, "PID-LONE"), LONE)


# --- restore: where it goes, what it refuses -----------------------------------------------------

def test_restore_is_refused_while_the_service_runs_then_fills_the_new_box(archive, make_appliance, tmp_path):
    """MG-05 on a replaced box: its service has started once (an index without instances, its
    log) and holds the data directory, so the restore is refused until it stops. Then the box's
    own configuration is kept aside, the box's files stay, and the box answers as the original."""
    directory = tmp_path / "dir"
    directory.mkdir()
    assert backup_full(archive, directory)[0].returncode == 0
    box = make_appliance(name="box")
    first_config = box.config_path.read_bytes()
    listed = sorted(p.name for p in box.data_dir.iterdir())

    refused = restore(box, directory)

    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr.startswith(f"restore refused: {box.data_dir} is in use by the appliance service (pid ")
    assert refused.stderr.rstrip().endswith("; stop the service first")
    assert box.config_path.read_bytes() == first_config
    assert sorted(p.name for p in box.data_dir.iterdir()) == listed
    assert box.stop() == 0

    result = restore(box, directory)

    assert result.returncode == 0, result.stderr
    [kept] = box.root.glob("appliance.toml.replaced-*")
    assert kept.read_bytes() == first_config
    lines = result.stdout.splitlines()
    assert lines[1:3] == [f"data directory: {box.data_dir} (given with --data-dir; the configuration now names it)",
                          f"configuration: {box.config_path} (the file that was there is kept as {kept})"]
    assert lines[3].startswith("not restored: the TLS private key and certificates, which a backup never holds; ")
    assert (box.data_dir / "appliance.log").exists()
    assert box.config["storage"]["data_dir"] == str(box.data_dir)
    assert box.config["storage_scp"]["port"] == archive.storage_port  # the original's configuration
    box.start()
    assert answers(box) == archive.answers


@pytest.mark.parametrize("content, named", [
    ("archive", "index.sqlite holds 10 instances"),
    ("stored file", "store/ab/ab000000000000000000000000000000.dcm is a stored file"),
    ("other file", "notes.txt is not the service's"),
])
def test_restore_refuses_a_data_directory_that_is_not_empty(archive, tmp_path, content, named):
    directory = tmp_path / "dir"
    directory.mkdir()
    assert backup_full(archive, directory)[0].returncode == 0
    box = new_box(tmp_path / "box")
    if content == "archive":
        shutil.copytree(archive.data_dir, box.data_dir)
        if backend.is_postgresql(archive):  # its index is in the database: what is there is its files
            named = f"{min(p.relative_to(box.data_dir) for p in box.data_dir.glob('store/*/*.dcm'))} is a stored file"
    else:
        path = box.data_dir / ("notes.txt" if content == "other file" else named.split()[0])
        path.parent.mkdir(parents=True)
        path.write_bytes(b"something")
    # Looking into the index with a read-only connection leaves an empty -wal and -shm (backup.py).
    side_files = ("index.sqlite-wal", "index.sqlite-shm")
    before = listing(box.data_dir, *side_files)

    refused = restore(box, directory)

    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr.startswith(f"restore refused: the data directory {box.data_dir} is not empty: "
                                     f"{box.data_dir}/{named}. ")
    assert listing(box.data_dir, *side_files) == before
    assert not box.config_path.exists()


def test_restore_run_by_root_leaves_the_archive_to_the_data_directorys_owner(archive, tmp_path):
    directory = tmp_path / "dir"
    directory.mkdir()
    assert backup_full(archive, directory)[0].returncode == 0
    box = new_box(tmp_path / "box")
    box.data_dir.mkdir()
    os.chown(box.data_dir, NOBODY, NOBODY)

    result = restore(box, directory)

    assert result.returncode == 0, result.stderr
    assert {str(p) for p in box.data_dir.rglob("*") if (p.stat().st_uid, p.stat().st_gid) != (NOBODY, NOBODY)} \
        == set()
    assert len(list(box.data_dir.rglob("*.dcm"))) == 10


def grow(app: Appliance, tmp_path: Path, count: int = 200) -> None:
    """`count` more instances in a new study, stored through `app` (started if it is not)."""
    if app.proc is None or app.proc.poll() is not None:
        app.start()
    store(app, [instance("S905", "S905.1", number, {"patient_name": "New^Patient", "patient_id": "PID-NEW"})
                for number in range(1, count + 1)], tmp_path / "grown")


def held_mid_copy(args: list[str]) -> Held:
    """The command (`--progress-every 1`: a line of ~30 bytes per file) held after its first
    line, then let go for one pipe's worth of lines: held again about 125 files later."""
    held = Held(args, filled=True)
    held.hold("the first line")
    held.read()  # the filler: room for ~4 KB of lines
    held.hold("a pipe's worth of lines")
    return held


def test_an_interrupted_restore_keeps_the_service_off_until_a_restore_completes(archive, tmp_path):
    """MG-05, kill -9 in the middle of the stored files: the marker keeps the service from
    starting on the half-filled data directory; the next restore takes over what is there."""
    grow(archive, tmp_path)
    grown = answers(archive)
    assert archive.stop() == 0
    directory = tmp_path / "dir"
    directory.mkdir()
    assert backup_full(archive, directory)[0].returncode == 0
    box = new_box(tmp_path / "box")
    with restoring_into_a_new_database(directory):
        restoring = held_mid_copy(tool_args(box.config_path, "restore", str(directory), "--data-dir",
                                            str(box.data_dir), "--progress-every", "1"))
        restoring.kill()
    assert (box.data_dir / "restore-incomplete").exists() and not (box.data_dir / "index.sqlite").exists()
    assert 3 <= len(list(box.data_dir.rglob("*.dcm"))) < 200
    box.write_config(box.config)  # the restore had not written one yet

    assert box.run_to_exit() == 1
    assert f"cannot start: a restore into {box.data_dir} did not finish (restore-incomplete is there)" in box.log()

    result = restore(box, directory)

    assert result.returncode == 0, result.stderr
    assert not (box.data_dir / "restore-incomplete").exists()
    box.start()
    assert answers(box) == grown


# --- failures into DIR -------------------------------------------------------------------------

def test_an_interrupted_backup_leaves_the_previous_one(archive, tmp_path):
    """kill -9 in the middle of the second backup's copy: DIR's manifest, and so the backup it
    names, are the first backup's, which restores; the next backup completes and DIR then holds
    nothing its manifest does not name, the killed run's index snapshot included."""
    directory = tmp_path / "dir"
    directory.mkdir()
    assert backup_full(archive, directory)[0].returncode == 0
    first = manifest(directory)
    grow(archive, tmp_path)

    backing_up = held_mid_copy(tool_args(archive.config_path, "backup", "--full", str(directory),
                                         "--progress-every", "1"))
    backing_up.kill()

    copied = {str(p.relative_to(directory)) for p in (directory / "store").rglob("*.dcm")} - set(first["files"])
    assert 3 <= len(copied) < 200
    assert manifest(directory) == first
    # The killed run's index snapshot is on the backup's disk (not in /tmp, on the box's root slot).
    assert (directory / ".index-snapshot.tmp").stat().st_size > 0
    assert archive.stop() == 0  # on PostgreSQL its database is set aside for the restore
    box = new_box(tmp_path / "box")
    result = restore(box, directory)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"restored backup 1 of {os.uname().nodename} ")
    assert box.index_rows("SELECT COUNT(*) FROM instance") == [(10,)]

    again, summary = backup_full(archive, directory)

    assert again.returncode == 0, again.stderr
    assert (summary["generation"], summary["copied"], summary["skipped"]) == (2, 200, 10)
    assert {name for name in listing(directory) if name.startswith("store/")} == {
        name for name in manifest(directory)["files"] if name.startswith("store/")}
    assert not (directory / ".index-snapshot.tmp").exists()


@contextlib.contextmanager
def small_disk(path: Path, size: str, inodes: int = 10000):
    """A tmpfs of `size` at `path`, unmounted at the end."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},nr_inodes={inodes},mode=0755", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)]).returncode != 0:
            subprocess.run(["umount", "--lazy", str(path)], check=True)
            raise AssertionError(f"{path} was still busy (lazily unmounted)")


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


@pytest.mark.parametrize("full", ["bytes", "inodes"])
def test_a_backup_into_a_full_disk_fails_and_keeps_the_previous_backup(archive, tmp_path, full):
    """Exit 1 naming the full disk: before copying anything when DIR's free space is known to be
    short (bytes), or when a write fails with ENOSPC (no inode left); DIR as it was, and its
    backup restores."""
    with small_disk(tmp_path / "dir", "1m") as directory:
        assert backup_full(archive, directory)[0].returncode == 0
        archive.start()
        store(archive, [instance("S905", "S905.1", number, {"patient_name": "New^Patient", "patient_id": "PID-NEW"},
                                 rows=256) for number in range(1, 9)], tmp_path / "sent")  # 8 x 131 KB
        if full == "inodes":
            remount(directory, "size=64m")
            st = os.statvfs(directory)
            remount(directory, f"nr_inodes={st.f_files - st.f_ffree + 3}")
        before = listing(directory)

        result, _ = backup_full(archive, directory)

        assert (result.returncode, result.stdout) == (1, "")
        *progress, message = result.stderr.splitlines()
        if full == "bytes":
            assert progress == []
            assert re.match(rf"backup failed: {directory} has 0\.\d MB free and this backup needs 1\.\d MB more "
                            r"\(the disk is full\); ", message), message
        else:
            assert progress[0].startswith("backup: index snapshot of 18 instances in 5 studies; ")
            assert message.startswith(f"backup failed: {directory}/store/")
            assert ": No space left on device (the disk is full); " in message
        assert message.endswith(f"; {directory} holds the previous backup as it was")
        assert listing(directory) == before
        assert archive.stop() == 0  # on PostgreSQL its database is set aside for the restore
        box = new_box(tmp_path / "box")
        restored = restore(box, directory)
        assert restored.returncode == 0, restored.stderr
        assert box.index_rows("SELECT COUNT(*) FROM instance") == [(10,)]


def test_a_backup_into_a_read_only_disk_fails_and_restore_reads_from_it(archive, tmp_path):
    with small_disk(tmp_path / "dir", "8m") as directory:
        assert backup_full(archive, directory)[0].returncode == 0
        remount(directory, "ro")

        result, _ = backup_full(archive, directory)

        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == (f"backup failed: {directory} is not writable: {directory}/appliance.lock: "
                                 "Read-only file system\n")
        box = new_box(tmp_path / "box")
        restored = restore(box, directory)
        assert restored.returncode == 0, restored.stderr
        assert file_digests(box) == file_digests(archive)


@pytest.mark.parametrize("where", ["missing", "data dir", "in the data dir"])
def test_a_backup_needs_a_directory_outside_the_data_directory(archive, tmp_path, where):
    directory = {"missing": tmp_path / "nowhere", "data dir": archive.data_dir,
                 "in the data dir": archive.data_dir / "store"}[where]
    before = listing(archive.data_dir)

    result, _ = backup_full(archive, directory)

    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == ("backup failed: " + (
        f"{directory} is not a directory (is the disk or share mounted?)\n" if where == "missing" else
        f"{directory} is inside the data directory {archive.data_dir}: a backup belongs on another disk\n"))
    assert listing(archive.data_dir) == before


def test_restore_of_a_directory_without_a_backup_is_refused(tmp_path):
    box = new_box(tmp_path / "box")
    (tmp_path / "dir").mkdir()

    refused = restore(box, tmp_path / "dir")

    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == f"restore refused: {tmp_path / 'dir'} holds no backup (there is no " \
                             f"{tmp_path / 'dir' / 'backup.json'})\n"
    assert not box.data_dir.exists() and not box.config_path.exists()


def test_restore_refuses_a_manifest_naming_a_file_outside_the_backup(archive, tmp_path):
    """A manifest on a share can be edited: a restore writes only names a backup makes."""
    directory = tmp_path / "dir"
    directory.mkdir()
    assert backup_full(archive, directory)[0].returncode == 0
    text = (directory / "backup.json").read_text()
    name = next(name for name in manifest(directory)["files"] if name.startswith("store/"))
    (directory / "backup.json").write_text(text.replace(name, "store/../../escaped.dcm"))
    box = new_box(tmp_path / "box")

    refused = restore(box, directory)

    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == (f"restore refused: {directory / 'backup.json'} names 'store/../../escaped.dcm', "
                              "which is no file of a backup\n")
    assert not box.data_dir.exists() and not (tmp_path / "escaped.dcm").exists()


def test_an_empty_archive_backs_up_and_restores(make_appliance, tmp_path):
    """A box that never stored anything: a backup of its configuration and empty index."""
    app = make_appliance()
    directory = tmp_path / "dir"
    directory.mkdir()

    result, summary = backup_full(app, directory)

    assert result.returncode == 0, result.stderr
    assert (summary["files"], summary["instances"], summary["copied"]) == (0, 0, 0)
    assert app.stop() == 0
    box = new_box(tmp_path / "box")
    restored = restore(box, directory)
    assert restored.returncode == 0, restored.stderr
    box.start()
    assert box.index_rows("SELECT COUNT(*) FROM instance") == [(0,)]


@pytest.mark.index_backends("postgresql")  # SQLite's index file is the data directory's (tested above)
def test_restore_into_a_database_that_holds_an_archive_is_refused(archive, tmp_path):
    """IX-01: on PostgreSQL the restore goes into the database the backed-up configuration names,
    which must hold no archive: here the original's, still holding it."""
    directory = tmp_path / "dir"
    directory.mkdir()
    assert backup_full(archive, directory)[0].returncode == 0
    box = new_box(tmp_path / "box")
    rows = archive.index_rows("SELECT id, path FROM instance ORDER BY id")

    refused = service_tool(box.config_path, "restore", str(directory), "--data-dir", str(box.data_dir))

    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == (f"restore refused: the index database {archive.index_url} holds 10 instances. "
                              "A restore goes into an empty archive only\n")
    assert not box.data_dir.exists() and not box.config_path.exists()
    assert archive.index_rows("SELECT id, path FROM instance ORDER BY id") == rows


@pytest.mark.index_backends("postgresql")
def test_reindex_and_restore_are_refused_while_another_box_is_connected(archive, make_appliance, tmp_path):
    """IX-02: two boxes share one PostgreSQL index. While the other box serves it, a full backup
    works, but reindex and restore, which replace the index's content, are refused, naming where
    the other box connects from; nothing is changed. Once it stops, reindex works, and the other
    box, started during the reindex, waits to open the index until it is done. (SQLite: one box
    per index, its data directory's lock, tested above.)"""
    other = make_appliance({"index": {"url": archive.index_url}}, name="other")
    rows = archive.index_rows("SELECT id, path, received_at FROM instance ORDER BY id")
    directory = tmp_path / "dir"
    directory.mkdir()
    assert backup_full(archive, directory)[0].returncode == 0
    refusal = (rf"the index database {re.escape(archive.index_url)} is in use by the appliance service of other "
               r"boxes, connected from 127\.0\.0\.1 \(\d+ connections?\); stop the service on every box that shares "
               r"it first\n")

    reindex = service_tool(archive.config_path, "reindex")

    assert (reindex.returncode, reindex.stdout) == (1, "")
    assert re.fullmatch("reindex refused: " + refusal, reindex.stderr), reindex.stderr
    assert not list(archive.data_dir.glob("index.sqlite*"))

    box = new_box(tmp_path / "box")
    restored = service_tool(box.config_path, "restore", str(directory), "--data-dir", str(box.data_dir))

    assert (restored.returncode, restored.stdout) == (1, "")
    assert re.fullmatch("restore refused: " + refusal, restored.stderr), restored.stderr
    assert not box.data_dir.exists() and not box.config_path.exists()
    assert archive.index_rows("SELECT id, path, received_at FROM instance ORDER BY id") == rows

    # Once it stops, reindex runs; the other box, started meanwhile, waits for it to open the index.
    assert other.stop() == 0
    reindexing = Held(tool_args(archive.config_path, "reindex", "--json", "--progress-every", "1"), filled=True)
    try:
        reindexing.hold("the reindex's first progress line")
        other.spawn()
        wait_for(lambda: other.index_rows("SELECT wait_event FROM pg_stat_activity WHERE application_name = "
                                          "'appliance' AND datname = current_database()") == [("advisory",)],
                 "the other box to wait for the index")
        code, out = reindexing.finish()
    finally:
        if reindexing.proc.poll() is None:
            reindexing.kill()
    assert code == 0, reindexing.text()
    assert json.loads(out)["carried_instances"] == 10
    assert sorted(archive.index_rows("SELECT path, received_at FROM instance")) == sorted(r[1:] for r in rows)
    other.wait_notify("READY=1", 60)
    # Later inserts get new ids: the sequences went past the copied rows.
    store(other, [instance("S906", "S906.1", 1, {"patient_name": "After^Reindex", "patient_id": "PID-AFTER"})],
          tmp_path / "after")
    assert other.index_rows("SELECT COUNT(*) FROM instance") == [(11,)]


def test_help():
    assert tool("restore", "--help").stdout.startswith("usage: service-tool restore ")
    assert "--full DIR" in tool("backup", "--help").stdout
