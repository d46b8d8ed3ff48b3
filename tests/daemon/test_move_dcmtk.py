"""DCMTK movescu asks QUERY-RETRIEVE-SCP for C-MOVEs; STORAGE-SCU sends to DCMTK storescp (QM-*, SU-*, PC-*).

The module's move_archive (tests/conftest.py) holds the studies of tests/support/query_archive.py and
knows the Move Destinations DEST, STORESCP and DOWN. One storescp listens, for the whole
module, on STORESCP's port as AE title STORESCP; each test empties its output directory and
reads only the part of its log written since the test began. storescp runs with:

  +B  bit-preserving: it writes each data set exactly as it came over the wire, in the
      transfer syntax of the context it came on, so an arrived file's data set can be
      compared byte for byte with the stored one;
  -d  its log shows each A-ASSOCIATE-RQ (calling/called AE titles, the proposed contexts),
      each C-STORE-RQ's command (Move Originator fields) and the release.

movescu (-d) prints every C-MOVE-RSP's status and sub-operation counts; no port of its own
(--no-port, the default): it is only the requester, storescp is the destination.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.filereader import read_file_meta_info

import datasets
import query_archive
from destinations import Response
from helpers import dcmtk, dcmtk_error_comment, says_why, wait_for
from helpers import storescp as storescp_process
from query_archive import uid

pytestmark = pytest.mark.index_backends  # C-MOVE on SQLite and on PostgreSQL (IX-01)

CALLED = "EX_QUERY_SCP"
STORE_SCU = "EX_STORE_SCU"  # STORAGE-SCU's default calling AE title (QM-02)
REQUESTER = "DCMTK_MOVER"  # movescu's calling AE title: the Move Originator (QM-03)
DESTINATION = "STORESCP"

SUCCESS, PENDING = 0x0000, 0xFF00
DESTINATION_UNKNOWN = 0xA801
SUBOPERATIONS_FAILED = 0xA702
EXIT_CMOVE_ERROR = 69  # movescu's EXITCODE_CMOVE_ERROR: a failure status in the final response

# SU-14, EL-09, EL-10: Doering's instance says Patient's Sex "X", indexed as U, exported
# present and empty; every other byte of the data set goes out as stored.
OVERLAY = {"S5.1.1": (b"\x10\x00\x40\x00CS\x02\x00X ", b"\x10\x00\x40\x00CS\x00\x00")}


# --- the destination: one storescp for the module ---------------------------------------------

@dataclass
class StoreSCP:
    port: int
    directory: Path  # storescp's --output-directory
    log_path: Path
    proc: subprocess.Popen
    offset: int = 0  # where the current test's part of the log begins

    def reset(self) -> "StoreSCP":
        """A fresh start for a test: an empty output directory, the log read from here on."""
        for path in self.directory.iterdir():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.offset = self.log_path.stat().st_size
        return self

    def log(self) -> str:
        """What storescp logged since reset()."""
        with open(self.log_path, "rb") as f:
            f.seek(self.offset)
            return f.read().decode("latin-1")

    def files(self) -> list[Path]:
        return sorted(path for path in self.directory.rglob("*") if path.is_file())



@pytest.fixture(scope="module")
def storescp(move_archive, tmp_path_factory):
    root = tmp_path_factory.mktemp("storescp")
    directory = root / "received"
    directory.mkdir()
    log_path = root / "storescp.log"
    port = move_archive.destination_ports[DESTINATION]
    with storescp_process(port, DESTINATION, directory, "-d", "+B", log=log_path) as proc:
        yield StoreSCP(port, directory, log_path, proc)


@pytest.fixture
def destination(storescp):
    return storescp.reset()


# --- the requester: movescu -------------------------------------------------------------------

@dataclass
class Moved:
    returncode: int
    output: str
    message_id: int  # of movescu's C-MOVE-RQ
    responses: list[Response]  # every C-MOVE-RSP, the final one last

    @property
    def final(self) -> Response:
        return self.responses[-1]


def _count(value: str) -> int | None:
    return None if value == "none" else int(value)


def _dimse_messages(output: str, direction: str) -> list[dict[str, str]]:
    """The fields of every DIMSE message a DCMTK tool's -d log dumps (INCOMING or OUTGOING)."""
    messages = []
    for block in re.findall(rf"={{5,}} {direction} DIMSE MESSAGE ={{5,}}\n(.*?)\n[DI]: ={{5,}} END DIMSE MESSAGE",
                            output, re.S):
        fields = {}
        for line in block.splitlines():
            key, sep, value = line[3:].partition(" : ")
            if sep:
                fields[key.strip()] = value.strip()
        messages.append(fields)
    return messages


