r"""Coverage-guided fuzzing (atheris/libFuzzer) of the bytes a DICOM peer controls.

Six targets, each a `Service` method that takes one input and raises only when the service's
contract is broken (atheris then reports a crash and saves the input):

``rq``
    The first PDU of an accepted connection, as `acceptor.Listener._readable` and `_requested`
    read it: the 6 header bytes through `pdu.check_header` (an A-ASSOCIATE-RQ within
    CONTROL_PDU_LIMIT; anything else closes the connection or is answered 1/2/1), then the
    announced length through `pdu.decode_request` (ProtocolError: answered 1/2/1, AS-06).
    Contract: a request that decodes is one the service can answer: STORAGE-SCP's
    `Admission.decide` and the listener's negotiation and A-ASSOCIATE-AC (`Listener._answer`,
    on a real Listener whose thread is not started), or the A-ASSOCIATE-RJ, run without an
    exception and encode. Input: the bytes the peer sends (an input shorter than the PDU it
    announces is a peer that closed the connection mid-PDU).
``pdata``
    The byte stream of a STORAGE-SCP association after its A-ASSOCIATE-AC, through a real
    `association.Association` run in the calling thread (`_run`): its `Transport` (built as
    `Listener._requested` builds it) reads the stream from a socket pair, whose other end
    (`_Requester`) writes the input, closes its side and reads all that comes back; the
    association's `dimse.Assembler` puts the messages together, a
    C-STORE data set written into its file as it arrives (`StorageSCP.receiver`, a real
    `files.Incoming`), and the association dispatches them through STORAGE-SCP's routes:
    C-ECHO, and C-STORE to `StorageSCP.on_store` and `Archive.store`. The presentation
    contexts are those `Listener._answer` accepts for the seeds' request (``REQUESTED``).
    Contract: the run ends (a hang is libFuzzer's ``-timeout``: the peer always closes, so no
    timer of the service has to fire), no last resort is reached (`on_store`'s 0xC211 or the
    association's catch-all, both logged as "unexpected failure": only a bug gets there), and
    every file the receiver made is closed and gone; an abort of the association is fine.
    Input: the stream; it ends at its end (the peer's close), at an A-RELEASE-RQ or A-ABORT,
    or at a protocol violation (A-ABORT).
``header``
    `Archive.store` on a received file (a real `files.Incoming`): `store.header.read_header`
    (contract: a Header or `header.Unparseable`), then the checks and index values of the
    header (`ingest.check_required`, `coercion.index_values`). Contract: a StoreOutcome,
    whatever the file holds, and the file is closed and gone. Input: byte 0 bit 0 set =
    Implicit VR (the presentation context's encoding), the rest is the file from its "DICM"
    prefix on (the 128-byte preamble, which the walker does not read, is added); the seeds
    carry the File Meta Information the appliance writes (`ingest.file_meta`).

``find``
    A C-FIND-RQ's identifier through `qr_scp.on_find`, against a small index of real rows:
    decoding (`qr_scp.request_identifier`), validation (`query.identifier`), the SQL
    (`query.matching`), the encoded responses (`query.responses`, `dimse`). The association
    is a stand-in (`_QueryAssociation`) that encodes what the handler sends. Contract: the
    handler ends with one final status from the conformance statement's C-FIND table, never
    its last-resort 0xC311 and never an exception. Input: byte 0 bit 0 set = Patient Root,
    else Study Root; the rest is the identifier in Implicit VR LE (the only transfer syntax
    QUERY-RETRIEVE-SCP accepts).
``move``
    A C-MOVE-RQ's identifier as `dicom.move_scp` reads it (`qr_scp.request_identifier`),
    validated by `query.retrieve.parse` and listed by `query.retrieve.instances` against the
    same index. Contract: a list of instances, or DicomStatusError A900 (QM-05, QM-06);
    nothing else. Input: as for ``find``.
``commitment``
    A Storage Commitment N-ACTION-RQ's Action Information as `dicom.commitment_scp` decodes
    it (lazily, by pydicom) and `parse` reads it. Contract: (Transaction UID, references), or
    DicomStatusError 0110, 0120 or 0121 (SC-03..SC-05); nothing else. Input: byte 0 bit 0 set
    = Implicit VR, else Explicit VR (SC-25); the rest is the data set.

In ``pdata`` and ``header`` the archive is real down to its index, which a stand-in (`_Index`)
replaces: it writes nothing, so `Archive.store` answers A700 and removes the file; a run fills
no disk and no index. Files are not fsynced (the work directory is scratch).

The corpus, tests/fuzz/corpus/<target>/: ``seed-*`` written by ``seeds`` below from
pynetdicom's and pydicom's encoders, ``regression-*`` small inputs of the bugs found, the rest
what libFuzzer kept (named by SHA-1). Usage (libFuzzer flags follow the target; libFuzzer adds
new inputs to the first corpus directory, so fuzz into a scratch directory and merge back)::

    mkdir /tmp/rq && .venv/bin/python tests/fuzz/fuzz_protocol.py rq -max_total_time=600 -timeout=10 \
        -rss_limit_mb=1024 /tmp/rq tests/fuzz/corpus/rq          # findings: ./crash-*, ./timeout-*, ./oom-*
    .venv/bin/python tests/fuzz/fuzz_protocol.py rq -merge=1 tests/fuzz/corpus/rq /tmp/rq
    .venv/bin/python tests/fuzz/fuzz_protocol.py pdata -max_len=16384 ...  # longer PDU streams
    .venv/bin/python tests/fuzz/fuzz_protocol.py seeds      # rewrite the seed-* files

A run works in a fuzz-protocol-* directory under $TMPDIR (storage area and index), removed at
exit; one that ends in a crash leaves it behind. tests/daemon/test_fuzz.py replays the corpus through
the same methods and runs each target briefly.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import logging
import shlex
import shutil
import socket
import sys
import tempfile
import threading
import types
import warnings
from io import BytesIO
from pathlib import Path

if __name__ == "__main__" and sys.argv[1:2] in (["rq"], ["pdata"], ["header"], ["find"], ["move"], ["commitment"]):
    import atheris

    # Coverage feedback from the code that sees the peer's bytes; imported only below.
    _instrumented = atheris.instrument_imports(include=["appliance", "pynetdicom", "pydicom"])
else:
    _instrumented = contextlib.nullcontext()

with _instrumented:
    from pydicom import config as pydicom_config
    from pydicom.dataset import Dataset
    from pydicom.encaps import encapsulate
    from pydicom.sequence import Sequence
    from pynetdicom import dimse_messages, pdu_primitives
    from pynetdicom.dimse_primitives import C_ECHO, C_STORE
    from pynetdicom.dsutils import encode
    from pynetdicom.pdu import A_ASSOCIATE_RQ, A_RELEASE_RQ, P_DATA_TF
    from pynetdicom.presentation import build_context

    from appliance.codes import status, uids
    from appliance.config.model import Config, DefaultValues
    from appliance.dicom import commitment_scp, contexts, dimse, pdu, qr_scp, server, verification
    from appliance.dicom.admission import UNPARSEABLE, Admission, Gate, Slot
    from appliance.dicom.association import Association
    from appliance.dicom.pdu import HEADER, ProtocolError
    from appliance.dicom.session import Session
    from appliance.dicom.storage_scp import StorageSCP
    from appliance.dicom.transport import Transport
    from appliance.errors import DicomStatusError
    from appliance.query import retrieve
    from appliance.query.keys import PATIENT_ROOT, STUDY_ROOT
    from appliance.store import coercion, files, ingest, models
    from appliance.store.db import SqliteIndex

CORPUS = Path(__file__).resolve().parent / "corpus"
CONFIG = Config()
SCP = CONFIG.storage_scp
MAX_PDU = SCP.max_pdu_size  # what the STORAGE-SCP advertises, and its transport enforces

# The presentation contexts the seeds (and so most of the corpus) propose, by context ID.
REQUESTED = {1: (uids.VERIFICATION, uids.IMPLICIT_LE), 3: (uids.CT, uids.EXPLICIT_LE),
             5: (uids.CT, uids.IMPLICIT_LE), 7: (uids.SC, uids.JPEG_BASELINE), 9: (uids.US, uids.EXPLICIT_LE)}
SOP_INSTANCE = "1.2.826.0.1.3680043.9.3811.2.1"  # of the seed datasets, so the header seeds pass check_required
CALLING = "MODALITY1"  # the seeds' calling AE title
PEER = ("192.0.2.1", 11112)  # where the requests come from
LOCAL = "192.0.2.9"  # the box's address they reach (not loopback: the service tool's own echo is no case here)
DEFAULTS = DefaultValues(patient_name="UNKNOWN", patient_id="NOID", study_date="19700101", modality="OT")  # EL-02
QUIET_LOGGERS = ("pynetdicom", "pydicom")
EXAM_TYPES = ("CHEST", "HEAD", "AXIAL")  # so that coercion's EL-12 lookup has work to do
QUERY_MAX_PDU = 1024  # the C-FIND requester's maximum PDU length: responses are fragmented too


def _loopback_port() -> int:
    """A port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Service:
    """The process-wide settings of the running service, STORAGE-SCP's listener and routes on an
    archive that keeps nothing, a small index for the query targets, a work directory, and the
    targets.

    A context manager: it applies what `daemon.run` applies (server.quiet_libraries) and what the
    harness changes (log levels, the fsyncs of `store.files`), and puts the previous values back
    on exit, so tests can use it in-process.
    """

    def __enter__(self) -> Service:
        self._saved = (pydicom_config.settings.reading_validation_mode,
                       pydicom_config.settings.writing_validation_mode,
                       [logging.getLogger(name).level for name in ("appliance", *QUIET_LOGGERS)],
                       warnings.showwarning, files.Incoming.sync, files.fsync_dir)
        self.work = Path(tempfile.mkdtemp(prefix="fuzz-protocol-"))
        server.quiet_libraries()
        # Lines for most inputs (an abort, a VR guessed, ...) would drown libFuzzer's; the
        # service's errors are kept, for the last resorts among them (`_LastResorts`).
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        appliance_log = logging.getLogger("appliance")
        appliance_log.setLevel(logging.ERROR)
        self.last_resorts = _LastResorts()
        appliance_log.addHandler(self.last_resorts)
        # pydicom warns about each odd character set; the service keeps Python's default filters
        # (so does this, with their registry), but their lines would drown libFuzzer's.
        warnings.showwarning = lambda *args, **kwargs: None
        # Durability is not under test, and the fsyncs of each file made would slow runs threefold.
        files.Incoming.sync = lambda incoming: None
        files.fsync_dir = lambda path: None
        self._storage_scp()
        # QUERY-RETRIEVE-SCP's handlers on an index of a few real rows.
        self.index = SqliteIndex(self.work / "index.sqlite")
        _fill(self.index)
        self.answered = 0  # A-ASSOCIATE-ACs encoded
        self.pendings = 0  # Pending responses the C-FIND handler sent
        self.moved = 0  # instances C-MOVE identifiers listed
        self.commitments = 0  # N-ACTIONs parsed to references
        return self

    def _storage_scp(self) -> None:
        """STORAGE-SCP as server.start_listeners builds it (less the N-ACTION route: the
        ``commitment`` target has its parser), its listener bound to an ephemeral loopback port
        and never started, and the association the seeds' request is answered with."""
        self.area = _Area(self.work / "data")
        policy = dataclasses.replace(SCP, exam_types=EXAM_TYPES, default_values=DEFAULTS)
        self.archive = ingest.Archive(policy, index=_Index(), area=self.area, reserve_bytes=0)
        gate = Gate()
        gate.open()
        self.admission = Admission("STORAGE-SCP", gate)
        self.admission.configure(SCP, ())
        services = types.SimpleNamespace(archive=self.archive, admissions={"STORAGE-SCP": self.admission})
        storage = StorageSCP(services)
        routes = {(dimse.C_ECHO_RQ, uids.VERIFICATION): verification.on_echo}
        routes.update({(dimse.C_STORE_RQ, sop_class): storage.on_store for sop_class in SCP.sop_classes})
        loopback = dataclasses.replace(CONFIG, network=dataclasses.replace(CONFIG.network, bind_address="127.0.0.1"))
        # A port of its own (port 0 would mean no plain listener, SE-07); never started.
        [self.listener] = server._listen("STORAGE-SCP", loopback, dataclasses.replace(SCP, port=_loopback_port()),
                                         uids.IMPLEMENTATION_UID_SCP, contexts.storage_scp_contexts(SCP), routes,
                                         storage.receiver, services)
        self.request = pdu.decode_request(association_rq([_context(i, *pair) for i, pair in REQUESTED.items()]))
        self.accepted, self.accept_pdu = self.listener._answer(self.request)

    def __exit__(self, *exc) -> None:
        (pydicom_config.settings.reading_validation_mode, pydicom_config.settings.writing_validation_mode, levels,
         warnings.showwarning, files.Incoming.sync, files.fsync_dir) = self._saved
        for name, level in zip(("appliance", *QUIET_LOGGERS), levels):
            logging.getLogger(name).setLevel(level)
        logging.getLogger("appliance").removeHandler(self.last_resorts)
        self.listener.stop_accepting()
        self.index.db.close()
        shutil.rmtree(self.work, ignore_errors=True)

    # --- targets -------------------------------------------------------------------------

    def rq(self, data: bytes) -> None:
        if len(data) < HEADER.size:
            return  # the peer closed before a whole header
        pdu_type, length = HEADER.unpack_from(data)
        if pdu_type not in pdu.NAMES:
            pdu.describe(data[:8])  # for the log line of the connection closed
            return
        try:
            pdu.check_header(pdu_type, length, 0, (pdu.ASSOCIATE_RQ,))
        except ProtocolError:
            if pdu_type == pdu.ASSOCIATE_RQ:  # too long
                _reject(UNPARSEABLE)
            return
        if len(data) < HEADER.size + length:
            return
        data = data[:HEADER.size + length]
        try:
            request = pdu.decode_request(data)
        except ProtocolError:
            pdu.requested_titles(data)  # for the rejection's log line
            _reject(UNPARSEABLE)
            return
        decision = self.admission.decide(request, PEER[0], LOCAL, lambda: len(self.listener._answer(request)[0]))
        if not isinstance(decision, Slot):
            _reject(decision[0])
            return
        self.admission.leave(decision)  # the association ends at once: its slot is free for the next input
        self.listener._answer(request)
        self.answered += 1

    def pdata(self, data: bytes) -> None:
        served = self.listener.served
        ours, requester = _Requester.connect(data)
        transport = Transport(ours, served.max_pdu, served.timeouts.pdu_gap, served.timeouts.send,
                              self.listener._buffers)
        session = Session(served.name, *PEER, title=self.request.calling)
        association = Association(served, session, transport, self.request.called, self.accepted,
                                  self.request.max_length, self.accept_pdu, on_end=lambda: None)
        association._run()  # its thread's body: ends at the requester's close at the latest
        requester.join()
        self.last_resorts.check()
        self.area.check()

    def header(self, data: bytes) -> None:
        implicit_vr = bool(data[:1]) and bool(data[0] & 1)
        request = ingest.StoreRequest(uids.CT, SOP_INSTANCE, uids.IMPLICIT_LE if implicit_vr else uids.EXPLICIT_LE,
                                      implicit_vr, CALLING)
        received = self.area.incoming()
        received.write(bytes(128) + data[1:])
        outcome = self.archive.store(received, request)
        assert isinstance(outcome, ingest.StoreOutcome), outcome
        self.area.check()

    def find(self, data: bytes) -> None:
        context_id = 1 if data[:1] and data[0] & 1 else 3  # Patient Root, Study Root (_QueryAssociation)
        association = _QueryAssociation()
        qr_scp.on_find(association, dimse.Message(context_id, FIND_RQ[context_id], data=data[1:]))
        self.last_resorts.check()
        self.pendings += association.pendings
        if association.finals not in ([code] for code in FIND_FINAL):
            raise AssertionError(f"C-FIND handler ended with {', '.join(f'0x{c:04X}' for c in association.finals)}")

    def move(self, data: bytes) -> None:
        try:
            identifier = qr_scp.request_identifier(dimse.Message(1, MOVE_RQ, data=data[1:]), uids.IMPLICIT_LE)
            wanted = retrieve.parse(identifier, PATIENT_ROOT if data[:1] and data[0] & 1 else STUDY_ROOT)
        except DicomStatusError as exc:
            if exc.status != status.IDENTIFIER_MISMATCH:
                raise AssertionError(f"C-MOVE identifier refused with 0x{exc.status:04X}") from exc
            return
        self.moved += len(retrieve.instances(wanted))

    def commitment(self, data: bytes) -> None:
        syntax = uids.IMPLICIT_LE if data[:1] and data[0] & 1 else uids.EXPLICIT_LE
        try:
            information = commitment_scp._action_information(dimse.Message(1, ACTION_RQ, data=data[1:]), syntax)
            transaction_uid, references = commitment_scp.parse(information)
        except DicomStatusError as exc:
            if exc.status not in (status.PROCESSING_FAILURE, status.MISSING_ATTRIBUTE,
                                  status.MISSING_ATTRIBUTE_VALUE):
                raise AssertionError(f"N-ACTION refused with 0x{exc.status:04X}") from exc
            return
        assert transaction_uid and references and all(c and i for c, i in references)
        self.commitments += 1


