"""Composition root: config -> storage area -> listening AEs -> index -> signals and sd_notify.

The listeners are bound first and answer every request 2/3/1 (AS-02) until the index is
migrated and interrupted placements are recovered; then READY is sent. SIGHUP reloads the
configuration (an invalid file is refused and the running one kept), and so does a
`reload` on the control socket, which also gets the outcome; SIGTERM answers new requests
2/3/1 again, lets running associations finish for `timeouts.shutdown_drain` seconds, aborts
the rest, checkpoints the index and exits 0. While it serves, a thread watches the managed
network interface: a DHCP lease lost aborts every association (FL-09), and another the disk's
free space (MG-04).
"""

from __future__ import annotations

import logging
import resource
import signal
import threading
import time
from pathlib import Path

from appliance import __version__, audit, systemd
from appliance import log as service_log
from peewee import InterfaceError, OperationalError

from appliance.config import Config, data_dir, load_file, load_or_defaults, store_dir
from appliance.config.keys import inert_settings, kept_for_restart, to_dict
from appliance.control import socket_path
from appliance.control.server import ControlServer
from appliance.control.status import running_config, service_status
from appliance.control.studies import study_commands
from appliance.dicom.acceptor import Listener
from appliance.dicom.commitment_reports import ReportSender
from appliance.dicom.server import Services, quiet_libraries, start_listeners, stop_accepting
from appliance.errors import ConfigError
from appliance.network.lease_watch import LeaseWatch
from appliance.store import RESTORE_MARKER, lock
from appliance.store.db import Index, first_line, open_index
from appliance.store.files import StorageArea, StoreUnusable
from appliance.store.node import node_id
from appliance.store.watermarks import DiskWatch
from appliance.commitment import Commitments, Reporter
from appliance.store.ingest import Archive
from appliance.wake import Wake

log = logging.getLogger("appliance.daemon")

# What needs the listeners rebuilt when a reload changes it: the box's own addressing in
# [network] (DHCP, DNS, ...) is the network tool's business, not the listeners'.
_LISTENER_SECTIONS = ("storage_scp", "query_retrieve_scp", "timeouts")
_LISTENER_NETWORK_KEYS = ("bind_address", "socket_buffer_size")
DATABASE_RETRY = 5.0  # seconds between attempts to reach an index database that is down at start


def _tls_ports(config: Config) -> bool:
    return bool(config.storage_scp.tls_port or config.query_retrieve_scp.tls_port)


