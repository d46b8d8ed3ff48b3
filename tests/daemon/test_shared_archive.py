"""Two real daemons sharing one archive (IX-02): one PostgreSQL index (a database of the session's
`postgres_cluster`) and one `storage.store_dir`, each box with its own data directory (spool,
lock, control socket, log, node-id) on the store's file system, its own ports and AE titles
(ARCHIVE_A, ARCHIVE_B, ...) and the same remote AE table, as docs/installation.md "More than
one box" sets them up. Everything is asserted through real DICOM over sockets (DCMTK storescu,
findscu, movescu, storescp; pynetdicom; a raw socket where a peer must misbehave on purpose).

What a shared archive must keep true, checked at the end of each test (`assert_consistent`): every
non-empty file in the store is named by exactly one index row, every row names a file, and no
spool holds anything but the empty files a box makes ahead.
"""

from __future__ import annotations

import datetime
import itertools
import os
import re
import subprocess
import threading
from collections import Counter
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pynetdicom.dimse_primitives import N_ACTION
from pynetdicom.dsutils import encode

import datasets
import pdus
import postgres
import scu
from appliance.store.models import CommitmentRequest
from commitment_peer import SCPM, SCPM_INSTANCE, Modality, n_action, request
from helpers import READY_TIMEOUT, Appliance, dcmtk, free_port, storescp, wait_for

pytestmark = pytest.mark.postgresql

ROOT = "1.2.826.0.1.3680043.9.7433.42"  # this module's test UIDs
MODALITY = "MODALITY1"  # a Storage Commitment requester; its listener is in both boxes' remote AE table
DESTINATION = "STORESCP"  # a C-MOVE destination (DCMTK storescp), likewise
PATIENT = ("Shared^Patient", "SHARED-1")  # every study of a test: one patient row both boxes fill
SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700
WAIT = 20.0  # seconds, the bound of every wait for the daemons (each test stays far below it)

_databases = itertools.count(1)


def uid(*parts) -> str:
    return ".".join((ROOT, *map(str, parts)))


# --- the archive: two boxes -----------------------------------------------------------------

@dataclass
class SharedArchive:
    nodes: dict[str, Appliance]  # "A", "B" -> the box
    store: Path  # the shared storage.store_dir
    url: str  # the shared index.url
    ports: dict[str, int]  # remote AE title -> its port on 127.0.0.1

    @property
    def a(self) -> Appliance:
        return self.nodes["A"]

    @property
    def b(self) -> Appliance:
        return self.nodes["B"]

    def rows(self, sql: str, *params) -> list[tuple]:
        return self.a.index_rows(sql, *params)

    def settled(self) -> None:
        """Until no spool holds a data set: every instance received is stored for good (its row
        committed) or gone; only the empty files made ahead keep spool names."""
        for node in self.nodes.values():
            wait_for(lambda node=node: not node.in_flight(), f"the spool of {node.storage_title} to settle", WAIT)

    def stored_files(self) -> list[str]:
        """The store's files that hold an instance (relative to the store), once settled: all but
        the empty ones each box made ahead (they have a spool name in that box's data dir)."""
        self.settled()
        made_ahead = {p.stem for node in self.nodes.values() for p in (node.data_dir / "spool").iterdir()}
        return sorted(str(p.relative_to(self.store)) for p in self.store.rglob("*.dcm")
                      if p.is_file() and p.stem not in made_ahead)

    def assert_consistent(self) -> None:
        """No orphan file, no row without its file, no file named by two rows (IX-02)."""
        paths = [path for (path,) in self.rows("SELECT path FROM instance")]
        doubled = [path for path, count in Counter(paths).items() if count > 1]
        assert not doubled, f"files named by more than one row: {doubled}"
        files = self.stored_files()
        assert sorted(paths) == files, (f"rows without a file: {sorted(set(paths) - set(files))}; "
                                        f"files without a row: {sorted(set(files) - set(paths))}")
        for node in self.nodes.values():  # made ahead: empty, never a data set
            assert all(p.stat().st_size == 0 for p in (node.data_dir / "spool").iterdir()), node.storage_title


