"""The service's one audit trail: started, reconfigured and stopped by the daemon (AU-01..AU-03).

`record` is what the events call, from any thread: when `[audit] collector` is set it hands
the sender an entry, else it does nothing; it never blocks and never raises. The sender exists
from the first configuration that names a collector; turning the trail off leaves the spool on
disk for when it is turned on again.

`AlertForwarder` is the logging handler that sends every ALERT-level record of the service
log to the collector as well (AU-03), as a plain RFC 5424 message at severity alert. It stays
installed across `appliance.log.setup` (a reload) and forwards nothing while the trail is off.
A record logged while it forwards, in the same thread, is not forwarded again.
"""

from __future__ import annotations

import datetime
import logging
import socket
import threading
from pathlib import Path
from typing import Callable

from appliance.audit import syslog
from appliance.audit.sender import Entry, Sender, Settings
from appliance.audit.spool import DIRECTORY
from appliance.audit.transport import Collector, parse
from appliance.config import data_dir, tls_path
from appliance.config.model import Config
from appliance.log import ALERT

log = logging.getLogger("appliance.audit")

_lock = threading.Lock()
_sender: Sender | None = None
_enabled = False
_spool_directory: Path | None = None
titles: tuple[str, ...] = ()  # the box's own AE titles, for the application's AlternativeUserID
hostname = socket.gethostname()


def settings_of(config: Config) -> Settings:
    audit = config.audit
    collector = None
    if audit.collector:
        scheme, host, port = parse(audit.collector)
        collector = Collector(scheme, host, port, tls_path(config, "certificate"), tls_path(config, "key"),
                              tls_path(config, "ca_bundle"))
    return Settings(collector, audit.source_id.strip() or hostname, audit.spool_max_bytes, hostname)


def start(config: Config) -> None:
    """At the service's start: the spool in the data directory, and the sender if the trail is on
    (it sends what the spool holds from before first)."""
    global _spool_directory
    _spool_directory = data_dir(config) / DIRECTORY
    install_forwarder()
    configure(config)


def configure(config: Config) -> None:
    """At start and at each reload."""
    global _sender, _enabled, titles
    settings = settings_of(config)
    titles = tuple(dict.fromkeys(t.strip() for t in (config.storage_scp.ae_title, config.query_retrieve_scp.ae_title,
                                                      config.storage_scu.ae_title)))
    with _lock:
        if _spool_directory is None:
            return
        if _sender is None:
            if settings.collector is None:
                return
            _sender = Sender(_spool_directory, settings).start()
        else:
            _sender.configure(settings)
        _enabled = settings.collector is not None
    if settings.collector is not None:
        log.info("audit: messages go to %s as %s", settings.collector.url, settings.source_id)


def stop(timeout: float = 5.0) -> None:
    """At the service's stop: what waits is sent for at most `timeout` s, the rest spooled."""
    global _sender, _enabled
    with _lock:
        sender, _sender, _enabled = _sender, None, False
    if sender is not None:
        sender.stop(timeout)


def status() -> dict:
    """For `status`: where messages go ("" = off) and what waits in the spool."""
    sender = _sender
    collector = sender.settings.collector if sender is not None else None
    messages, size = sender.spooled() if sender is not None else (0, 0)
    return {"collector": collector.url if collector and _enabled else "", "spooled_messages": messages,
            "spooled_bytes": size}


def active() -> bool:
    """Whether events are recorded now (cheap: the C-STORE path asks it per instance)."""
    return _enabled


def record(build: Callable[[str], bytes], when: datetime.datetime | None = None, **frame) -> None:
    """Hand one message to the sender: `build(source_id)` makes its body in the sender's thread;
    `when` (default now, with the local zone) is its EventDateTime and syslog time stamp."""
    sender = _sender
    if not _enabled or sender is None:
        return
    try:
        sender.submit(Entry(when or now(), build, **frame))
    except Exception:  # never let the audit trail break what it records
        pass


def now() -> datetime.datetime:
    return datetime.datetime.now().astimezone()


class AlertForwarder(logging.Handler):
    """AU-03: ALERT records to the collector, `LEVEL logger: message` at syslog severity alert."""

    kept_across_setup = True  # appliance.log.setup leaves it installed

    def __init__(self):
        super().__init__(ALERT)
        self._busy = threading.local()

    def emit(self, entry: logging.LogRecord) -> None:
        if not _enabled or getattr(self._busy, "active", False):
            return
        self._busy.active = True
        try:
            text = f"{entry.levelname} {entry.name}: {entry.getMessage()}".encode("utf-8", "replace")
            when = datetime.datetime.fromtimestamp(entry.created).astimezone()
            record(lambda _source: text, when, facility=syslog.DAEMON, severity=syslog.ALERT,
                   msgid=syslog.ALERT_MSGID)
        except Exception:
            pass
        finally:
            self._busy.active = False


forwarder = AlertForwarder()


def install_forwarder() -> None:
    root = logging.getLogger()
    if forwarder not in root.handlers:
        root.addHandler(forwarder)