def _reject(rejection) -> None:
    """The A-ASSOCIATE-RJ the listener sends (`Listener._reject`): it has to encode."""
    pdu.reject_pdu(rejection.result, rejection.source, rejection.reason)


class _Requester(threading.Thread):
    """The peer of an association: writes its stream, closes its side of the connection, and
    reads all that comes back until the association closes its side."""

    def __init__(self, sock: socket.socket, rest: bytes):
        super().__init__(name="fuzz requester", daemon=True)
        self.sock = sock
        self.rest = rest

    @classmethod
    def connect(cls, data: bytes) -> tuple[socket.socket, _Requester]:
        """(the association's end of the connection, the started requester). What fits the socket
        buffer is there before the association reads, so a run does not depend on the threads'
        timing; the rest is written as the association reads."""
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        sent = theirs.send(data)
        theirs.setblocking(True)
        requester = cls(theirs, data[sent:])
        requester.start()
        return ours, requester

    def run(self) -> None:
        with self.sock:
            try:
                self.sock.sendall(self.rest)
                self.sock.shutdown(socket.SHUT_WR)
                while self.sock.recv(1 << 16):
                    pass
            except OSError:  # the association aborted: it reads and sends no more
                pass


class _QueryAssociation:
    """What `qr_scp.on_find` uses of its association: the messages it sends are encoded
    (`dimse`, as `Association.send` and `respond` do) and counted; the peer never cancels."""

    # The two C-FIND contexts QUERY-RETRIEVE-SCP accepts, both Implicit VR LE (PC-05).
    accepted = {1: (uids.PATIENT_ROOT_FIND, uids.IMPLICIT_LE), 3: (uids.STUDY_ROOT_FIND, uids.IMPLICIT_LE)}
    open = True

    def __init__(self):
        self.session = Session("QUERY-RETRIEVE-SCP", *PEER, title=CALLING)
        self.pendings = 0
        self.finals: list[int] = []

    def cancelled(self, message_id: int) -> bool:
        return False

    def send(self, context_id: int, command: bytes, data: bytes | None = None) -> bool:
        dimse.message_pdus(context_id, command, data, QUERY_MAX_PDU)
        self.pendings += 1  # the handler sends its Pendings, and `respond`s the final status
        return True

    def respond(self, message: dimse.Message, status: int, data: bytes | None = None, comment: str = "",
                extra: dict[int, bytes] | None = None) -> bool:
        self.finals.append(status)
        command = dimse.response(message.command, status, data_set=data is not None, comment=comment, extra=extra)
        dimse.message_pdus(message.context_id, command, data, QUERY_MAX_PDU)
        return True