def movescu(app, model: str, level: str, keys: list[str], destination: str = DESTINATION) -> Moved:
    """One C-MOVE (`model` -P or -S) on its own association, as movescu -d reports it."""
    args = ["movescu", "-d", model, "-aet", REQUESTER, "-aec", CALLED, "-aem", destination,
            "-k", f"QueryRetrieveLevel={level}"]
    for key in keys:
        args += ["-k", key]
    run = dcmtk(*args, "127.0.0.1", str(app.qr_port))
    output = run.stdout + run.stderr
    [request] = [m for m in _dimse_messages(output, "OUTGOING") if m.get("Message Type") == "C-MOVE RQ"] or [None]
    assert request is not None, f"movescu sent no C-MOVE-RQ:\n{output}"
    assert request["Move Destination"] == destination, output
    responses = []
    for message in _dimse_messages(output, "INCOMING"):
        assert message.get("Message Type") == "C-MOVE RSP", output
        assert int(message["Message ID Being Responded To"]) == int(request["Message ID"]), output
        code = int(message["DIMSE Status"].split(":")[0], 16)
        responses.append(Response(code, _count(message["Remaining Suboperations"]),
                                  _count(message["Completed Suboperations"]), _count(message["Failed Suboperations"]),
                                  _count(message["Warning Suboperations"])))
    assert responses, f"movescu saw no C-MOVE response:\n{output}"
    return Moved(run.returncode, output, int(request["Message ID"]), responses)


# --- what arrived ------------------------------------------------------------------------------

@dataclass
class Association:
    calling: str
    called: str
    proposed: list[tuple[str, tuple[str, ...]]]  # (abstract syntax, transfer syntaxes) per context


def associations(log: str) -> list[Association]:
    """Every association storescp's -d log shows a request for, with contexts proposed."""
    found = []
    for block in re.findall(r"BEGIN A-ASSOCIATE-RQ =+\n(.*?)\n[DI]: =+ END A-ASSOCIATE-RQ", log, re.S):
        calling = re.search(r"Calling Application Name: *(.*)", block).group(1).strip()
        called = re.search(r"Called Application Name: *(.*)", block).group(1).strip()
        proposed = []
        for context in re.split(r"\n[DI]:   Context ID: ", block)[1:]:
            abstract = re.search(r"Abstract Syntax: *(\S+)", context).group(1)
            syntaxes = re.search(r"Proposed Transfer Syntax\(es\):\n(.*)", context, re.S).group(1)
            proposed.append((abstract, tuple(re.findall(r"^[DI]: {7}(\S+)$", syntaxes, re.M))))
        if calling or called or proposed:  # not storescp's readiness probe (a bare TCP connect)
            found.append(Association(calling, called, proposed))
    return found


def stored(app) -> dict[str, tuple[Path, str]]:
    """SOP Instance UID -> (stored file, transfer syntax) from the appliance's index."""
    rows = app.index_rows("SELECT sop_instance_uid, path, transfer_syntax_uid FROM instance")
    return {sop: (app.data_dir / "store" / path, syntax) for sop, path, syntax in rows}


def labels(sop_uids) -> list[str]:
    return sorted(query_archive.label(value) for value in sop_uids)


