"""Composition root: config -> index and storage area -> listening AEs -> signals and sd_notify.

READY is sent only when the index is migrated, interrupted placements are recovered and both
listeners are bound. SIGHUP reloads the configuration (an invalid file is refused and the
running one kept); SIGTERM stops accepting, lets running associations finish for
`timeouts.shutdown_drain` seconds, aborts the rest, checkpoints the index and exits 0.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import tempfile
import threading
import time
from pathlib import Path

from pynetdicom import _config as pynetdicom_config

from appliance import __version__, systemd
from appliance import log as service_log
from appliance.config import Config, data_dir, load_dict, load_file
from appliance.dicom.server import Listener, start_listeners
from appliance.errors import ConfigError
from appliance.store.db import Index
from appliance.store.files import StorageArea
from appliance.store.ingest import Archive

log = logging.getLogger("appliance.daemon")

# Sections whose change needs the listeners rebuilt on reload.
_LISTENER_SECTIONS = ("storage_scp", "query_retrieve_scp", "network", "timeouts")


class Daemon:
    def __init__(self, config: Config, config_path: Path | None):
        self.config = config
        self.config_path = config_path
        self.listeners: list[Listener] = []
        self._wake = threading.Event()
        self._stop = False
        self._reload = False

    # --- lifecycle ------------------------------------------------------------------------

    def run(self) -> int:
        directory = data_dir(self.config)
        directory.mkdir(parents=True, exist_ok=True)
        service_log.setup(self.config.logging, directory)
        area = StorageArea(directory)
        self.index = Index(directory / "index.sqlite")
        self.archive = Archive(self.config.storage_scp, self.index, area, self.config.storage.reserve_bytes)
        kept, removed = self.archive.recover()
        if kept or removed:
            log.warning("recovered after an unclean stop: %d placements completed, %d partial files removed",
                        kept, removed)
        # pynetdicom spools each incoming C-STORE dataset to a temporary file instead of memory
        # (bounded RSS for large instances); keeping that file on the store's filesystem lets
        # the archive rename it into place instead of copying it.
        pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True
        tempfile.tempdir = str(area.spool)
        try:
            self.listeners = start_listeners(self.config, self.archive)
        except OSError as exc:
            log.error("cannot listen: %s", exc)
            self.index.close()
            return 1
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_signal)
        status = self._status_line(directory)
        systemd.notify("READY=1", f"STATUS={status}")
        log.info("ready: %s", status)
        self._main_loop()
        return self._shutdown()

    def _status_line(self, directory: Path) -> str:
        ports = ", ".join(f"{l.name} {l.ae.ae_title} on port {l.port}" for l in self.listeners)
        return f"appliance {__version__}: {ports}; data in {directory}"

    def _on_signal(self, signum, _frame) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stop = True
        self._wake.set()

    def _main_loop(self) -> None:
        watchdog = systemd.watchdog_interval()
        while not self._stop:
            self._wake.wait(timeout=watchdog)
            self._wake.clear()
            if watchdog:
                systemd.notify("WATCHDOG=1")
            if self._reload and not self._stop:
                self._reload = False
                self.reload()

    def _shutdown(self) -> int:
        systemd.notify("STOPPING=1")
        log.info("stopping: no new associations; waiting up to %.0f s for %d running",
                 self.config.timeouts.shutdown_drain, self._active())
        for listener in self.listeners:
            listener.stop_accepting()
        deadline = time.monotonic() + self.config.timeouts.shutdown_drain
        while self._active() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._active():
            log.error("aborting %d associations still running at shutdown", self._active())
            for listener in self.listeners:
                listener.abort_all()
        self.index.close()
        log.info("stopped")
        return 0

    def _active(self) -> int:
        return sum(len(l.ae.active_associations) for l in self.listeners)

    # --- reload ---------------------------------------------------------------------------

    def reload(self) -> None:
        systemd.notify("RELOADING=1")
        try:
            self._apply(load_file(self.config_path) if self.config_path else self.config)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
        finally:
            systemd.notify("READY=1")

    def _apply(self, new: Config) -> None:
        old = self.config
        if new.storage != old.storage:
            log.warning("reload: [storage] changes take effect at the next restart")
            new = dataclasses.replace(new, storage=old.storage)
        self.config = new
        self.archive.policy = new.storage_scp
        if new.logging != old.logging:
            service_log.setup(new.logging, data_dir(new))
        if any(getattr(new, s) != getattr(old, s) for s in _LISTENER_SECTIONS):
            self._rebind(old, new)
        log.info("configuration reloaded from %s", self.config_path)

    def _rebind(self, old: Config, new: Config) -> None:
        """Close the listeners and bind them with the new settings; running associations go on."""
        for listener in self.listeners:
            listener.stop_accepting()
        try:
            self.listeners = start_listeners(new, self.archive)
        except OSError as exc:
            log.error("reload: cannot listen with the new configuration (%s); keeping the old one", exc)
            self.config = old
            self.archive.policy = old.storage_scp
            self.listeners = start_listeners(old, self.archive)


def load_or_default(config_path: Path | None) -> Config:
    if config_path is None:
        return load_dict({}, base_dir=str(Path.cwd()))
    return load_file(config_path)


def serve(config_path: Path | None) -> int:
    try:
        config = load_or_default(config_path)
    except ConfigError as exc:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
        log.error("configuration refused: %s", exc)
        return 2
    return Daemon(config, config_path).run()