class _Area(files.StorageArea):
    """A real storage area that keeps the files it gives out, so that a run can check that each
    was closed and removed."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.given: list[files.Incoming] = []

    def incoming(self) -> files.Incoming:
        incoming = super().incoming()
        self.given.append(incoming)
        return incoming

    def check(self) -> None:
        given, self.given = self.given, []
        left = [f"{incoming.store_path} ({'open' if incoming.fd >= 0 else 'closed'})" for incoming in given
                if incoming.fd >= 0 or incoming.store_path.exists() or incoming.spool_path.exists()]
        if left:
            raise AssertionError(f"received files left behind: {', '.join(left)}")


class _Index:
    """Stands in for the archive's index (store.db.Index): `placed` counts the instances that got
    past every check, sealed, to their index row; none is written, so `Archive.store` answers
    A700 and removes the file (a run must not fill a disk and an index)."""

    def __init__(self):
        self.placed = 0

    def write(self, durable: bool = True):
        self.placed += 1
        raise OSError(errno.EROFS, "not indexed: a fuzzing run")


class _LastResorts(logging.Handler):
    """The service's last resorts log "unexpected failure" with the traceback (StorageSCP's
    0xC211, qr_scp's 0xC311, the association's catch-all): only a bug gets there."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "unexpected failure" in record.getMessage():
            self.records.append(record)

    def check(self) -> None:
        records, self.records = self.records, []
        if records:
            formatter = logging.Formatter("%(name)s: %(message)s")
            raise AssertionError("a last resort was reached:\n" + "\n".join(formatter.format(r) for r in records))