def node_config(name: str, store: Path, ports: dict[str, int], storage_scp: dict) -> dict:
    """Box `name`'s configuration: its own AE titles, the shared store and remote AE table."""
    return {
        "storage_scp": {"ae_title": f"ARCHIVE_{name}", "report_retry_interval": 1.0, **storage_scp},
        "query_retrieve_scp": {"ae_title": f"ARCHIVE_{name}_QR"},
        "storage_scu": {"ae_title": f"ARCHIVE_{name}_SCU", "open_retry_delay": 0.2},
        "storage": {"store_dir": str(store)},
        "remote_aes": [{"ae_title": title, "host": "127.0.0.1", "port": port} for title, port in ports.items()],
    }


@pytest.fixture
def make_shared(tmp_path, postgres_cluster):
    """`make_shared(**storage_scp)`: boxes A and B on a new database and a new store_dir under
    tmp_path (their data dirs beside it: one file system), started at once (one migrates the new
    database, the other waits for it). At teardown both stop, each with exit code 0, and the
    database is dropped."""
    made: list[tuple[SharedArchive, str]] = []

    def make(**storage_scp) -> SharedArchive:
        assert not made, "one shared archive per test"
        name = f"shared_{os.getpid()}_{next(_databases)}"
        url = postgres_cluster.create_database(name)
        store = tmp_path / "store"
        store.mkdir()  # as the installer does on the share (the service never makes it)
        ports = {MODALITY: free_port(), DESTINATION: free_port()}
        nodes = {n: Appliance(tmp_path / f"node-{n.lower()}", node_config(n, store, ports, storage_scp), index_url=url)
                 for n in ("A", "B")}
        archive = SharedArchive(nodes, store, url, ports)
        made.append((archive, name))
        for node in nodes.values():
            node.spawn()
        for node in nodes.values():
            node.ready_message = node.wait_notify("READY=1", READY_TIMEOUT)
        return archive

    yield make
    for archive, name in made:
        try:
            codes = {node.storage_title: node.stop() for node in archive.nodes.values()}
            assert codes == {node.storage_title: 0 for node in archive.nodes.values()}, \
                "\n".join(f"--- {n.storage_title}:\n{n.log()}" for n in archive.nodes.values())
        finally:
            for node in archive.nodes.values():
                if node.proc is not None and node.proc.poll() is None:
                    node.kill()
            if not postgres_cluster.running:  # a test that failed during the outage
                postgres_cluster.start()
            postgres_cluster.drop_database(name)


# --- instances and DICOM clients ------------------------------------------------------------

def instance_file(directory: Path, study: int, number: int, rows: int = 8, **elements) -> Path:
    """Instance `number` of study `study` (one series, 1.1) of PATIENT, as a file named by its UID."""
    sop = uid(study, 1, number)
    ds = datasets.image(rows=rows, columns=rows, patient_name=PATIENT[0], patient_id=PATIENT[1],
                        study_uid=uid(study), series_uid=uid(study, 1), sop_instance_uid=sop,
                        **{"InstanceNumber": str(number), **elements})
    directory.mkdir(parents=True, exist_ok=True)
    return datasets.write(ds, directory / f"{sop}.dcm")


def storescu_command(node: Appliance, files: list[Path], calling: str) -> list[str]:
    return ["storescu", "-v", "-aet", calling, "-aec", node.storage_title, "127.0.0.1", str(node.storage_port),
            *map(str, files)]


def acknowledged(output: str) -> dict[str, str]:
    """SOP Instance UID (the file's stem) -> storescu's text for the C-STORE-RSP it received."""
    answered, sending = {}, None
    for line in output.splitlines():
        if found := re.match(r"I: Sending file: (\S+)", line):
            sending = Path(found[1]).stem
        elif (found := re.match(r"I: Received Store Response \((.*)\)", line)) and sending:
            answered[sending], sending = found[1], None
    return answered