def expected_dataset(label: str, stored_bytes: bytes) -> bytes:
    if label not in OVERLAY:
        return stored_bytes  # SU-15: as stored
    old, new = OVERLAY[label]
    assert stored_bytes.count(old) == 1, f"{label}: the stored file is not what this test expects"
    return stored_bytes.replace(old, new)


def assert_arrived(app, destination: StoreSCP, moved: Moved, expected: list[str]) -> None:
    """Exactly the `expected` instances arrived, over one association from STORAGE-SCU that was
    released, each in its stored transfer syntax with the stored data set bytes."""
    log = wait_for(lambda: (text := destination.log()).count("Association Release") and text,
                   "storescp to log the release of STORAGE-SCU's association")
    context = f"movescu:\n{moved.output}\nstorescp:\n{log}"
    # QM-02, SU-02: one association, opened under STORAGE-SCU's title, released (not aborted).
    [association] = associations(log) or [None]
    assert association is not None, context
    assert (association.calling, association.called) == (STORE_SCU, DESTINATION), context
    assert log.count("Association Release") == 1 and "Abort" not in log, context
    # PC-08, PC-10: contexts for CT Image Storage only (every instance of the archive is CT),
    # one transfer syntax each, for the syntaxes of CT's matrix.
    assert sorted(association.proposed) == [("=CTImageStorage", ("=LittleEndianExplicit",)),
                                            ("=CTImageStorage", ("=LittleEndianImplicit",))], context
    # One C-STORE-RQ per instance, none twice (storescp would overwrite a file received
    # twice), each naming the C-MOVE's requester and message (QM-03).
    stores = [m for m in _dimse_messages(log, "INCOMING") if m.get("Message Type") == "C-STORE RQ"]
    assert labels(m["Affected SOP Instance UID"] for m in stores) == expected, context
    for message in stores:
        assert message["Move Originator AE Title"] == REQUESTER, context
        assert int(message["Move Originator ID"]) == moved.message_id, context
    # The files: exactly the expected instances, byte for byte (SU-15, SU-14), in the stored
    # transfer syntax (PC-12: storescp accepted both syntaxes proposed).
    files = destination.files()
    metas = {path: read_file_meta_info(path) for path in files}
    assert labels(meta.MediaStorageSOPInstanceUID for meta in metas.values()) == expected, context
    index = stored(app)
    for path, meta in metas.items():
        sop = meta.MediaStorageSOPInstanceUID
        stored_path, stored_syntax = index[sop]
        assert meta.TransferSyntaxUID == stored_syntax, f"{query_archive.label(sop)}: sent in {meta.TransferSyntaxUID}"
        want = expected_dataset(query_archive.label(sop), datasets.dataset_bytes(stored_path))
        assert datasets.dataset_bytes(path) == want, f"{query_archive.label(sop)}: data set differs from the stored one"


def assert_progress(moved: Moved, count: int) -> None:
    """QM-07: Pending with Remaining = the matches first; QM-08: a Pending after each instance;
    QM-09: final 0000 with the counts (no Remaining), movescu exits 0."""
    pending = [Response(PENDING, count - n, n, 0, 0) for n in range(count + 1)]
    assert moved.responses == [*pending, Response(SUCCESS, None, count, 0, 0)], moved.output
    assert moved.returncode == 0, moved.output


# --- the tests -----------------------------------------------------------------------------------

S1, S2, S3, S4, S6, S7 = (uid(f"S{n}") for n in (1, 2, 3, 4, 6, 7))
S1_1, S1_2 = uid("S1.1"), uid("S1.2")

