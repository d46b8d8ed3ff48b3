"""The running service's status and configuration, as the control socket answers them (TL-07, LG-09)."""

from __future__ import annotations

import os
import platform
import time
from importlib.metadata import version

from appliance import __version__, audit
from appliance import log as service_log
from appliance.config import data_dir
from appliance.config.keys import to_dict
from appliance.store.summary import archive_and_disk
from appliance.tls.certificates import status_report as tls_status


def _libraries(index) -> str:
    """The libraries the service runs on: SQLite's for the SQLite index, psycopg's for PostgreSQL's
    (whose server's version is in the `index` section)."""
    names = ("pynetdicom", "pydicom", "peewee", *(("psycopg",) if index.backend == "postgresql" else ()))
    versions = ", ".join(f"{name} {version(name)}" for name in names)
    if index.backend == "sqlite":
        import sqlite3

        versions += f", SQLite {sqlite3.sqlite_version}"
    return f"Python {platform.python_version()}, {versions}"


def running_config(daemon) -> dict:
    """The configuration the service runs and where it came from (`config_path` None: the
    built-in defaults). Cheap, unlike `status`: the service tool asks every control socket it
    finds for it (control/discovery.py), and falls back on it when the file does not load."""
    config = daemon.config  # once: a reload may replace it meanwhile
    return {
        "ok": True,
        "pid": os.getpid(),
        "config_path": str(daemon.config_path) if daemon.config_path else None,
        "base_dir": config.base_dir,  # what its relative paths (data_dir, [tls]) resolve against
        "data_dir": str(data_dir(config)),
        "config": to_dict(config),
    }


def service_status(daemon) -> dict:
    config = daemon.config
    directory = data_dir(config)
    now = time.monotonic()
    return {
        **running_config(daemon),
        "version": __version__,
        "libraries": _libraries(daemon.index),
        "uptime_s": round(now - daemon.started, 1),
        "state": daemon.services.gate.state,  # "open", or "draining" while stopping
        # SE-07: whether the listener is a TLS one (the AE's tls_port).
        "listeners": [{"ae": l.name, "ae_title": l.title, "port": l.port, "tls": l.tls,
                       "waiting": l.waiting()} for l in daemon.listeners],
        "storage_scu": config.storage_scu.ae_title.strip(),
        "associations": [
            {"ae": s.ae_name, "number": s.number, "calling": s.title, "peer": s.address, "stage": "established",
             "seconds": round(now - s.started, 1), "instances": s.instances, "queries": s.queries,
             "moves": s.moves, "failures": s.failures}
            for s in (a.session for a in daemon.services.associations())],
        # IX-01: the index; MG-04: the archive's counts, the watermarks and the ingest rate
        **archive_and_disk(directory, config.storage, config.index.url, daemon.index),
        "tls": tls_status(config),  # SE-08: the certificate's expiry, missing files, ...
        "audit": audit.status(),  # AU-02: the collector and what waits for it in the spool
        "problems": {"counts": dict(service_log.recent_problems.counts),
                     "recent": service_log.recent_problems.recent()},
    }