def run_storescu_in_parallel(jobs: list[tuple[Appliance, list[Path], str]], log_dir: Path) -> None:
    """storescu processes at once, one association each; every one must get every C-STORE
    answered Success."""
    log_dir.mkdir(exist_ok=True)
    env = {**os.environ, "TCP_NODELAY": "1"}
    running = []
    for n, (node, files, calling) in enumerate(jobs):
        out = open(log_dir / f"storescu-{n}.log", "wb")
        running.append((subprocess.Popen(storescu_command(node, files, calling), stdout=out,
                                         stderr=subprocess.STDOUT, env=env), out, files, n))
    try:
        for proc, out, files, n in running:
            code = proc.wait(60)
            out.close()
            output = (log_dir / f"storescu-{n}.log").read_text(errors="replace")
            assert code == 0, output
            assert acknowledged(output) == {f.stem: "Success" for f in files}, output
    finally:
        for proc, out, _, _ in running:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            out.close()


def find(node: Appliance, level: str, **keys) -> tuple[int, list[pydicom.Dataset]]:
    """A Study Root C-FIND (pynetdicom) at `level` on `node`'s QUERY-RETRIEVE-SCP: the final
    status and the identifiers of the pending responses."""
    title = node.config["query_retrieve_scp"]["ae_title"]
    with scu.association(node.qr_port, title, scu.query_contexts()) as assoc:
        responses = scu.find(assoc, datasets.STUDY_ROOT_FIND, scu.identifier({"QueryRetrieveLevel": level, **keys}))
    return responses[-1][0], [found for status, found in responses[:-1]]


def instances_found(node: Appliance, study: str) -> set[str]:
    """Every SOP Instance UID of series 1 of `study` that `node`'s C-FIND finds."""
    final, found = find(node, "IMAGE", StudyInstanceUID=study, SeriesInstanceUID=f"{study}.1", SOPInstanceUID="")
    assert final == SUCCESS, hex(final)
    return {str(ds.SOPInstanceUID) for ds in found}


def findscu_studies(node: Appliance, out_dir: Path) -> dict[str, int]:
    """findscu at STUDY level for PATIENT on `node`: Study Instance UID -> its number of instances."""
    out_dir.mkdir(parents=True)
    run = dcmtk("findscu", "-v", "-S", "-aet", "FINDSCU", "-aec", node.config["query_retrieve_scp"]["ae_title"],
                "-X", "-od", str(out_dir), "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID={PATIENT[1]}",
                "-k", "StudyInstanceUID", "-k", "NumberOfStudyRelatedInstances", "127.0.0.1", str(node.qr_port),
                timeout=30)
    output = run.stdout + run.stderr
    assert run.returncode == 0 and "Received Final Find Response (Success)" in output, output
    found = [pydicom.dcmread(path) for path in sorted(out_dir.glob("rsp*.dcm"))]
    assert len(found) == output.count("Received Find Response"), output
    return {str(ds.StudyInstanceUID): int(ds.NumberOfStudyRelatedInstances) for ds in found}


def store_one(node: Appliance, path: Path, calling: str = "SCU") -> int:
    with scu.association(node.storage_port, node.storage_title, calling=calling) as assoc:
        return scu.send_file(assoc, path)


# --- 1. parallel C-STOREs to both boxes ------------------------------------------------------

def test_parallel_stores_to_both_boxes_are_found_through_each(make_shared, tmp_path):
    """IX-02: 2 x 50 instances (five studies of ten a box), ten storescu associations at once,
    all of one patient: every C-STORE 0000; each box's C-FIND (findscu and pynetdicom) finds
    every instance of both; exactly 100 rows, one patient, every file in the shared store."""
    archive = make_shared()
    studies = {"A": range(1, 6), "B": range(6, 11)}
    jobs = []
    for name, numbers in studies.items():
        for study in numbers:
            files = [instance_file(tmp_path / "in" / str(study), study, n) for n in range(1, 11)]
            jobs.append((archive.nodes[name], files, f"MODALITY_{name}{study}"))
    run_storescu_in_parallel(jobs, tmp_path / "logs")

    expected = {uid(study): {uid(study, 1, n) for n in range(1, 11)} for study in range(1, 11)}
    for name, node in archive.nodes.items():
        assert findscu_studies(node, tmp_path / f"findscu-{name}") == {study: 10 for study in expected}, name
        for study, instances in expected.items():
            assert instances_found(node, study) == instances, (name, study)
    assert archive.rows("SELECT COUNT(*), COUNT(DISTINCT sop_instance_uid) FROM instance") == [(100, 100)]
    assert archive.rows("SELECT patient_id FROM patient") == [(PATIENT[1],)]  # one patient, no coerced ID
    assert archive.rows("SELECT COUNT(*) FROM study") == [(10,)]
    calling = dict(archive.rows("SELECT sop_instance_uid, calling_ae FROM instance"))
    assert all(calling[uid(study, 1, 1)] == f"MODALITY_{name}{study}" for name, numbers in studies.items()
               for study in numbers)
    archive.assert_consistent()
    assert len(archive.stored_files()) == 100