# id: (model, level, keys, labels of the instances that must arrive)
MOVES = {
    "study-root-STUDY": ("-S", "STUDY", [f"StudyInstanceUID={S1}"], ["S1.1.1", "S1.1.2", "S1.2.1"]),
    "study-root-STUDY-list": ("-S", "STUDY", [f"StudyInstanceUID={S2}\\{S3}"], ["S2.1.1", "S3.1.1"]),
    # Latin-1 and UTF-8 names, a "%" in a Patient ID, an empty birth date: still byte for byte.
    "study-root-STUDY-list-charsets": ("-S", "STUDY", [f"StudyInstanceUID={S4}\\{S6}\\{S7}"],
                                       ["S4.1.1", "S6.1.1", "S7.1.1"]),
    "study-root-SERIES": ("-S", "SERIES", [f"StudyInstanceUID={S1}", f"SeriesInstanceUID={S1_2}"], ["S1.2.1"]),
    "study-root-SERIES-list": ("-S", "SERIES", [f"StudyInstanceUID={S1}", f"SeriesInstanceUID={S1_1}\\{S1_2}"],
                               ["S1.1.1", "S1.1.2", "S1.2.1"]),
    "study-root-IMAGE": ("-S", "IMAGE", [f"StudyInstanceUID={S1}", f"SeriesInstanceUID={S1_1}",
                                         f"SOPInstanceUID={uid('S1.1.2')}"], ["S1.1.2"]),
    "study-root-IMAGE-list": ("-S", "IMAGE", [f"StudyInstanceUID={S1}", f"SeriesInstanceUID={S1_1}",
                                              f"SOPInstanceUID={uid('S1.1.1')}\\{uid('S1.1.2')}"],
                              ["S1.1.1", "S1.1.2"]),
    # Every study of the patient: S1 and S2.
    "patient-root-PATIENT": ("-P", "PATIENT", ["PatientID=PID-1"], ["S1.1.1", "S1.1.2", "S1.2.1", "S2.1.1"]),
    # Patient's Sex X, indexed as U: exported present and empty, the rest as stored (OVERLAY).
    "patient-root-PATIENT-sex-overlay": ("-P", "PATIENT", ["PatientID=PID-4"], ["S5.1.1"]),
    "patient-root-STUDY": ("-P", "STUDY", ["PatientID=PID-1", f"StudyInstanceUID={S2}"], ["S2.1.1"]),
    "patient-root-SERIES": ("-P", "SERIES", ["PatientID=PID-1", f"StudyInstanceUID={S1}",
                                             f"SeriesInstanceUID={S1_1}"], ["S1.1.1", "S1.1.2"]),
    "patient-root-IMAGE": ("-P", "IMAGE", ["PatientID=PID-1", f"StudyInstanceUID={S1}", f"SeriesInstanceUID={S1_2}",
                                           f"SOPInstanceUID={uid('S1.2.1')}"], ["S1.2.1"]),
}


@pytest.mark.parametrize("model,level,keys,expected", MOVES.values(), ids=MOVES.keys())
def test_movescu_moves_exactly_the_matches_to_storescp(move_archive, destination, model, level, keys, expected):
    """QM-01: C-MOVE SCP for Patient Root (-P) and Study Root (-S) at every level, with UID lists
    of the level's unique key (QM-05). QM-02, SU-02: the instances go to the Move Destination's
    address from remote_aes over one new association under STORAGE-SCU's title EX_STORE_SCU,
    released when done; QM-03: each C-STORE-RQ names movescu's AE title and message ID.
    QM-07..QM-09: Pending FF00 with the counts, then 0000. PC-08, PC-10: one context per
    (class, transfer syntax), for the move set's class only; PC-12: each instance in its stored
    transfer syntax. SU-15: data sets byte for byte as stored; SU-14, EL-10: Patient's Sex
    indexed as U goes out empty."""
    moved = movescu(move_archive, model, level, keys)
    assert_progress(moved, len(expected))
    assert_arrived(move_archive, destination, moved, sorted(expected))


def test_a_move_without_matches_opens_no_association(move_archive, destination):
    """QM-16: no match: the initial Pending says Remaining 0, the final 0000 has all counts 0,
    and STORAGE-SCU opens no association (SU-01: nothing to send)."""
    moved = movescu(move_archive, "-S", "STUDY", [f"StudyInstanceUID={uid('S99')}"])
    assert_progress(moved, 0)
    assert destination.files() == [] and associations(destination.log()) == [], destination.log()