def _request(field: int, sop_class: str) -> dimse.Command:
    """The command set of a request with a data set, as a peer sends it."""
    return dimse.Command.decode(dimse.encode_command({
        dimse.AFFECTED_SOP_CLASS: dimse.ui(sop_class), dimse.COMMAND_FIELD: dimse.us(field),
        dimse.MESSAGE_ID: dimse.us(1), dimse.PRIORITY: dimse.us(0), dimse.DATA_SET_TYPE: dimse.us(1)}))


FIND_RQ = {context_id: _request(dimse.C_FIND_RQ, abstract_syntax)
           for context_id, (abstract_syntax, _) in _QueryAssociation.accepted.items()}
MOVE_RQ = _request(dimse.C_MOVE_RQ, uids.STUDY_ROOT_MOVE)
ACTION_RQ = _request(dimse.N_ACTION_RQ, uids.STORAGE_COMMITMENT_PUSH)
TARGETS = {"rq": Service.rq, "pdata": Service.pdata, "header": Service.header, "find": Service.find,
           "move": Service.move, "commitment": Service.commitment}
# The final C-FIND statuses of the conformance statement's table (QF-04, QF-15..QF-19).
FIND_FINAL = (status.SUCCESS, status.OUT_OF_RESOURCES, status.IDENTIFIER_MISMATCH, status.UNABLE_TO_PROCESS,
              status.CANCEL)