# --- 2. C-MOVE through the other box ---------------------------------------------------------

def test_a_study_stored_through_a_is_moved_through_b(make_shared, tmp_path):
    """IX-02, QM-*: a study stored only through box A is retrieved through box B's
    QUERY-RETRIEVE-SCP (DCMTK movescu) to DCMTK storescp: every sub-operation succeeds, B's
    STORAGE-SCU sends it, and each data set arrives byte for byte as stored (storescp +B)."""
    archive = make_shared()
    files = [instance_file(tmp_path / "in", 20, n, rows=32) for n in range(1, 21)]
    run_storescu_in_parallel([(archive.a, files, "MODALITY")], tmp_path / "logs")
    received, log = tmp_path / "received", tmp_path / "storescp.log"
    received.mkdir()
    with storescp(archive.ports[DESTINATION], DESTINATION, received, "-d", "+B", log=log):
        run = dcmtk("movescu", "-v", "-S", "-aet", "MOVER", "-aec", archive.b.config["query_retrieve_scp"]["ae_title"],
                    "-aem", DESTINATION, "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid(20)}",
                    "127.0.0.1", str(archive.b.qr_port), timeout=60)
        output = run.stdout + run.stderr
        assert run.returncode == 0 and "Received Final Move Response (Success)" in output, output
        arrived = wait_for(lambda: len(found := sorted(received.iterdir())) == 20 and found,
                           "20 files at storescp", WAIT)
        wait_for(lambda: "Association Release" in log.read_text(errors="replace"), "storescp to log the release",
                 WAIT)
    assert re.search(r"Calling Application Name: +ARCHIVE_B_SCU\b", log.read_text(errors="replace"))
    stored = dict(archive.rows("SELECT sop_instance_uid, path FROM instance"))
    assert sorted(stored) == sorted(f.stem for f in files)
    for path in arrived:
        sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert datasets.dataset_bytes(path) == datasets.dataset_bytes(archive.store / stored[sop]), sop
    assert archive.b.wait_log(r"20 instances sent \(0 with warnings\)")
    archive.assert_consistent()


# --- 3. the same SOP Instance UID at both boxes at once ---------------------------------------

RACES = 50


@pytest.mark.parametrize("content, policy", [("identical", "new_uid"), ("different", "replace"),
                                             ("different", "new_uid")],
                         ids=["identical-ST25", "different-replace-ST18", "different-new_uid-ST17"])
