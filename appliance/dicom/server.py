"""The two listening AEs: what each offers (routes), their acceptors, and what outlives a reload.

Each listening AE has its own acceptor, admission and settings, because the conformance
statement sets titles, limits, timeouts and PDU sizes per AE (CC-03, CF-14/15, CF-22/24).
"""

from __future__ import annotations

import logging
import resource
import socket
import ssl
import threading
from pathlib import Path

from appliance import __version__
from appliance.codes import uids
from appliance.commitment import Commitments, Reporter
from appliance.config.model import Config, ListeningAE, RemoteAE, calling_allow_list, pinned_subjects
from appliance.dicom import contexts, dimse, qr_scp, verification
from appliance.dicom.acceptor import Listener
from appliance.dicom.admission import Admission, Gate
from appliance.dicom.association import Served
from appliance.dicom.commitment_reports import ReportSender
from appliance.dicom.commitment_scp import CommitmentSCP
from appliance.dicom.move_scp import MoveSCP
from appliance.dicom.pdu import Identity
from appliance.dicom.storage_scp import StorageSCP
from appliance.dicom.storage_scu import StorageSCU
from appliance.store.ingest import Archive
from appliance.tls.contexts import TlsUnavailable, server_context

log = logging.getLogger("appliance.daemon")


class Services:
    """What the listeners serve, kept across the rebinds of a reload: each AE's admission (its
    admitted associations keep counting against the new limits), STORAGE-SCU (its running
    exports likewise), the commitment reports, and the archive and the commitments, which are
    set once the index is open. Until then, and while draining, the gate answers 2/3/1 (AS-02)."""

    SECTIONS = {"STORAGE-SCP": "storage_scp", "QUERY-RETRIEVE-SCP": "query_retrieve_scp"}

    def __init__(self, config: Config, store_root: Path, reporter: Reporter, report_sender: ReportSender):
        self.gate = Gate()
        self.admissions = {name: Admission(name, self.gate) for name in self.SECTIONS}
        self.exports = StorageSCU(store_root)
        self.reporter = reporter
        self.report_sender = report_sender
        self.remote_aes: dict[str, RemoteAE] = {}
        self.archive: Archive | None = None
        self.commitments: Commitments | None = None
        self.configure(config)

    def configure(self, config: Config) -> None:
        for name, section in self.SECTIONS.items():
            self.admissions[name].configure(getattr(config, section), calling_allow_list(config, section),
                                            pinned_subjects(config))
        self.exports.configure(config)
        scp = config.storage_scp
        self.report_sender.configure(config)
        self.reporter.configure(scp.report_attempts, scp.report_retry_interval,
                                not scp.always_new_association_for_reports)
        # AE-08, QM-04: only entries that may be a Move Destination are looked up for C-MOVE.
        self.remote_aes = {ae.ae_title.strip(): ae for ae in config.remote_aes if ae.move_destination}

    def associations(self) -> list:
        """The admitted associations not ended yet, on both AEs."""
        return [a for admission in self.admissions.values() for a in admission.current()]

    def active(self) -> int:
        """Associations whose thread still runs, on both AEs."""
        return sum(admission.active() for admission in self.admissions.values())

    def abort_all(self) -> int:
        """A-ABORT every association of both listening AEs at once; how many there were (FL-09,
        the end of the shutdown drain). Called from the lease watch's thread too."""
        running = self.associations()
        for association in running:
            association.abort()
        return len(running)


def stop_accepting(listeners: list) -> None:
    """Close all listeners (Listener, or the ControlServer) at once."""
    threads = [threading.Thread(target=listener.stop_accepting) for listener in listeners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def quiet_libraries() -> None:
    """pydicom's value validation runs regexes on every element it encodes and decodes; the
    appliance checks what it relies on itself (store/header.py)."""
    from pydicom import config as pydicom_config

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


def _listen(name: str, config: Config, local: ListeningAE, implementation_uid: str, supported: list,
            routes: dict, receiver, services: Services) -> list[Listener]:
    """The AE's plain listener and its TLS listener, those whose port is not 0 (SE-07): same
    title, routes, admission and limits. A TLS listener whose files are unusable stays off
    with an ERROR, and the plain one serves."""
    served = Served(name, routes, receiver, local.max_pdu_size, config.network.max_pdu_send, local.idle_timeout,
                    config.timeouts)
    identity = Identity(local.max_pdu_size, implementation_uid, uids.implementation_version_name(__version__))
    kinds: list[ssl.SSLContext | None] = [None] if local.port else []  # None: the plain listener
    if local.tls_port:
        try:
            context, verifying = server_context(config, local.verify_clients)
        except TlsUnavailable as exc:
            log.error("%s: the TLS listener on port %d is off: %s", name, local.tls_port, exc)
        else:
            if local.verify_clients and not verifying:
                log.warning("%s: TLS clients are not verified: there is no CA bundle (tls.ca_bundle)", name)
            kinds.append(context)
    listeners = []
    try:
        for context in kinds:
            listeners.append(Listener(served, local.ae_title.strip(), bind_host(config),
                                      local.tls_port if context else local.port, services.admissions[name],
                                      local.max_associations, supported, identity,
                                      config.network.socket_buffer_size, waiting_limit(), context))
    except BaseException:
        stop_accepting(listeners)
        raise
    return listeners


def waiting_limit() -> int:
    """Connections one listener may hold before their association request: a quarter of the file
    descriptors the service may open, so that silent, slow or rejected peers on both ports never
    take those that the admitted associations, their files and the index need (UL-02)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 16 if soft == resource.RLIM_INFINITY else max(soft // 4, 1)


def start_listeners(config: Config, services: Services) -> list[Listener]:
    """Bind both listening AEs; raises OSError (e.g. port in use) before anything is served."""
    storage, commitment, move = StorageSCP(services), CommitmentSCP(services), MoveSCP(services)
    scp = config.storage_scp
    storage_routes = {(dimse.C_ECHO_RQ, uids.VERIFICATION): verification.on_echo,
                      (dimse.N_ACTION_RQ, uids.STORAGE_COMMITMENT_PUSH): commitment.on_action}
    storage_routes.update({(dimse.C_STORE_RQ, sop_class): storage.on_store for sop_class in scp.sop_classes})
    qr_routes = {(dimse.C_ECHO_RQ, uids.VERIFICATION): verification.on_echo,
                 (dimse.C_FIND_RQ, uids.PATIENT_ROOT_FIND): qr_scp.on_find,
                 (dimse.C_FIND_RQ, uids.STUDY_ROOT_FIND): qr_scp.on_find,
                 (dimse.C_MOVE_RQ, uids.PATIENT_ROOT_MOVE): move.on_move,
                 (dimse.C_MOVE_RQ, uids.STUDY_ROOT_MOVE): move.on_move}
    listeners = []
    try:
        listeners += _listen("STORAGE-SCP", config, scp, uids.IMPLEMENTATION_UID_SCP,
                             contexts.storage_scp_contexts(scp), storage_routes, storage.receiver, services)
        listeners += _listen("QUERY-RETRIEVE-SCP", config, config.query_retrieve_scp,
                             uids.IMPLEMENTATION_UID_QR_SCU,
                             contexts.query_retrieve_scp_contexts(config.query_retrieve_scp), qr_routes, None,
                             services)
    except BaseException:
        stop_accepting(listeners)
        raise
    for listener in listeners:
        listener.start()
    return listeners