def _fill(index: SqliteIndex) -> None:
    """Two patients (one Latin-1, one Greek), each with a study, a series and an instance."""
    with index.write():
        for n, (last, first, charset) in enumerate([("Müller", "Jörg", "ISO_IR 100"),
                                                    ("Παπαδόπουλος", "Νίκος", "ISO_IR 192")], start=1):
            patient = models.Patient.create(patient_id=f"PID{n}", original_patient_id=f"PID{n}", last_name=last,
                                            first_name=first, name_folded=coercion.fold_name(last, first),
                                            birth_date="19700101", sex="M", other_patient_ids="OTHER")
            study = models.Study.create(patient=patient, study_instance_uid=f"1.2.3.{n}", study_date="20240102",
                                        study_time="101500", accession_number=f"ACC{n}", study_id="S1",
                                        referring_physician="Dr^Who",
                                        referring_physician_folded=coercion.pn_search_key("Dr^Who"),
                                        study_description="CHEST")
            series = models.Series.create(study=study, series_instance_uid=f"1.2.3.{n}.1", modality="CT",
                                          series_number="1", operators_name="Op")
            models.Instance.create(series=series, sop_instance_uid=f"1.2.3.{n}.1.1",
                                   file_sop_instance_uid=f"1.2.3.{n}.1.1", sop_class_uid=uids.CT,
                                   instance_number="1", transfer_syntax_uid=uids.IMPLICIT_LE,
                                   specific_character_set=charset, path=f"none/{n}", size=0,
                                   received_at="2024-01-02 10:15:00", calling_ae="FUZZ")


