"""`service-tool status`: is the service up, what it serves, what it holds, what went wrong (TL-07, LG-09).

With the service up, it answers on the control socket; with it down, the tool reads the index
and the log file itself, so the field engineer still sees the archive and the last problems,
and it names the appliance services it finds running elsewhere on the machine (a service
started without --config in another directory, another --config). It says which configuration
it used: the file, the built-in defaults, or the running service's when the file does not load
(service_tool/configuration.py), with a WARNING line for each of the file's problems.
Exit codes follow the LSB status convention: 0 running, 3 not running (1: invalid config).
"""

from __future__ import annotations

import json

from appliance.config import data_dir
from appliance.control import socket_path
from appliance.control.client import NotRunning, ask
from appliance.control.discovery import running_services
from appliance.tls.certificates import status_report as tls_status
from appliance.units import size
from service_tool.config_cmd import EXIT_INVALID
from service_tool.configuration import InUse, in_use, named
from service_tool.logs_cmd import selected

EXIT_NOT_RUNNING = 3
_RECENT = 10


def register(groups) -> None:
    command = groups.add_parser(
        "status", help="service health, listeners, associations, archive, disk, recent problems",
        description="Show whether the service runs, its listeners and active associations, the archive's "
                    "counts and disk use, pending commitment reports, and recent errors and alerts. "
                    "Exit 0 when the service runs, 3 when it does not, 1 for an invalid configuration.")
    command.add_argument("--json", action="store_true", help="print JSON")
    command.set_defaults(run=run)


def run(args) -> int:
    used = in_use(args.config)
    if used is None:
        return EXIT_INVALID
    try:
        report = ask(socket_path(used.config), "status", timeout=15)
        report["running"] = True
    except NotRunning as exc:
        report = _offline(used, str(exc))
    except (PermissionError, OSError) as exc:
        report = _offline(used, f"cannot reach the control socket: {exc}")
    report["configuration"] = {"used": used.source, "file": named(used.file) if used.file else None,
                               "problems": [str(p) for p in used.problems]}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(_text(report)))
    return 0 if report["running"] else EXIT_NOT_RUNNING


def _offline(used: InUse, why: str) -> dict:
    from appliance.store.summary import archive_and_disk  # here: peewee takes a while to import

    config = used.config
    directory = data_dir(config)
    recent = [{"time": r.time, "level": r.level, "logger": r.logger, "message": r.message}
              for r in selected(config, "ERROR")[-_RECENT:]]
    elsewhere = [{"pid": s.pid, "config_path": str(s.config_path) if s.config_path else None,
                  "base_dir": str(s.base_dir), "data_dir": str(s.data_dir)} for s in running_services()]
    return {"running": False, "why": why, "data_dir": str(directory), "running_elsewhere": elsewhere,
            **archive_and_disk(directory, config.storage, config.index.url), "tls": tls_status(config),
            "problems": {"recent": recent}}


def _configuration(report: dict) -> list[str]:
    """Issue 22: which configuration the service and the tool use, and what is wrong with the file."""
    used = report["configuration"]
    if report["running"]:
        lines = [f"configuration: {report['config_path'] or 'built-in defaults (no --config)'}"]
    else:
        lines = [f"configuration: {used['used']}"]
    lines += [f"WARNING: {used['file']} does not load: {p}" for p in used["problems"]]
    if used["problems"]:
        lines.append("WARNING: the service runs on what it read before; it would not start with the file as it is")
    return lines


def _elsewhere(report: dict) -> list[str]:
    """The services found running with another configuration or in another directory, and how
    to reach each."""
    lines = []
    for s in report["running_elsewhere"]:
        how = f"service-tool --config {s['config_path']}" if s["config_path"] else \
            f"built-in defaults: run service-tool in {s['base_dir']}"
        lines.append(f"  pid {s['pid']}, data in {s['data_dir']} ({how})")
    return ["appliance services running elsewhere on this machine:", *lines] if lines else []


def _index(report: dict) -> list[str]:
    """IX-01: the index's backend, its version, where it is, whether its server answers (an
    ERROR line when it does not), and this box's name among the boxes sharing it (IX-02)."""
    index = report.get("index")
    if not index:  # a service from before IX-01
        return []
    backend = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}.get(index["backend"], index["backend"])
    version = f" {index['version']}" if index.get("version") else ""
    state = "" if index["backend"] == "sqlite" else ", connected" if index["connected"] else ", NOT CONNECTED"
    node = index.get("node") or "none yet (the service names the box at its first start)"
    lines = [f"index: {backend}{version}, {index['where']}{state}; node {node}"]
    if index["backend"] != "sqlite" and not index["connected"]:
        lines.append(f"ERROR: the index database {index['where']} does not answer: {index.get('error', '?')}")
    return lines


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    days, h = divmod(hours, 24)
    return f"{days} d {h} h" if days else f"{h} h {m} min" if hours else f"{m} min {s} s"


def _waiting(report: dict) -> str:
    """Connections the acceptors hold before their A-ASSOCIATE-RQ is admitted (UL-02)."""
    waiting = sum(listener["waiting"] for listener in report["listeners"])
    return f", {waiting} connections waiting for an association request" if waiting else ""


def _listener(l: dict) -> str:
    return f"{l['ae']} {l['ae_title']} on {'TLS port' if l.get('tls') else 'port'} {l['port']}"  # SE-07


