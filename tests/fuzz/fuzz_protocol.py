r"""Coverage-guided fuzzing (atheris/libFuzzer) of the bytes a DICOM peer controls.

Six targets, each a `Service` method that takes one input and raises only when the service's
contract is broken (atheris then reports a crash and saves the input):

``rq``
    The first PDU of an accepted connection, read as `framing.Framing.read_pdu` reads it:
    6 header bytes through `framing.check_header(..., expect_request=True)`, then the announced
    length through `framing.decode_pdu`. Contract: they return or raise `framing.ProtocolError`.
    And a request that decode_pdu lets through is one the service can answer (AS-06: anything
    else gets 1/2/1 from framing): the STORAGE-SCP's EVT_REQUESTED handlers (admission) and
    pynetdicom's acceptor negotiation run without an exception, and the A-ASSOCIATE-AC or -RJ
    they produce encodes. Input: the bytes the peer sends (an input shorter than the PDU it
    announces is a peer that closed the connection mid-PDU).
``pdata``
    The PDUs of an established STORAGE-SCP association: each PDU through `check_header`
    (expect_request=False) and `decode_pdu` (same contract as ``rq``), each P-DATA-TF through
    pynetdicom's own state machine (Sta6 + Evt10 -> DT-2 -> DIMSE provider -> `decode_msg`,
    C-STORE datasets written chunked to `receive.SpoolFile`), wrapped by the appliance's
    `Tracker._guard_reader`, and each complete message through pynetdicom's dispatch
    (`Association._serve_request`) to the service's handlers: C-ECHO, and C-STORE to
    `StorageSCP.on_c_store` and the daemon's `Archive.store`. An exception in the reader aborts
    the association in the service, which is accepted; one that `on_c_store` turns into its
    last-resort 0xC211 ("only a bug gets there") is not, nor is a hang (libFuzzer ``-timeout``),
    unbounded memory (``-rss_limit_mb``) or a crash of the interpreter. Input: the byte stream
    after the association was accepted; the stream ends at its end, at a protocol violation,
    or at any PDU other than P-DATA-TF.
``header``
    `Archive.store` on a received dataset file: `store.header.read_header` (contract: a Header
    or `header.Unparseable`), then the checks and index values of the header
    (`ingest.check_required`, `coercion.index_values`). Contract: a StoreOutcome, whatever the
    file holds. Input: byte 0 bit 0 set = Implicit VR (the presentation context's encoding),
    the rest is the file from its "DICM" prefix on (the 128-byte preamble, which the walker
    does not read, is added).

``find``
    A C-FIND-RQ's identifier through `QueryRetrieveSCP.on_c_find` as pynetdicom's event hands
    it over (decoded lazily by pynetdicom), against a small index of real rows: validation
    (`query.identifier`), the SQL (`query.matching`), the encoded responses
    (`query.responses`, `dicom.pdata`). Contract: the handler ends with one final status from
    the conformance statement's C-FIND table, never its last-resort 0xC311 and never an
    exception. Input: byte 0 bit 0 set = Patient Root, else Study Root; the rest is the
    identifier in Implicit VR LE (the only transfer syntax QUERY-RETRIEVE-SCP accepts).
``move``
    A C-MOVE-RQ's identifier as `dicom.move_scp` reads it (`request_identifier`), validated by
    `query.retrieve.parse` and listed by `query.retrieve.instances` against the same index.
    Contract: a list of instances, or DicomStatusError A900 (QM-05, QM-06); nothing else.
    Input: as for ``find``.
``commitment``
    A Storage Commitment N-ACTION-RQ's Action Information as `dicom.commitment_scp.parse` reads
    it (decoded lazily by pydicom, as pynetdicom hands it over). Contract: (Transaction UID,
    references), or DicomStatusError 0110, 0120 or 0121 (SC-03..SC-05); nothing else. Input:
    byte 0 bit 0 set = Implicit VR, else Explicit VR (SC-25); the rest is the data set.

In ``pdata`` and ``header`` the archive's storage area places nothing (`_Area`): a run fills
no disk and no index.

The corpus, tests/fuzz/corpus/<target>/: ``seed-*`` written by ``seeds`` below from
pynetdicom's and pydicom's encoders, ``regression-*`` small inputs of the bugs found, the rest
what libFuzzer kept (named by SHA-1). Usage (libFuzzer flags follow the target; libFuzzer adds
new inputs to the first corpus directory, so fuzz into a scratch directory and merge back)::

    mkdir /tmp/rq && .venv/bin/python tests/fuzz/fuzz_protocol.py rq -max_total_time=600 -timeout=10 \
        -rss_limit_mb=1024 /tmp/rq tests/fuzz/corpus/rq          # findings: ./crash-*, ./timeout-*, ./oom-*
    .venv/bin/python tests/fuzz/fuzz_protocol.py rq -merge=1 tests/fuzz/corpus/rq /tmp/rq
    .venv/bin/python tests/fuzz/fuzz_protocol.py pdata -max_len=16384 ...  # longer PDU streams
    .venv/bin/python tests/fuzz/fuzz_protocol.py seeds      # rewrite the seed-* files

A run works in a fuzz-protocol-* directory under $TMPDIR (the spool), removed at exit; one
that ends in a crash leaves it behind. tests/test_fuzz.py replays the corpus through the same
methods and runs each target briefly.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import logging
import shlex
import shutil
import sys
import tempfile
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
    from pydicom.filewriter import write_file_meta_info
    from pydicom.sequence import Sequence
    from pydicom.uid import UID
    from pynetdicom import _config as pynetdicom_config
    from pynetdicom import dimse_messages, evt, pdu_primitives
    from pynetdicom.association import Association
    from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_MOVE, C_STORE
    from pynetdicom.events import Event
    from pynetdicom.dsutils import create_file_meta, decode, encode
    from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ, A_RELEASE_RQ, P_DATA_TF
    from pynetdicom.presentation import PresentationContextTuple, build_context, negotiate_as_acceptor
    from pynetdicom.transport import AddressInformation

    from appliance.config.model import Config, DefaultValues
    from appliance.codes import status, uids
    from appliance.dicom import contexts, framing, receive, server, verification
    from appliance.dicom.admission import Admission, Gate
    from appliance.dicom.associations import Tracker
    from appliance.dicom.commitment_scp import parse as parse_action_information
    from appliance.dicom.move_scp import request_identifier
    from appliance.dicom.qr_scp import QueryRetrieveSCP
    from appliance.dicom.storage_scp import StorageSCP
    from appliance.errors import DicomStatusError
    from appliance.query import retrieve
    from appliance.query.keys import PATIENT_ROOT, STUDY_ROOT
    from appliance.store import coercion, ingest, models
    from appliance.store.db import Index

CORPUS = Path(__file__).resolve().parent / "corpus"
CONFIG = Config()
SCP = CONFIG.storage_scp
MAX_PDU = SCP.max_pdu_size  # what the STORAGE-SCP advertises, and framing enforces

# The presentation contexts the seeds (and so most of the corpus) propose, by context ID.
REQUESTED = {1: (uids.VERIFICATION, uids.IMPLICIT_LE), 3: (uids.CT, uids.EXPLICIT_LE),
             5: (uids.CT, uids.IMPLICIT_LE), 7: (uids.SC, uids.JPEG_BASELINE), 9: (uids.US, uids.EXPLICIT_LE)}
SOP_INSTANCE = "1.2.826.0.1.3680043.9.3811.2.1"  # of the seed datasets, so the header seeds pass check_required
DEFAULTS = DefaultValues(patient_name="UNKNOWN", patient_id="NOID", study_date="19700101", modality="OT")  # EL-02
QUIET_LOGGERS = ("appliance", "pynetdicom", "pydicom")
EXAM_TYPES = ("CHEST", "HEAD", "AXIAL")  # so that coercion's EL-12 lookup has work to do


class Service:
    """The process-wide settings of the running service, its STORAGE-SCP AE and event handlers,
    a spool directory, and the targets.

    A context manager: it applies what `daemon.run` applies (receive.install,
    server.quiet_libraries) and puts the previous values back on exit, so tests can use it
    in-process.
    """

    def __enter__(self) -> Service:
        self._saved = (tempfile.tempdir, dimse_messages.NamedTemporaryFile,
                       pynetdicom_config.STORE_RECV_CHUNKED_DATASET, pynetdicom_config.LOG_HANDLER_LEVEL,
                       pydicom_config.settings.reading_validation_mode,
                       pydicom_config.settings.writing_validation_mode,
                       [logging.getLogger(name).level for name in QUIET_LOGGERS], warnings.showwarning)
        self.work = Path(tempfile.mkdtemp(prefix="fuzz-protocol-"))
        self.spool = self.work / "spool"
        self.spool.mkdir()
        self.received = self.work / "received.dcm"
        receive.install(self.spool)
        server.quiet_libraries()
        for name in QUIET_LOGGERS:  # lines for most inputs: an abort, a VR guessed, ...
            logging.getLogger(name).setLevel(logging.CRITICAL)
        # pydicom warns about each odd character set; the service keeps Python's default filters
        # (so does this, with their registry), but their lines would drown libFuzzer's.
        warnings.showwarning = lambda *args, **kwargs: None
        self.ae = server._make_ae(CONFIG, SCP, uids.IMPLEMENTATION_UID_SCP, contexts.storage_scp_contexts(SCP))
        tracker, gate = Tracker("STORAGE-SCP"), Gate()
        gate.open()
        # The daemon's Archive, on a storage area that places nothing (so no index is needed).
        self.area = _Area()
        policy = dataclasses.replace(SCP, exam_types=EXAM_TYPES, default_values=DEFAULTS)
        self.archive = ingest.Archive(policy, index=None, area=self.area, reserve_bytes=0)
        services = types.SimpleNamespace(archive=types.SimpleNamespace(store=self._store))
        # The STORAGE-SCP's event handlers, in server._start's order (less its EVT_CONN_OPEN
        # `on_open`, which attaches framing and wakeups to the socket).
        admission = Admission("STORAGE-SCP", gate)
        admission.configure(SCP, ())
        self.handlers = (tracker.handlers() + admission.handlers(tracker.session)
                         + StorageSCP(services, tracker).handlers() + verification.handlers(tracker))
        requested = [_context(cx_id, *pair) for cx_id, pair in REQUESTED.items()]
        negotiated, _ = negotiate_as_acceptor(requested, self.ae.supported_contexts, {})
        self.accepted = {cx.context_id: cx for cx in negotiated if cx.result == 0x00}
        self.violation: BaseException | None = None
        # QUERY-RETRIEVE-SCP's C-FIND handler on an index of a few real rows.
        self.index = Index(self.work / "index.sqlite")
        _fill(self.index)
        self.qr_tracker = Tracker("QUERY-RETRIEVE-SCP")
        self.query_retrieve = QueryRetrieveSCP(self.qr_tracker)
        self.pendings = 0  # Pending responses the handler wrote
        self.moved = 0  # instances C-MOVE identifiers listed
        self.commitments = 0  # N-ACTIONs parsed to references
        return self

    def __exit__(self, *exc) -> None:
        (tempfile.tempdir, dimse_messages.NamedTemporaryFile, pynetdicom_config.STORE_RECV_CHUNKED_DATASET,
         pynetdicom_config.LOG_HANDLER_LEVEL, pydicom_config.settings.reading_validation_mode,
         pydicom_config.settings.writing_validation_mode, levels, warnings.showwarning) = self._saved
        for name, level in zip(QUIET_LOGGERS, levels):
            logging.getLogger(name).setLevel(level)
        self.index.db.close()
        shutil.rmtree(self.work, ignore_errors=True)

    # --- targets -------------------------------------------------------------------------

    def rq(self, data: bytes) -> None:
        if (read := _read_pdu(data, expect_request=True)) is None:
            return
        assoc = self._association("Sta3")  # AE-6: the A-ASSOCIATE indication went to the user
        try:
            # Association.run_reactor (acceptor) from here, then the DUL's AE-7 or AE-8.
            # pynetdicom logs an exception in an EVT_REQUESTED handler and carries on, with
            # the request neither admitted nor refused: here it is a contract violation.
            assoc.requestor.primitive = read[0].to_primitive()
            self._trigger(evt.EVT_REQUESTED, assoc)  # admission
            if not assoc.is_aborted and not assoc.is_rejected:
                assoc.acse.negotiate_association()
            answer = assoc.dul.to_provider_queue.get(False)
            (A_ASSOCIATE_AC if answer.result == 0x00 else A_ASSOCIATE_RJ)(answer).encode()
        finally:
            self._trigger(evt.EVT_CONN_CLOSE, assoc)

    def pdata(self, data: bytes) -> None:
        assoc = self._association("Sta6")
        machine = assoc.dul.state_machine
        try:
            while not assoc._sent_abort and (read := _read_pdu(data, expect_request=False)) is not None:
                pdu, event, data = read
                if event != "Evt10":
                    break  # release, abort, ...: the association ends, or goes on outside this target
                assoc.dul._recv_pdu.put(pdu)  # as Framing.read_pdu, then the DUL thread's loop
                try:
                    machine.do_action(event)
                except Exception:  # noqa: BLE001 - _guard_reader logged it; the service aborts
                    break
                self._serve(assoc)
        finally:
            self._trigger(evt.EVT_CONN_CLOSE, assoc)  # the storage SCP's discard_in_flight, ...
            # pynetdicom opens a new spool file for every last command fragment of a C-STORE-RQ
            # and forgets the previous one: not this target's contract, but the disk's.
            for orphan in self.spool.iterdir():
                orphan.unlink()

    def header(self, data: bytes) -> None:
        implicit_vr = bool(data[:1]) and bool(data[0] & 1)
        self.received.write_bytes(b"\0" * 128 + data[1:])
        self.archive.store(self.received, ingest.StoreRequest(uids.CT, SOP_INSTANCE, "", implicit_vr, "FUZZ"))

    def find(self, data: bytes) -> None:
        model = uids.PATIENT_ROOT_FIND if data[:1] and data[0] & 1 else uids.STUDY_ROOT_FIND
        request = C_FIND()
        request.MessageID, request.AffectedSOPClassUID, request.Priority = 1, model, 0
        request.Identifier = BytesIO(data[1:])
        assoc = self._association("Sta6")
        assoc.requestor.maximum_length = 1024  # responses fragmented too
        assoc.dul.socket = types.SimpleNamespace(send=self._count_pending)  # framing's sender, in the service
        try:
            context = PresentationContextTuple(1, model, UID(uids.IMPLICIT_LE))
            event = Event(assoc, evt.EVT_C_FIND, {"request": request, "context": context,
                                                  "_is_cancelled": lambda message_id: False})
            answers = list(self.query_retrieve.on_c_find(event))
        finally:
            self._trigger(evt.EVT_CONN_CLOSE, assoc)
            for bound, handler in self.qr_tracker.handlers():  # its session ends, as in the service
                if bound is evt.EVT_CONN_CLOSE:
                    handler(types.SimpleNamespace(assoc=assoc))
        final = [code for code, _ in answers]
        if final not in ([code] for code in FIND_FINAL):
            raise AssertionError(f"C-FIND handler ended with {', '.join(f'0x{c:04X}' for c in final)}")

    def move(self, data: bytes) -> None:
        request = C_MOVE()
        request.Identifier = BytesIO(data[1:])
        try:
            wanted = retrieve.parse(request_identifier(request), PATIENT_ROOT if data[:1] and data[0] & 1
                                    else STUDY_ROOT)
        except DicomStatusError as exc:
            if exc.status != status.IDENTIFIER_MISMATCH:
                raise AssertionError(f"C-MOVE identifier refused with 0x{exc.status:04X}") from exc
            return
        self.moved += len(retrieve.instances(wanted))

    def commitment(self, data: bytes) -> None:
        implicit = bool(data[:1]) and bool(data[0] & 1)
        try:
            information = decode(BytesIO(data[1:]), implicit, True)
        except Exception:  # the adapter answers 0110 to what cannot be decoded at all
            return
        try:
            transaction_uid, references = parse_action_information(information)
        except DicomStatusError as exc:
            if exc.status not in (status.PROCESSING_FAILURE, status.MISSING_ATTRIBUTE,
                                  status.MISSING_ATTRIBUTE_VALUE):
                raise AssertionError(f"N-ACTION refused with 0x{exc.status:04X}") from exc
            return
        assert transaction_uid and references and all(c and i for c, i in references)
        self.commitments += 1

    def _count_pending(self, pdus: bytes) -> None:
        self.pendings += 1

    # --- the service around them ------------------------------------------------------------

    def _association(self, state: str) -> Association:
        """An association as pynetdicom's AssociationServer builds it for an accepted connection,
        with the service's handlers bound, in DUL state `state`: Sta3 (request received) or
        Sta6 (established, with the seeds' presentation contexts accepted)."""
        assoc = Association(self.ae, "acceptor")
        assoc.acceptor.maximum_length = MAX_PDU
        assoc.acceptor.ae_title = SCP.ae_title
        assoc.acceptor.supported_contexts = self.ae.supported_contexts
        assoc.requestor.address_info = AddressInformation("192.0.2.1", 11112)
        for event_type, handler in self.handlers:
            assoc.bind(event_type, handler)
        assoc.dul.state_machine.current_state = state
        if state == "Sta6":
            assoc._accepted_cx = self.accepted  # what negotiation would have agreed (not mutated)
            assoc.is_established = True
        # No threads run here. pynetdicom serves N-EVENT-REPORT-RQs on a thread of its own: not
        # started. Its blocking abort waits for the threads and sleeps 0.1 s: not waited.
        assoc._serve_request = lambda request, context_id: None
        assoc.abort = lambda block=True: assoc._abort_blocking(block=False)
        self._trigger(evt.EVT_CONN_OPEN, assoc)  # Tracker._guard_reader wraps the state machine
        return assoc

    def _trigger(self, event_type, assoc: Association) -> None:
        """What evt.trigger does with the service's handlers, exceptions escaping."""
        for bound, handler in self.handlers:
            if bound is event_type:
                handler(types.SimpleNamespace(assoc=assoc))

    def _serve(self, assoc: Association) -> None:
        """The association thread (Association._run_reactor) for the messages complete so far:
        pynetdicom's dispatch to the service's handlers; what it sends is discarded."""
        while not assoc._sent_abort:
            context_id, request = assoc.dimse.get_msg(block=False)
            if request is None:
                break
            Association._serve_request(assoc, request, context_id)
            if self.violation is not None:  # on_c_store answered 0xC211 (only a bug gets there)
                violation, self.violation = self.violation, None
                raise violation
        while not assoc.dul.to_provider_queue.empty():
            assoc.dul.to_provider_queue.get()

    def _store(self, received: Path, request: ingest.StoreRequest, receive_error=None) -> ingest.StoreOutcome:
        """Archive.store as StorageSCP.on_c_store calls it, keeping what its catch-all hides."""
        try:
            return self.archive.store(received, request, receive_error)
        except BaseException as exc:
            self.violation = exc
            raise


class _Area:
    """Stands in for files.StorageArea: room for everything, and no instance placed (a run
    must not fill a disk and an index); `placed` counts the instances that got that far."""

    def __init__(self):
        self.placed = 0

    def free_bytes(self) -> int:
        return 1 << 50

    def place(self, received: Path):
        self.placed += 1
        raise OSError(errno.EROFS, "not placed: a fuzzing run")


def _read_pdu(data: bytes, expect_request: bool):
    """(pdu, event, rest of data) as Framing.read_pdu reads them, or None where it would stop
    reading (connection closed mid-PDU, or a ProtocolError). Any other exception escapes."""
    if len(data) < 6:
        return None
    try:
        _, length = framing.check_header(data[:6], MAX_PDU, expect_request)
        if len(data) < 6 + length:
            return None
        pdu, event = framing.decode_pdu(data[:6 + length])
    except framing.ProtocolError:
        return None
    return pdu, event, data[6 + length:]


TARGETS = {"rq": Service.rq, "pdata": Service.pdata, "header": Service.header, "find": Service.find,
           "move": Service.move, "commitment": Service.commitment}
# The final C-FIND statuses of the conformance statement's table (QF-04, QF-15..QF-19).
FIND_FINAL = (status.SUCCESS, status.OUT_OF_RESOURCES, status.IDENTIFIER_MISMATCH, status.UNABLE_TO_PROCESS,
              status.CANCEL)


def _fill(index: Index) -> None:
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
    request.calling_ae_title = "MODALITY1"
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
    """A received file as pynetdicom writes it (dimse_messages.decode_msg), from "DICM" on."""
    implicit = transfer_syntax == uids.IMPLICIT_LE
    out = BytesIO()
    out.write(b"DICM")
    meta = create_file_meta(sop_class_uid=ds.SOPClassUID, sop_instance_uid=ds.SOPInstanceUID,
                            transfer_syntax=transfer_syntax)
    write_file_meta_info(out, meta)
    return out.getvalue() + encode(ds, implicit, True)


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
