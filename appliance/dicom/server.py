"""The two listening AEs, each its own pynetdicom ApplicationEntity.

One AE object per SCP AE because pynetdicom counts `maximum_associations`, timeouts and PDU
size per AE object, and the conformance statement sets them per AE (CC-03, CF-14/15, CF-22/24).
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from pynetdicom import AE, evt

from appliance import __version__
from appliance.config.model import Config, ListeningAE, RemoteAE, calling_allow_list
from appliance.codes import uids
from appliance.dicom import contexts, framing, sockets, verification, wakeups
from appliance.dicom.commitment_reports import Reports
from appliance.dicom.commitment_scp import CommitmentSCP
from appliance.dicom.move_scp import MoveSCP
from appliance.dicom.qr_scp import QueryRetrieveSCP
from appliance.dicom.storage_scu import StorageSCU
from appliance.dicom.admission import CONGESTION, Admission, Gate, log_rejection, reject_pdu
from appliance.dicom.associations import Tracker, peer_text
from appliance.dicom.storage_scp import StorageSCP
from appliance.commitment import Commitments
from appliance.store.ingest import Archive

log = logging.getLogger(__name__)


@dataclass
class Listener:
    name: str  # "STORAGE-SCP" or "QUERY-RETRIEVE-SCP"
    ae: AE
    server: object  # pynetdicom ThreadedAssociationServer
    tracker: Tracker  # its associations, for the status

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def stop_accepting(self) -> None:
        self.server.shutdown()  # stops the accept loop, closes the socket; associations go on

    def abort_all(self) -> None:
        for assoc in list(self.ae.active_associations):
            assoc.abort()


class Services:
    """What the listeners serve, kept across the rebinds of a reload: each AE's admission (its
    admitted associations keep counting against the new limits), STORAGE-SCU (its running
    exports likewise), the commitment reports, and the archive and the commitments, which are
    set once the index is open. Until then, and
    while draining, the gate answers 2/3/1 (AS-02)."""

    SECTIONS = {"STORAGE-SCP": "storage_scp", "QUERY-RETRIEVE-SCP": "query_retrieve_scp"}

    def __init__(self, config: Config, store_root: Path):
        self.gate = Gate()
        self.admissions = {name: Admission(name, self.gate) for name in self.SECTIONS}
        self.exports = StorageSCU(store_root)
        self.reports = Reports()
        self.remote_aes: dict[str, RemoteAE] = {}
        self.archive: Archive | None = None
        self.commitments: Commitments | None = None
        self.configure(config)

    def configure(self, config: Config) -> None:
        for name, section in self.SECTIONS.items():
            self.admissions[name].configure(getattr(config, section), calling_allow_list(config, section))
        self.exports.configure(config)
        self.reports.configure(config)
        # AE-08, QM-04: only entries that may be a Move Destination are looked up for C-MOVE.
        self.remote_aes = {ae.ae_title.strip(): ae for ae in config.remote_aes if ae.move_destination}

    def active(self) -> int:
        """Associations admitted and still running, on both AEs."""
        return sum(admission.active() for admission in self.admissions.values())


def stop_accepting(listeners: list) -> None:
    """Close all listeners (Listener, or the ControlServer) at once: each shutdown() waits up to
    socketserver's 0.5 s poll."""
    threads = [threading.Thread(target=listener.stop_accepting) for listener in listeners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def quiet_libraries() -> None:
    """Process-wide library settings for the service's hot paths.

    pynetdicom's "standard" log handlers format a summary of every PDU and DIMSE message even
    when its logger is below INFO (our own lines cover LG-07/LG-08); pydicom's value
    validation runs regexes on every command-set element pynetdicom encodes and decodes. The
    appliance checks what it relies on itself (store/header.py).
    """
    from pydicom import config as pydicom_config
    from pynetdicom import _config as pynetdicom_config

    pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE


def bind_host(config: Config) -> str:
    """NW-11: "*" means every IPv4 and IPv6 address (a dual-stack IPv6 socket when available)."""
    if config.network.bind_address != "*":
        return config.network.bind_address
    return "::" if socket.has_ipv6 and _ipv6_usable() else "0.0.0.0"


def _ipv6_usable() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::", 0))
        return True
    except OSError:
        return False


def _make_ae(config: Config, local: ListeningAE, implementation_uid: str, presentation) -> AE:
    ae = AE(ae_title=local.ae_title.strip())
    ae.implementation_class_uid = implementation_uid  # AE-11
    ae.implementation_version_name = uids.implementation_version_name(__version__)  # AE-10
    # Titles, limits and the rest of admission are decided by admission.Admission, in AS-09's
    # order; pynetdicom's own checks would answer first, in theirs.
    ae.maximum_associations = 1 << 20
    ae.require_called_aet = False
    ae.require_calling_aet = []
    ae.maximum_pdu_size = local.max_pdu_size  # CF-14 / CF-22
    ae.acse_timeout = config.timeouts.artim  # CF-04: wait for A-ASSOCIATE-RQ
    ae.network_timeout = local.idle_timeout  # CF-15 / CF-24: no traffic on an open association
    ae.dimse_timeout = local.idle_timeout
    ae.connection_timeout = config.timeouts.connect
    ae.supported_contexts = presentation
    return ae


def _start(name: str, config: Config, local: ListeningAE, implementation_uid: str, presentation,
           handlers: list, tracker: Tracker, admission: Admission, attach=None) -> Listener:
    """`attach(assoc)`, when given, is called for every accepted connection before its threads run."""
    ae = _make_ae(config, local, implementation_uid, presentation)

    def on_open(event) -> None:
        assoc = event.assoc
        sockets.tune(assoc.dul.socket.socket, config.network.socket_buffer_size)
        wakeups.attach(assoc)
        framing.attach(assoc, tracker.session(assoc), config.timeouts)
        if attach is not None:
            attach(assoc)

    # Order matters within an event: the tracker names the peer before admission logs it.
    all_handlers = [(evt.EVT_CONN_OPEN, on_open)] + tracker.handlers() + admission.handlers(tracker.session) \
        + handlers
    host = bind_host(config)
    try:
        server = ae.start_server((host, local.port), block=False, evt_handlers=all_handlers)
    except OSError as exc:
        where = f"port {local.port}" if host in ("::", "0.0.0.0") else f"{host} port {local.port}"
        raise OSError(exc.errno, f"{name} ({ae.ae_title}) cannot listen on {where}: {exc.strerror}") from exc
    sockets.tune(server.socket, config.network.socket_buffer_size)
    # socketserver listens with a backlog of 5: a burst of connections (200 modalities after a
    # network outage) would wait for SYN retransmissions, 1 s and more each. listen() again
    # only enlarges the queue.
    server.socket.listen(socket.SOMAXCONN)
    _refuse_without_worker(server, name)
    return Listener(name, ae, server, tracker)


def _refuse_without_worker(server, name: str) -> None:
    """AS-02: when no thread can be started for a new connection (its handler, then its
    association), answer 2/3/1 and close, instead of socketserver's traceback on stderr and a
    silent close. The DUL thread, which the association thread starts, is not covered."""

    def guarded(start_worker):
        def call(request, client_address) -> None:
            try:
                start_worker(request, client_address)
            except RuntimeError as exc:  # "can't start new thread"
                log_rejection(f"{name} ?@{peer_text(str(client_address[0]), client_address[1])}", "?", CONGESTION,
                              f"no worker thread can be started ({exc})")
                try:
                    request.sendall(reject_pdu(CONGESTION))
                except OSError:
                    pass
                server.shutdown_request(request)
        return call

    server.process_request = guarded(server.process_request)  # the connection's handler thread
    server.finish_request = guarded(server.finish_request)  # its association thread


def start_listeners(config: Config, services: Services) -> list[Listener]:
    """Bind both listening AEs; raises OSError (e.g. port in use) before anything is served."""
    scp_tracker = Tracker("STORAGE-SCP")
    qr_tracker = Tracker("QUERY-RETRIEVE-SCP")
    storage = StorageSCP(services, scp_tracker)
    commitment = CommitmentSCP(services, scp_tracker)
    query_retrieve = QueryRetrieveSCP(qr_tracker)
    move = MoveSCP(qr_tracker, services)
    listeners = []
    try:
        listeners.append(_start(
            "STORAGE-SCP", config, config.storage_scp, uids.IMPLEMENTATION_UID_SCP,
            contexts.storage_scp_contexts(config.storage_scp),
            storage.handlers() + commitment.handlers() + verification.handlers(scp_tracker), scp_tracker,
            services.admissions["STORAGE-SCP"], services.reports.attach))
        listeners.append(_start(
            "QUERY-RETRIEVE-SCP", config, config.query_retrieve_scp, uids.IMPLEMENTATION_UID_QR_SCU,
            contexts.query_retrieve_scp_contexts(config.query_retrieve_scp),
            query_retrieve.handlers() + verification.handlers(qr_tracker), qr_tracker,
            services.admissions["QUERY-RETRIEVE-SCP"], move.attach))
    except BaseException:
        stop_accepting(listeners)
        raise
    return listeners