def _tls(report: dict) -> list[str]:
    """SE-08: the certificate's validity, and what is wrong with the TLS files as WARNING and
    ERROR lines (an expiring certificate, an expired one that keeps the TLS listeners off)."""
    tls = report.get("tls") or {}  # a service from before SE-08 does not report it
    lines = []
    if tls.get("certificate"):
        c = tls["certificate"]
        left = f"{c['days_left']} days left" if c["days_left"] >= 0 else "EXPIRED"
        lines.append(f"TLS certificate: {c['subject']}, valid until {c['not_after'][:10]} ({left})")
    elif tls.get("in_use"):
        lines.append("TLS certificate: none usable")
    lines += [f"{p['level']}: {p['message']}" for p in tls.get("problems", ())]
    return lines


def _audit(report: dict) -> list[str]:
    """AU-01, AU-02: where audit messages go, and how many wait in the spool for the collector."""
    audit = report.get("audit")
    if not audit or not audit["collector"]:
        return []
    waiting = audit["spooled_messages"]
    line = f"audit trail: to {audit['collector']}"
    if waiting:
        return [line, f"WARNING: {waiting} audit messages ({size(audit['spooled_bytes'])}) wait in the spool: "
                      "the collector cannot be reached"]
    return [line]


def _level(name: str, percent: int) -> str:
    return f"{name} below {percent} %" if percent else f"{name} off"


def _days(days: float) -> str:
    return f"{days:.0f} days" if days >= 10 else f"{days:.1f} days"


def _ingest(archive: dict) -> str:
    """MG-04: the rate, and what it is averaged over when the archive is younger than 7 days."""
    if archive["archive_age_days"] is None:
        return "ingest: nothing received yet"
    rate = f"ingest: {size(archive['ingest_bytes_per_day'])} a day"
    if archive["archive_age_days"] < 1:
        return f"{rate}, counted over one day: the archive is younger than that"
    if archive["ingest_days"] < 7:
        return f"{rate} over the archive's {_days(archive['ingest_days'])}: it is younger than 7 days"
    return f"{rate} over the last 7 days"


def _disk(report: dict) -> list[str]:
    """Free space against the reserve and the watermarks, the ingest rate and the days until the
    disk is full at that rate (MG-04); a watermark crossed is a WARNING or ALERT line."""
    disk, archive = report["disk"], report["archive"]
    if "error" in disk:
        return [f"disk: {disk['error']}"]
    low = " — LOW: below the reserve, C-STOREs are refused (A700)" if disk["free_bytes"] < disk["reserve_bytes"] else ""
    lines = [f"disk: {size(disk['free_bytes'])} free of {size(disk['total_bytes'])} ({disk['free_percent']:.1f} %; "
             f"{_level('warning', disk['warn_free_percent'])}, {_level('alert', disk['alert_free_percent'])}), "
             f"reserve {size(disk['reserve_bytes'])}{low}"]
    if "error" not in archive:
        days = disk["days_until_full"]
        lines.append(_ingest(archive) + (f"; full in about {_days(days)}" if days is not None else "; not growing"))
    return lines + [f"{p['level']}: {p['message']}" for p in disk["problems"]]


def _text(report: dict) -> list[str]:
    if report["running"]:
        lines = [f"service: running, appliance {report['version']} (pid {report['pid']}, up "
                 f"{_duration(report['uptime_s'])}){'' if report['state'] == 'open' else ', ' + report['state']}",
                 f"  {report['libraries']}",
                 *_configuration(report),
                 "listening: " + "; ".join(map(_listener, report["listeners"])),
                 f"STORAGE-SCU: {report['storage_scu']} (calls out only)",
                 f"associations: {len(report['associations'])} active" + _waiting(report)]
        for a in report["associations"]:
            work = f"{a['instances']} instances" if a["ae"] == "STORAGE-SCP" else \
                f"{a['queries']} queries, {a['moves']} moves"
            lines.append(f"  {a['ae']} #{a['number']} {a['calling'] or '?'}@{a['peer']} {a['stage']} "
                         f"{a['seconds']:.0f} s, {work}")
    else:
        lines = [f"service: NOT RUNNING ({report['why']})", *_configuration(report), *_elsewhere(report)]
    lines += _tls(report)
    lines += _audit(report)
    lines.append(f"data directory: {report['data_dir']}")
    lines += _index(report)
    archive = report["archive"]
    if "error" in archive:
        lines.append(f"archive: index unreadable: {archive['error']}")
    else:
        lines.append(f"archive: {archive['patients']} patients, {archive['studies']} studies, {archive['series']} "
                     f"series, {archive['instances']} instances ({size(archive['instance_bytes'])})")
        lines.append(f"pending storage commitment reports: {archive['pending_commitment_reports']}")
    lines += _disk(report)
    problems = report["problems"]
    if report["running"]:
        counts = ", ".join(f"{n} {level}" for level, n in sorted(problems["counts"].items())) or "none"
        lines.append(f"errors and alerts since start: {counts}")
    else:
        lines.append("recent errors and alerts (log file):" if problems["recent"] else "no errors in the log file")
    for p in problems["recent"][-_RECENT:]:
        lines.append(f"  {p['time']} {p['level']} {p['message'].splitlines()[0]}")
    return lines