# --- seeds: realistic inputs from pynetdicom's and pydicom's own encoders -------------------


def _context(context_id: int, abstract_syntax: str, *transfer_syntaxes: str):
    context = build_context(abstract_syntax, list(transfer_syntaxes))
    context.context_id = context_id
    return context


def association_rq(contexts: list, user_identity: bool = True) -> bytes:
    p = pdu_primitives
    request = p.A_ASSOCIATE()
    request.application_context_name = uids.APPLICATION_CONTEXT
    request.calling_ae_title = CALLING
    request.called_ae_title = SCP.ae_title
    request.presentation_context_definition_list = contexts
    items = [p.MaximumLengthNotification(), p.ImplementationClassUIDNotification(),
             p.ImplementationVersionNameNotification()]
    items[0].maximum_length_received = 16382
    items[1].implementation_class_uid = "1.2.826.0.1.3680043.9.3811.3.0.4"
    items[2].implementation_version_name = "FUZZ_SEED"
    if user_identity:
        identity, role, window = (p.UserIdentityNegotiation(), p.SCP_SCU_RoleSelectionNegotiation(),
                                  p.AsynchronousOperationsWindowNegotiation())
        identity.user_identity_type, identity.primary_field, identity.secondary_field = 2, b"tech", b"secret"
        identity.positive_response_requested = True
        role.sop_class_uid, role.scu_role, role.scp_role = uids.CT, True, True
        window.maximum_number_operations_invoked = window.maximum_number_operations_performed = 4
        extended, common = p.SOPClassExtendedNegotiation(), p.SOPClassCommonExtendedNegotiation()
        extended.sop_class_uid, extended.service_class_application_information = uids.CT, b"\x01\x00\x01"
        common.sop_class_uid, common.service_class_uid = uids.CT, "1.2.840.10008.4.2"
        common.related_general_sop_class_identification = [uids.SC]
        items += [identity, role, window, extended, common]
    request.user_information = items
    return _encoded(A_ASSOCIATE_RQ, request)