def test_one_uid_sent_to_both_boxes_at_once(make_shared, tmp_path, content, policy):
    """IX-02 with ST-25, ST-18, ST-17: 50 SOP Instance UIDs, each sent to box A and box B at the
    same moment (two associations, a barrier before every C-STORE). Each C-STORE is 0000 and
    the index holds exactly what the policy says, decided once (the archive's one writer):
    identical data sets one row and one file; different ones under "replace" one row whose file
    is one of the two sent; under "new_uid" (the default) two rows, one under a new UID."""
    archive = make_shared(duplicate_policy=policy)
    sent = {}  # (node, uid) -> the file sent
    for n in range(1, RACES + 1):
        first = instance_file(tmp_path / "A", 30, n)
        sent["A", uid(30, 1, n)] = first
        if content == "identical":
            second = tmp_path / "B" / first.name
            second.parent.mkdir(exist_ok=True)
            second.write_bytes(first.read_bytes())
        else:  # the same UIDs, another data set (other pixels, other Instance Number)
            second = instance_file(tmp_path / "B", 30, n, InstanceNumber=str(1000 + n))
        sent["B", uid(30, 1, n)] = second
    statuses: dict[str, list] = {"A": [], "B": []}
    barrier = threading.Barrier(2, timeout=WAIT)
    failures = []

    def sender(name: str) -> None:
        node = archive.nodes[name]
        try:
            with scu.association(node.storage_port, node.storage_title, calling=f"RACER_{name}") as assoc:
                for n in range(1, RACES + 1):
                    barrier.wait()
                    statuses[name].append(scu.send_file(assoc, sent[name, uid(30, 1, n)]))
        except BaseException as exc:
            failures.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=sender, args=(name,)) for name in ("A", "B")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a sender did not finish within 60 s"
    assert not failures, failures
    assert statuses == {"A": [SUCCESS] * RACES, "B": [SUCCESS] * RACES}

    rows = archive.rows("SELECT sop_instance_uid, file_sop_instance_uid, path FROM instance")
    by_uid = {}
    for sop, file_sop, path in rows:
        by_uid.setdefault(file_sop, []).append((sop, path))
    assert sorted(by_uid) == sorted(uid(30, 1, n) for n in range(1, RACES + 1))
    for file_sop, kept in by_uid.items():
        if content == "identical" or policy == "replace":  # ST-25 / ST-18: one row, one file
            [(sop, path)] = kept
            assert sop == file_sop
            stored = datasets.dataset_bytes(archive.store / path)
            candidates = {datasets.dataset_bytes(sent[name, file_sop]) for name in ("A", "B")}
            assert stored in candidates, file_sop
        else:  # ST-17: both kept, the second under a UID of its own, each file as sent
            assert len(kept) == 2, (file_sop, kept)
            assert sorted(sop == file_sop for sop, _ in kept) == [False, True], kept
            assert {datasets.dataset_bytes(archive.store / path) for _, path in kept} == {
                datasets.dataset_bytes(sent[name, file_sop]) for name in ("A", "B")}, file_sop
    expected = RACES * (2 if (content, policy) == ("different", "new_uid") else 1)
    assert len(rows) == expected and len({sop for sop, _, _ in rows}) == expected
    archive.assert_consistent()
    if content == "identical":
        logs = archive.a.log() + archive.b.log()
        assert len(re.findall(r"already stored: the same data set as indexed instance", logs)) == RACES


# --- 4. Storage Commitment through both boxes ------------------------------------------------

COMMITS = 5  # per box and way


def commit_on_own_association(modality: Modality, node: Appliance, transaction: str, references: list) -> None:
    """N-ACTION on the modality's own association, which stays until its report is in."""
    assoc = modality.associate(node.storage_port, called=node.storage_title)
    try:
        assert n_action(assoc, request(transaction, references)) == SUCCESS
        wait_for(lambda: any(r.transaction_uid == transaction for r in modality.received),
                 f"the report of {transaction}", WAIT)
    finally:
        assoc.release()


def commit_and_release(node: Appliance, transaction: str, references: list) -> None:
    """N-ACTION on a raw association released as soon as the N-ACTION-RSP is in: a report the
    box put on it meanwhile is never answered, so it goes over a new association (SC-12)."""
    message = N_ACTION()
    message.MessageID, message.ActionTypeID = 1, 1
    message.RequestedSOPClassUID, message.RequestedSOPInstanceUID = SCPM, SCPM_INSTANCE
    message.ActionInformation = BytesIO(encode(request(transaction, references), True, True))
    sock = pdus.associated(node.storage_port, (SCPM, (datasets.ILE,)), called=node.storage_title, calling=MODALITY)
    with sock:
        sock.sendall(b"".join(pdus.p_data(message)))
        reader = pdus.Reader(sock)
        assert reader.pdu()[:1] == b"\x04"  # the N-ACTION-RSP
        sock.sendall(pdus.RELEASE_RQ)
        while (pdu := reader.pdu())[:1] == b"\x04":  # a report on its way: not answered
            pass
        assert pdu[:1] == b"\x06", pdu  # A-RELEASE-RP