def test_an_unknown_destination_gets_A801_and_nothing_is_sent(move_archive, destination):
    """QM-04: a Move Destination not in remote_aes: final A801 without pending responses or
    counts, movescu exits with its C-MOVE error code, nothing is sent anywhere; the refusal is
    logged (LG-06) as a WARNING, the requester's mistake (issue 22), and its reason is the A801's
    Error Comment, which movescu -d prints (UL-05)."""
    start = len(move_archive.log())
    moved = movescu(move_archive, "-S", "STUDY", [f"StudyInstanceUID={S1}"], destination="NOWHERE")
    assert moved.responses == [Response(DESTINATION_UNKNOWN, None, None, None, None)], moved.output
    assert "Refused: MoveDestinationUnknown" in moved.output, moved.output
    assert moved.returncode == EXIT_CMOVE_ERROR, moved.output
    assert destination.files() == [] and associations(destination.log()) == [], destination.log()
    logged = move_archive.wait_log(rf"WARNING appliance\.qr_scp: QUERY-RETRIEVE-SCP #\d+ {REQUESTER}@127\.0\.0\.1:\d+: "
                                   r"C-MOVE #\d+ to NOWHERE status 0xA801: (.*)", since=start)
    assert says_why(dcmtk_error_comment(moved.output), logged.group(1)), moved.output
    assert "STORAGE-SCU" not in move_archive.log()[start:], move_archive.log()[start:]


def test_a_destination_that_does_not_listen_gets_A702_and_an_alert(move_archive, destination):
    """QM-12, D-5: DOWN is known but nothing listens there: after the initial Pending
    (Remaining 3, QM-07) the final response is A702 with Completed 0 and all 3 instances
    failed and listed in Failed SOP Instance UID List (QM-11; never B000, QM-10), movescu
    exits with its C-MOVE error code; the appliance raises an alert naming the destination
    (LG-09) and logs the A702 as an error (LG-06), its reason in the A702's Error Comment too
    (UL-05). SU-04: no open retries by default."""
    start = len(move_archive.log())
    moved = movescu(move_archive, "-S", "STUDY", [f"StudyInstanceUID={S1}"], destination="DOWN")
    assert moved.responses == [Response(PENDING, 3, 0, 0, 0), Response(SUBOPERATIONS_FAILED, None, 0, 3, 0)], \
        moved.output
    assert "Refused: OutOfResourcesSubOperations" in moved.output, moved.output
    # QM-11: the final response's Failed SOP Instance UID List names every instance not sent.
    failed_list = re.search(r"^D: \(0008,0058\) UI \[(.*?)\]", moved.output, re.M)
    assert failed_list and labels(failed_list.group(1).split("\\")) == ["S1.1.1", "S1.1.2", "S1.2.1"], moved.output
    assert moved.returncode == EXIT_CMOVE_ERROR, moved.output
    port = move_archive.destination_ports["DOWN"]
    logged = move_archive.wait_log(rf"ERROR appliance\.qr_scp: QUERY-RETRIEVE-SCP #\d+ {REQUESTER}@127\.0\.0\.1:\d+: "
                                   r"C-MOVE #\d+ to DOWN: .*status 0xA702: (no association: cannot connect .*)",
                                   since=start)
    assert says_why(dcmtk_error_comment(moved.output), logged.group(1)), moved.output
    log = move_archive.log()[start:]
    alerts = [line for line in log.splitlines() if " ALERT " in line]
    assert len(alerts) == 1 and f"{STORE_SCU}->DOWN@127.0.0.1:{port}" in alerts[0], log
    assert "attempt" not in log, log  # no association-open retry (storage_scu.open_retries 0)
    assert destination.files() == [] and associations(destination.log()) == [], destination.log()