class Daemon:
    def __init__(self, config: Config, config_path: Path | None):
        self.config = config
        # Absolute, so that `status` and `config` on the control socket name the file wherever
        # the service tool runs (control/discovery.py finds the service by it).
        self.config_path = config_path.absolute() if config_path is not None else None
        self.listeners: list[Listener] = []
        self._wake = Wake()  # not a threading.Event: signal handlers ring it (see appliance.wake)
        self._stop = False
        self._reload = False
        # Control-socket reloads waiting for the outcome: (event, [result]) pairs.
        self._reload_waiters: list[tuple[threading.Event, list]] = []
        self._waiters_lock = threading.Lock()
        self._exit_code = 0
        self.control: ControlServer | None = None
        self.started = time.monotonic()

    # --- lifecycle ------------------------------------------------------------------------

    def run(self) -> int:
        # First, so that a SIGTERM during start-up (recovery can take a while) is a clean stop
        # once the listeners are up, and a SIGHUP then is not the default "terminate".
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_signal)
        self._wake.wake_on_signals()
        directory = data_dir(self.config)
        directory.mkdir(parents=True, exist_ok=True)
        service_log.setup(self.config.logging, directory)
        try:
            self._lock = lock.hold(directory, "the appliance service")
        except lock.InUse as exc:
            log.error("cannot start: %s", exc)
            return 1
        if (directory / RESTORE_MARKER).exists():  # MG-05: not on a half-restored archive
            log.error("cannot start: a restore into %s did not finish (%s is there); run service-tool restore "
                      "again", directory, RESTORE_MARKER)
            return 1
        raise_file_limit()
        audit.start(self.config)  # AU-01..AU-03: what the spool holds from before goes first
        try:
            area = StorageArea(directory, store_dir(self.config) if self.config.storage.store_dir else None)
        except (StoreUnusable, OSError) as exc:
            log.error("cannot start: %s", exc)
            audit.stop()
            return 1
        quiet_libraries()
        sender = ReportSender()
        self.services = Services(self.config, area.store, Reporter(sender), sender)
        try:
            self.listeners = start_listeners(self.config, self.services)
        except OSError as exc:
            log.error("cannot start: %s", exc.strerror or exc)
            audit.stop()
            return 1
        try:
            self.index = self._open_index(directory)
        except RuntimeError as exc:  # a schema newer than this release, a database it cannot use
            log.error("cannot start: %s", exc)
            stop_accepting(self.listeners)
            audit.stop()
            return 1
        if self.index is None:  # stopped while waiting for the database
            stop_accepting(self.listeners)
            audit.stop()
            return 0
        # MG-04: the disk looked at now, then every few seconds and at each C-STORE.
        self.disk_watch = DiskWatch(directory, self.config.storage).start()
        self.archive = Archive(self.config.storage_scp, self.index, area, self.config.storage.reserve_bytes,
                               self.disk_watch)
        self.index.on_changed_elsewhere.append(self.archive.forget_cached_rows)
        kept, removed = self.archive.recover()
        if kept or removed:
            log.warning("recovered after an unclean stop: %d placements completed, %d partial files removed",
                        kept, removed)
        self.archive.start()
        self.services.archive = self.archive
        self.services.commitments = Commitments(self.index, area.store, node_id(directory))
        self.services.reporter.start(self.services.commitments)
        self.services.gate.open()
        warn_inert(self.config)
        self._start_control()
        status = self._status_line(directory)
        systemd.notify("READY=1", f"STATUS={status}")
        log.info("ready: %s", status)
        audit.application_started()
        self.lease_watch = LeaseWatch(self.config.network.interface, self.services.abort_all).start()  # FL-09
        self._main_loop()
        return self._shutdown()

    def _open_index(self, directory: Path) -> Index | None:
        """The index, once it can be opened. A database server that does not answer (IX-01: it
        may start after the box) is tried again every few seconds, with one ALERT, while the
        listeners answer 2/3/1 (AS-02); None when the service is stopped meanwhile."""
        url, waiting = self.config.index.url, False
        while True:
            try:
                index = open_index(url, directory)
            except (OperationalError, InterfaceError) as exc:
                if not url:
                    raise
                from appliance.store.postgres import safe_url

                if not waiting:
                    service_log.alert(log, "index database %s unreachable: %s; waiting for it (new associations "
                                      "are answered 2/3/1)", safe_url(url), first_line(exc))
                    systemd.notify(f"STATUS=waiting for the index database {safe_url(url)}")
                    waiting = True
                self._wake.wait(DATABASE_RETRY)
                if systemd.watchdog_interval():
                    systemd.notify("WATCHDOG=1")
                if self._stop:
                    return None
                continue
            if waiting:
                log.warning("index database %s reachable: starting", index.where)
            return index

    def _start_control(self) -> None:
        """The service tool's reload, status and study commands; DICOM is served without them if
        the socket cannot be made."""
        try:
            self.control = ControlServer(socket_path(self.config), {
                "status": lambda _: service_status(self), "config": lambda _: running_config(self),
                "reload": self._reload_request,
                **study_commands(self.index, self.archive.area, self.archive.forget_cached_rows,
                                 self.disk_watch.check)})
        except OSError as exc:
            log.error("control socket unavailable, service-tool cannot reach the service: %s", exc)
            return
        self.control.start()

    def _reload_request(self, request: dict) -> dict:
        """A reload asked for on the control socket: done by the main loop, as for SIGHUP."""
        if self._stop:
            return {"ok": False, "error": "the service is stopping"}
        done, result = threading.Event(), []
        with self._waiters_lock:
            self._reload_waiters.append((done, result))
        self._reload = True
        self._wake.ring()
        if not done.wait(float(request.get("timeout", 60))):
            return {"ok": False, "error": "the service did not finish the reload in time"}
        ok, message = result[0]
        return {"ok": ok, "message" if ok else "error": message}

    def _take_reload_waiters(self) -> list[tuple[threading.Event, list]]:
        with self._waiters_lock:
            waiters, self._reload_waiters = self._reload_waiters, []
        return waiters

    @staticmethod
    def _answer(waiters: list[tuple[threading.Event, list]], outcome: tuple[bool, str]) -> None:
        for done, result in waiters:
            result.append(outcome)
            done.set()

    def _status_line(self, directory: Path) -> str:
        ports = ", ".join(f"{l.name} {l.title} on {'TLS ' if l.tls else ''}port {l.port}" for l in self.listeners)
        source = self.config_path or "built-in defaults (no --config)"
        return f"appliance {__version__}: {ports}; configuration {source}, data in {directory}"

    def _on_signal(self, signum, _frame) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stop = True
        self._wake.ring()

    def _main_loop(self) -> None:
        watchdog = systemd.watchdog_interval()
        while not self._stop:
            self._wake.wait(watchdog)
            if watchdog:
                systemd.notify("WATCHDOG=1")
            if self._reload and not self._stop:
                self._reload = False
                waiters = self._take_reload_waiters()
                self._answer(waiters, self.reload())

    def _shutdown(self) -> int:
        # From here an address going away is the box shutting down, not a lease refused.
        self.lease_watch.stop()
        self._answer(self._take_reload_waiters(), (False, "the service is stopping"))
        self.services.gate.drain()
        systemd.notify("STOPPING=1")  # once new requests are refused: what it tells is already true
        log.info("stopping: new associations refused (2/3/1); waiting up to %.0f s for %d running",
                 self.config.timeouts.shutdown_drain, self._active())
        deadline = time.monotonic() + self.config.timeouts.shutdown_drain
        while self._active() and time.monotonic() < deadline:
            time.sleep(0.05)
        # The control socket answers `status` during the drain; its shutdown waits for its
        # accept loop's poll, so it goes together with the listeners'.
        stop_accepting(self.listeners + ([self.control] if self.control else []))
        if self._active():
            log.error("aborting %d associations still running at shutdown", self.services.abort_all())
            # A C-STORE handler already running finishes its index transaction; wait for it
            # (bounded) so that none writes after the index is checkpointed and closed.
            deadline = time.monotonic() + 5
            while self._active() and time.monotonic() < deadline:
                time.sleep(0.05)
        self.services.reporter.stop()
        self.archive.stop()
        self.disk_watch.stop()
        self.index.close()
        log.info("stopped")
        audit.application_stopped()
        audit.stop()  # sends what waits for a few seconds, spools the rest (AU-02)
        return self._exit_code

    def _active(self) -> int:
        return self.services.active()

    # --- reload ---------------------------------------------------------------------------

    def reload(self) -> tuple[bool, str]:
        """(applied, what happened): the outcome also goes to the log, and to systemd as the
        STATUS= of the READY=1 that ends the reload (`systemctl status` shows it)."""
        systemd.notify("RELOADING=1")
        refusal = "the reload failed unexpectedly"  # until _apply has said otherwise
        try:
            if self.config_path is None:
                refusal = "the service runs on built-in defaults (no --config file): nothing to reload"
            else:
                refusal = self._apply(load_file(self.config_path))
        except ConfigError as exc:
            refusal = str(exc)
        finally:
            status = (f"reload refused, running the previous configuration: {refusal}" if refusal
                      else self._status_line(data_dir(self.config)))
            systemd.notify("READY=1", f"STATUS={status}")
        if self.config_path is None:
            return False, refusal
        if refusal:
            log.error("reload refused, keeping the running configuration: %s", refusal)
            return False, refusal
        return True, f"configuration reloaded from {self.config_path}"

    def _apply(self, new: Config) -> str | None:
        """Apply `new`; the reason it was refused, else None."""
        old = self.config
        new, kept = kept_for_restart(old, new)
        if kept:
            log.warning("reload: changes to %s take effect at the next restart", ", ".join(kept))
        # Before the rebind: new listeners use them at once.
        self.archive.policy = new.storage_scp
        self.services.configure(new)
        if (any(getattr(new, s) != getattr(old, s) for s in _LISTENER_SECTIONS)
                or any(getattr(new.network, k) != getattr(old.network, k) for k in _LISTENER_NETWORK_KEYS)
                or _tls_ports(new)):  # SE-08: the TLS files, maybe renewed, are read at the rebind
            refusal = self._rebind(old, new)
            if refusal:
                self.archive.policy = old.storage_scp
                self.services.configure(old)
                return refusal
        self.config = new
        audit.configure(new)
        audit.configuration_changed(audit.changed_keys(to_dict(old), to_dict(new)), self.config_path)  # AU-01
        if new.network.interface != old.network.interface:
            self.lease_watch.stop()
            self.lease_watch = LeaseWatch(new.network.interface, self.services.abort_all).start()
        if new.logging != old.logging:
            service_log.setup(new.logging, data_dir(new))
        self.disk_watch.configure(new.storage)  # MG-04: the levels apply at once, and the disk is looked at
        warn_inert(new)
        log.info("configuration reloaded from %s", self.config_path)
        return None

    def _rebind(self, old: Config, new: Config) -> str | None:
        """Close the listeners and bind them with the new settings; running associations go on.
        Why not (the old listeners bound again) when the new ones cannot listen, else None."""
        stop_accepting(self.listeners)
        try:
            self.listeners = start_listeners(new, self.services)
            return None
        except OSError as exc:
            refusal = exc.strerror or str(exc)
        try:
            self.listeners = start_listeners(old, self.services)
        except OSError as exc:  # the old ports were taken meanwhile: exit, systemd restarts us
            log.critical("cannot listen again with the running configuration: %s", exc.strerror or exc)
            self.listeners = []
            self._stop = True
            self._exit_code = 1
        return refusal


def raise_file_limit() -> None:
    """UL-02: every connection is a file descriptor, and so is every file being received; the
    soft limit (often 1024) goes up to the hard one (LimitNOFILE in the unit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def warn_inert(config: Config) -> None:
    """Say so when the installer set a key whose behaviour this release does not have yet."""
    for key, why in inert_settings(config):
        log.warning("configuration key %s is set but not enforced yet: %s", key, why)


def serve(config_path: Path | None) -> int:
    try:
        config = load_or_defaults(config_path)
    except ConfigError as exc:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
        log.error("configuration refused: %s", exc)
        return 2
    return Daemon(config, config_path).run()