def test_commitment_reports_are_delivered_exactly_once(make_shared, tmp_path, modalities):
    """IX-02, SC-11, SC-12: Storage Commitment requests to both boxes at once, for instances
    stored through both; half on the modality's association, half released at once so their
    reports go over a new association (claimed by one box). The modality's listener and its
    own associations get every report exactly once, all committed, and no request is left."""
    archive = make_shared()
    references = []
    for name, study in (("A", 40), ("B", 41)):
        files = [instance_file(tmp_path / name, study, n) for n in range(1, 4)]
        run_storescu_in_parallel([(archive.nodes[name], files, MODALITY)], tmp_path / f"logs-{name}")
        references += [(datasets.CT, f.stem) for f in files]
    modality = Modality(MODALITY, archive.ports[MODALITY]).listen()
    modalities.append(modality)
    transactions, failures = [], []

    def requester(name: str, way: str) -> None:
        try:
            for n in range(COMMITS):
                transaction = uid(49, ord(name), 1 if way == "own" else 2, n)
                transactions.append(transaction)
                if way == "own":
                    commit_on_own_association(modality, archive.nodes[name], transaction, references)
                else:
                    commit_and_release(archive.nodes[name], transaction, references)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=requester, args=(name, way)) for name in ("A", "B") for way in ("own", "new")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads) and not failures, failures
    assert len(transactions) == 4 * COMMITS
    # Delivered at once, not when a next_attempt rounded to 128 s falls due (it was a 4-byte
    # REAL on PostgreSQL before migration 7).
    wait_for(lambda: archive.rows("SELECT COUNT(*) FROM commitment_request") == [(0,)],
             "no commitment request left in the index", 10)
    assert archive.rows("SELECT data_type FROM information_schema.columns WHERE table_name = 'commitment_request' "
                        "AND column_name = 'next_attempt'") == [("double precision",)]
    received = modality.wait_for(len(transactions), WAIT)
    assert Counter(r.transaction_uid for r in received) == Counter(transactions)  # each exactly once
    assert all(r.event_type == 1 and sorted(r.committed) == sorted(references) and not r.failed for r in received)
    over_new = {r.transaction_uid for r in received if not r.own_association}
    assert over_new >= {t for t in transactions if t.split(".")[-2] == "2"}
    assert all(r.calling in ("ARCHIVE_A", "ARCHIVE_B") for r in received if not r.own_association)
    logs = archive.a.log() + archive.b.log()
    for transaction in transactions:  # and one box says it delivered it
        assert len(re.findall(rf"N-EVENT-REPORT transaction {re.escape(transaction)} .*status 0x0000, delivered",
                              logs)) == 1, transaction
    archive.assert_consistent()


# --- 5. one box killed in the middle of a transfer --------------------------------------------