def dimse_stream(primitive, message_class, context_id: int, max_pdu: int = MAX_PDU) -> bytes:
    message = message_class()
    message.primitive_to_message(primitive)
    return b"".join(_encoded(P_DATA_TF, p) for p in message.encode_msg(context_id, max_pdu))


def _encoded(pdu_class, primitive) -> bytes:
    pdu = pdu_class()
    pdu.from_primitive(primitive)
    return pdu.encode()


def dataset(kind: str, sop_class: str = uids.CT) -> Dataset:
    """A small image with every indexed element, a sequence, and native or encapsulated pixels."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = SOP_INSTANCE
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.Modality = "20240102", "101500", "ACC1", "CT"
    ds.ReferringPhysicianName, ds.StudyDescription = "Dr^Who", "CHEST"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Müller^Jörg", "PID1", "19700101", "M"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.9.3811.1", "1.2.826.0.1.3680043.9.3811.1.1"
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "S1", "1", "1"
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = uids.CT, "1.2.826.0.1.3680043.9.3811.2.0"
    ds.ReferencedImageSequence = Sequence([item, Dataset()])
    ds["ReferencedImageSequence"].is_undefined_length = kind == "implicit"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if kind == "jpeg":
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xdb" + bytes(12) + b"\xff\xd9", b"\xff\xd8\xff\xd9"])
        ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    else:
        ds.PixelData = bytes(range(32))
        ds["PixelData"].VR = "OW"
    return ds


def file_bytes(ds: Dataset, transfer_syntax: str) -> bytes:
    """A received file as the appliance writes it (`Archive.receive`), from "DICM" on."""
    implicit = transfer_syntax == uids.IMPLICIT_LE
    request = ingest.StoreRequest(ds.SOPClassUID, ds.SOPInstanceUID, transfer_syntax, implicit, CALLING)
    return ingest.file_meta(request)[128:] + encode(ds, implicit, True)


def seeds() -> dict[str, dict[str, bytes]]:
    echo = C_ECHO()
    echo.MessageID, echo.AffectedSOPClassUID = 1, uids.VERIFICATION
    echo_stream = dimse_stream(echo, dimse_messages.C_ECHO_RQ, 1)

    def store(kind: str, context_id: int, max_pdu: int) -> bytes:
        ds = dataset(kind, REQUESTED[context_id][0])
        request = C_STORE()
        request.MessageID, request.Priority = 7, 0
        request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        request.DataSet = BytesIO(encode(ds, REQUESTED[context_id][1] == uids.IMPLICIT_LE, True))
        return dimse_stream(request, dimse_messages.C_STORE_RQ, context_id, max_pdu)

    # Undefined-length UN holding an Implicit VR sequence (PS3.5 6.2.2), between groups 8 and 10.
    un_sequence = (b"\x09\x00\x10\x00LO\x04\x00FUZZ" + b"\x09\x00\x01\x10UN\x00\x00\xff\xff\xff\xff"
                   + b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + b"\x08\x00\x60\x00\x02\x00\x00\x00CT"
                   + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    explicit = file_bytes(dataset("explicit"), uids.EXPLICIT_LE)
    split = explicit.index(b"\x10\x00\x10\x00PN")  # Patient's Name: the first group 0x0010 element
    return {
        "rq": {
            "seed-full": association_rq([_context(i, *pair) for i, pair in REQUESTED.items()]
                                        + [_context(11, uids.MR, uids.EXPLICIT_LE, uids.IMPLICIT_LE)]),
            "seed-minimal": association_rq([_context(1, uids.VERIFICATION, uids.IMPLICIT_LE)],
                                           user_identity=False),
            "seed-tls": bytes.fromhex("16030100c4010000c00303") + bytes(32),
            "seed-http": b"GET / HTTP/1.1\r\nHost: appliance\r\n\r\n",
        },
        "pdata": {
            "seed-echo": echo_stream + A_RELEASE_RQ().encode(),
            "seed-store-explicit": store("explicit", 3, 256),
            "seed-store-implicit": store("implicit", 5, 512),
            "seed-store-jpeg": echo_stream + store("jpeg", 7, MAX_PDU),
        },
        "find": {name: identifier(model, keys) for name, (model, keys) in FIND_SEEDS.items()},
        "move": {name: identifier(model, keys) for name, (model, keys) in MOVE_SEEDS.items()},
        "commitment": {"seed-implicit": b"\1" + encode(action_information(3), True, True),
                       "seed-explicit": b"\0" + encode(action_information(1), False, True)},
        "header": {
            "seed-explicit": b"\0" + explicit,
            "seed-implicit": b"\1" + file_bytes(dataset("implicit"), uids.IMPLICIT_LE),
            "seed-jpeg": b"\0" + file_bytes(dataset("jpeg"), uids.JPEG_BASELINE),
            "seed-un-sequence": b"\0" + explicit[:split] + un_sequence + explicit[split:],
        },
    }


# C-FIND identifiers: byte 0 = the model (1 Patient Root, 0 Study Root), then the keys.
_RETURN = {"PatientName": "", "PatientID": "", "StudyDate": "", "NumberOfStudyRelatedInstances": ""}
FIND_SEEDS = {
    "seed-study-name": (0, {"QueryRetrieveLevel": "STUDY", "SpecificCharacterSet": "ISO_IR 100",
                            "PatientName": "MÜLL*", **{k: v for k, v in _RETURN.items() if k != "PatientName"}}),
    "seed-study-date-range": (0, {"QueryRetrieveLevel": "STUDY", **_RETURN, "StudyDate": "20240101-20240131",
                                  "StudyTime": "1000-", "AccessionNumber": "ACC?"}),
    "seed-series-list": (0, {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "1.2.3.1",
                             "SeriesInstanceUID": "1.2.3.1.1\\1.2.3.9", "Modality": "", "SeriesNumber": "1",
                             "NumberOfSeriesRelatedInstances": "", "RetrieveAETitle": ""}),
    "seed-patient": (1, {"QueryRetrieveLevel": "PATIENT", "PatientID": "PID*", "PatientName": "",
                         "OtherPatientIDs": "", "NumberOfPatientRelatedStudies": "", "PatientBirthDate": ""}),
    "seed-image": (1, {"QueryRetrieveLevel": "IMAGE", "PatientID": "PID2", "StudyInstanceUID": "1.2.3.2",
                       "SeriesInstanceUID": "1.2.3.2.1", "SOPInstanceUID": "", "InstanceNumber": "",
                       "SpecificCharacterSet": "ISO_IR 192", "PatientName": ""}),
}


# C-MOVE identifiers, same layout; each lists the instances of _fill it names.
MOVE_SEEDS = {
    "seed-study-list": (0, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.3.1\\1.2.3.2"}),
    "seed-series": (0, {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "1.2.3.1",
                        "SeriesInstanceUID": "1.2.3.1.1", "PatientName": "X"}),
    "seed-patient": (1, {"QueryRetrieveLevel": "PATIENT", "PatientID": "PID2", "SpecificCharacterSet": "ISO_IR 192"}),
    "seed-image": (1, {"QueryRetrieveLevel": "IMAGE", "PatientID": "PID1", "StudyInstanceUID": "1.2.3.1",
                       "SeriesInstanceUID": "1.2.3.1.1", "SOPInstanceUID": "1.2.3.1.1.1\\1.2.3.9"}),
}


def action_information(references: int) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = "1.2.3.4.5"
    ds.ReferencedSOPSequence = Sequence()
    for n in range(1, references + 1):
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = uids.CT, f"1.2.3.{n}.1.1"
        ds.ReferencedSOPSequence.append(item)
    return ds


def identifier(model: int, keys: dict) -> bytes:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return bytes([model]) + encode(ds, True, True)


def write_seeds(corpus: Path = CORPUS) -> None:
    for target, files in seeds().items():
        (corpus / target).mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (corpus / target / name).write_bytes(data)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in (*TARGETS, "seeds"):
        sys.exit(__doc__)
    if argv[1] == "seeds":
        write_seeds()
        return
    target, service = TARGETS[argv[1]], Service().__enter__()
    # libFuzzer ends the process with C's exit(), which skips Python's atexit: clean up from C's.
    cleanup = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p)(lambda status, arg: service.__exit__())
    ctypes.CDLL(None).on_exit(cleanup, None)
    # libFuzzer re-runs argv[0] through the shell for -merge, -fork and -jobs: name the target there.
    command = shlex.join([sys.executable, argv[0], argv[1]])
    atheris.Setup([command, *argv[2:]], lambda data: target(service, data))
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