def test_a_box_killed_mid_transfer_recovers_and_the_other_serves_on(make_shared, tmp_path):
    """IX-02, ST-06, FL-02: box A is killed (SIGKILL) while storescu sends it 600 instances and
    another association is in the middle of a large data set. Box B stores and finds all along;
    A, started again on its data dir, recovers its spool (the partial data set removed, logged),
    and every instance acknowledged 0000 before the kill is indexed and found through both."""
    archive = make_shared()
    a, b = archive.a, archive.b
    files = [instance_file(tmp_path / "many", 50, n, rows=32) for n in range(1, 601)]
    big = instance_file(tmp_path / "big", 51, 1, rows=1024)  # 2 MiB of pixels
    b_files = iter(instance_file(tmp_path / "b", 52, n) for n in range(1, 4))

    def b_serves() -> None:
        path = next(b_files)
        assert store_one(b, path) == SUCCESS
        assert path.stem in instances_found(b, uid(52))

    # A partial C-STORE: the command and half the data set, on a raw association.
    partial = pdus.associated(a.storage_port, (datasets.CT, (datasets.ELE,)), called=a.storage_title, calling="BIG")
    log_path = tmp_path / "storescu.log"
    with partial, open(log_path, "wb") as out:
        message = pdus.c_store(big, context_id=1)
        partial.sendall(b"".join(message[:len(message) // 2]))
        wait_for(lambda: a.in_flight(larger_than=1 << 19),
                 "the first part of the large data set in A's spool", WAIT)
        proc = subprocess.Popen(storescu_command(a, files, "MODALITY"), stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "TCP_NODELAY": "1"})
        try:
            b_serves()  # while A receives
            wait_for(lambda: len(acknowledged(log_path.read_text(errors="replace"))) >= 40,
                     "40 instances acknowledged by A", WAIT)
            assert proc.poll() is None, "storescu finished before the kill"
            a.kill()
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    output = log_path.read_text(errors="replace")
    answered = acknowledged(output)
    assert proc.returncode != 0 and len(answered) < len(files), output
    acked = {sop for sop, text in answered.items() if text == "Success"}
    assert len(acked) == len(answered) >= 40, output

    b_serves()  # while A is down
    since = len(a.log())
    a.start()
    recovered = a.wait_log(r"recovered after an unclean stop: (\d+) placements completed, (\d+) partial files removed",
                           since=since)
    assert int(recovered[2]) >= 1, a.log()[since:]
    removed = re.findall(r"recovery: removed unacknowledged partial instance (\w+)", a.log()[since:])
    assert removed, a.log()[since:]
    b_serves()  # after

    indexed = {sop for (sop,) in archive.rows("SELECT sop_instance_uid FROM instance WHERE sop_instance_uid LIKE ?",
                                               uid(50, 1, "%"))}
    assert acked <= indexed, sorted(acked - indexed)
    for node in (a, b):
        assert instances_found(node, uid(50)) == indexed, node.storage_title
    assert archive.rows("SELECT COUNT(*) FROM instance WHERE sop_instance_uid = ?", big.stem) == [(0,)]
    archive.assert_consistent()
    assert not any(name in path for name in removed for path in archive.stored_files())


# --- 6. the PostgreSQL server lost and back --------------------------------------------------

def test_a_database_outage_is_answered_a700_and_both_boxes_recover_by_themselves(make_shared, tmp_path,
                                                                                 postgres_cluster):
    """IX-01, IX-02: the server killed (immediate shutdown) while both boxes serve: C-STORE and
    C-FIND are answered A700, each box logs one ALERT and keeps running; the server back, both
    store and find again without a restart, and say so."""
    archive = make_shared()
    for name, node in archive.nodes.items():
        assert store_one(node, instance_file(tmp_path / "before", 60, ord(name))) == SUCCESS
    try:
        postgres_cluster.kill()
        for name, node in archive.nodes.items():
            assert store_one(node, instance_file(tmp_path / "during", 61, ord(name))) == OUT_OF_RESOURCES, name
            final, found = find(node, "STUDY", PatientID=PATIENT[1], StudyInstanceUID="")
            assert (final, found) == (OUT_OF_RESOURCES, []), name
            node.wait_log(r"ALERT appliance\.store\.db: index database postgresql://\S+ unreachable: ")
            assert node.proc.poll() is None, node.log()
    finally:
        postgres_cluster.restart()  # the session's other tests need it
    for name, node in archive.nodes.items():
        path = instance_file(tmp_path / "after", 62, ord(name))
        assert store_one(node, path) == SUCCESS, node.log()
        node.wait_log(r"WARNING appliance\.store\.db: index database postgresql://\S+ reachable again")
    for node in archive.nodes.values():
        assert instances_found(node, uid(60)) == {uid(60, 1, ord(n)) for n in "AB"}
        assert instances_found(node, uid(62)) == {uid(62, 1, ord(n)) for n in "AB"}
        assert instances_found(node, uid(61)) == set()
        assert len(re.findall(r"index database \S+ unreachable", node.log())) == 1, node.log()
        assert node.proc.poll() is None
    archive.assert_consistent()


def test_a_commitment_requests_next_attempt_keeps_its_microseconds(postgres_cluster):
    """What test_commitment_reports_are_delivered_exactly_once found: peewee's FloatField is a
    4-byte REAL on PostgreSQL, which rounds a time.time() to 128 s (reports went up to a minute
    late); the column is DOUBLE PRECISION."""
    from appliance.store.postgres import PostgresIndex

    name = f"shared_{os.getpid()}_{next(_databases)}"
    url = postgres_cluster.create_database(name)
    try:
        index = PostgresIndex(url)
        try:
            due = 1796616291.123456
            with index.write():
                CommitmentRequest.create(transaction_uid="1.2.3", requester=MODALITY, received_at=datetime.datetime.now(
                    datetime.timezone.utc), committed="[]", failed="[]", next_attempt=due)
            assert CommitmentRequest.get().next_attempt == due
        finally:
            index.close()
    finally:
        postgres_cluster.drop_database(name)
