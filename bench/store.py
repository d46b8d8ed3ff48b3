#!/usr/bin/env python3
"""STORAGE-SCP throughput benchmark: the appliance next to DCMTK storescp and Orthanc, same data,
same run.

A benchmark script, not a test. It starts the real daemon through tests/support/helpers.Appliance
(temporary data dir, free ports, sd_notify READY), sends with DCMTK storescu and compares
with DCMTK storescp (no fsync, no index) and Orthanc (fsyncs every file, SQLite index: the
durable peer) receiving the same files; see bench/lab.py for how each receiver is started.
In the cases --pg-cases names (default a and b) the service runs a second time with its index
on PostgreSQL (IX-01), "service-pg": one server for the run (bench/lab.postgres_cluster,
127.0.0.1 on a free port, fsync and synchronous_commit on), a new database for each start,
dropped after it. For those runs the script also records what the server did per instance:
the statements the daemon ran (pg_stat_statements), the WAL flushes and their time
(pg_stat_wal, track_wal_io_timing) and the server's CPU (postmaster and backends), which the
receiver CPU (the daemon's) does not include.
Cases (see docs/performance.md):

  a  200 CT 512x512x16 (~525 KB) over one association on loopback; receiver CPU per 105 MB
  b  the same 200 over 4 and over 10 parallel associations (parallel storescu processes)
  c  one ~300 MB US multi-frame instance (640x480x8, 1000 frames): MB/s and peak RSS (VmHWM)
  d  1000 small CT 64x64x16 (~9 KB) over one association: instances/s
  e  the 200 CT through a 100 Mbit/s link (two network namespaces, veth, tbf), with the
     plain TCP ceiling of that link measured by iperf3 in the same run
  f  network.socket_buffer_size 1342177 (CF-08 default) versus 0 (autotuning) on a and e,
     plus what getsockopt reports for the requested size (the service only)

Usage (as root: case e and Orthanc run in network namespaces; from the repository):
  .venv/bin/python bench/store.py [--quick] [--only a,b,...] [--json out.json] [--repeat N]
                                  [--pg-cases a,b] [--pg-setting NAME=VALUE ...]
                                  [--profile /path/to/py-spy --profile-dir DIR]

--pg-setting is for experiments (e.g. synchronous_commit=off: what the per-commit flush costs);
the setting is recorded and printed with the figures. PostgreSQL comes from Debian's
`postgresql` package, as tests/run.sh installs it.

Orthanc is Debian's package: `apt-get install -y orthanc`. The package enables a system
service (port 4242, HTTP 8042, /var/lib/orthanc); this script does not use it and starts its
own Orthanc per measurement. Where systemd runs, `systemctl disable --now orthanc` keeps the
system one from competing for CPU and disk.

Traffic goes only to loopback or to addresses inside the namespaces this script creates;
every subprocess has a timeout; namespaces are removed in `finally`. MB = 10^6 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# bench/lab.py, shared with bench/associations.py and bench/move.py (find.py reaches these as
# store.X)
from lab import (CF08_BUFFER, REPO, Link, Orthanc, Service, StoreSCP, cpu_seconds, dcmtk_env,  # noqa: E402,F401
                 load_json, log, machine, machine_busy, machine_cpu_seconds, own_cpu_seconds, postgres_cluster,
                 profiled, run, run_recorded, target_text, terminate, text_table, tree_cpu_seconds, verdict,
                 vm_hwm_kib, wait_for_echo, wal_difference, wait_quiet)
import helpers  # noqa: E402,F401  (tests/support/helpers.py, on the path bench/lab.py sets up)
from datasets import CT, ELE, US_MULTIFRAME, image, write  # noqa: E402

RESULTS = REPO / "bench" / "results"
PREVIOUS = RESULTS / "store-previous.json"  # --quick runs use store-previous-quick.json
STEP_TIMEOUT = 600  # no single sender run may take longer than this
CT_SERIES_BYTES = 105e6  # case a's 200 CT: the unit of the receiver CPU target
RECEIVERS = ("service", "service-pg", "storescp", "orthanc")  # service-pg: only in --pg-cases
PG_CASES = "abcd"  # the cases --pg-cases may name (e runs in namespaces the server does not listen in)

# The issue's targets for the service: key -> (op, value, goal or None, what)
TARGETS = {
    "a.ratio": (">=", 0.6, 0.9, "200 CT, one association: ≥0.6× (goal 0.9×) storescp MB/s, durable"),
    "a.cpu_105mb": ("<=", 0.3, None, "receiver CPU ≤0.3 s per 105 MB of CT on loopback"),
    "b.4.failures": ("==", 0, None, "4 parallel associations: no failure"),
    "b.4.vs_one": (">=", 1.3, None, "4 parallel: aggregate ≥1.3× one association (case a)"),
    "b.10.failures": ("==", 0, None, "10 parallel associations: no failure"),
    "b.10.vs_one": (">=", 1.3, None, "10 parallel: aggregate ≥1.3× one association (case a)"),
    "c.ratio": (">=", 0.9, None, "300 MB instance: ≥0.9× storescp MB/s"),
    "c.rss_mib": ("<=", 64.0, None, "300 MB instance: peak RSS ≤64 MiB"),
    "d.per_s": (">=", 1000.0, 1500.0, "1000 small instances, one association: ≥1000/s (goal 1500/s), durable"),
    "e.percent_ceiling": (">=", 97.0, None, "≥97% of the 100 Mbit/s link's iperf3 ceiling, same run"),
    "e.mbps": (">=", 2.0, None, "ST-23 seed: ≥2 MB/s at 100 Mbit/s"),
}


def files_size(files: list[Path]) -> int:
    return sum(f.stat().st_size for f in files)


# --- data ------------------------------------------------------------------------------------

class Data:
    """The generated instances, written once and reused by every receiver."""

    def __init__(self, root: Path, quick: bool, only: set[str]):
        self.root = root
        n_ct = 40 if quick else 200
        n_small = 100 if quick else 1000
        frames = 100 if quick else 1000
        self.ct: list[Path] = []
        self.small: list[Path] = []
        self.us: list[Path] = []
        if only & {"a", "b", "e", "f"}:
            self.ct = self._series("ct", n_ct, rows=512, columns=512)
        if "d" in only:
            self.small = self._series("small", n_small, rows=64, columns=64)
        if "c" in only:
            d = root / "us"
            d.mkdir()
            ds = image(US_MULTIFRAME, ELE, rows=480, columns=640, frames=frames, bits=8,
                       PhotometricInterpretation="MONOCHROME2")
            self.us = [write(ds, d / "us-0000.dcm")]
            del ds

    def _series(self, name: str, n: int, rows: int, columns: int) -> list[Path]:
        d = self.root / name
        d.mkdir()
        study = f"2.25.{uuid.uuid4().int}"
        series = f"2.25.{uuid.uuid4().int}"
        files = []
        for i in range(n):
            ds = image(CT, ELE, rows=rows, columns=columns, bits=16, study_uid=study, series_uid=series,
                       InstanceNumber=str(i + 1))
            files.append(write(ds, d / f"{name}-{i:04d}.dcm"))
        return files


# --- sender ----------------------------------------------------------------------------------

def sample_socket_buffers(port: int, netns: str | None, out: dict, delay: float) -> None:
    """One `ss -tm` look at the receiver's established socket mid-transfer (rb/tb = buffers)."""
    time.sleep(delay)
    cmd = ["ss", "-tmnH", "state", "established", f"( sport = :{port} )"]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    try:
        text = run(cmd, timeout=5, check=False).stdout
    except subprocess.TimeoutExpired:
        return
    for token in text.replace("(", " ").replace(")", " ").replace(",", " ").split():
        if token.startswith("rb") and token[2:].isdigit():
            out["rcvbuf"] = int(token[2:])
        if token.startswith("tb") and token[2:].isdigit():
            out["sndbuf"] = int(token[2:])


QUIET_WAIT = 0.0  # set from --wait-quiet


def send(receiver, groups: list[list[Path]], netns: str | None = None, sample_buffers: bool = False,
         options: tuple[str, ...] = ()) -> dict:
    """Run one storescu per group in parallel (with `options`, e.g. +tls); wall time from first
    spawn to last exit. The senders run in `netns`, else where the receiver wants its clients
    (Orthanc's namespace)."""
    netns = netns or receiver.client_netns
    os.sync()  # earlier runs' dirty pages are written back before, not during, the measurement
    busy_before = wait_quiet(QUIET_WAIT) if QUIET_WAIT else machine_busy()
    procs = []
    machine_before, own_before = machine_cpu_seconds(), own_cpu_seconds()
    logs = []
    buffers: dict = {}
    sampler = None
    cpu_before = tree_cpu_seconds(receiver.pid)
    start = time.monotonic()
    for i, group in enumerate(groups):
        cmd = ["storescu", *options, "-aet", "BENCH_SCU", "-aec", receiver.title, "-to", "10", "-ts", "60",
               receiver.host, str(receiver.port), *map(str, group)]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        err = tempfile.TemporaryFile()
        logs.append(err)
        procs.append(subprocess.Popen(cmd, env=dcmtk_env(), stdout=err, stderr=err))
    if sample_buffers:
        sampler = threading.Thread(target=sample_socket_buffers,
                                   args=(receiver.port, receiver.netns, buffers, 0.3), daemon=True)
        sampler.start()
    failures = 0
    deadline = start + STEP_TIMEOUT
    for p in procs:
        try:
            rc = p.wait(max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
            rc = -9
        if rc != 0:
            failures += 1
    seconds = time.monotonic() - start
    machine_used, own_used = machine_cpu_seconds() - machine_before, own_cpu_seconds() - own_before
    if sampler:
        sampler.join(10)
    messages = []
    for p, err in zip(procs, logs):
        if p.returncode != 0:
            err.seek(0)
            messages.append(err.read().decode(errors="replace").strip()[-500:])
        err.close()
    files = [f for g in groups for f in g]
    nbytes = files_size(files)
    time.sleep(0.2)  # storescp's last file / the service's last row are in place before we count
    stored = receiver.stored()
    cpu_after = tree_cpu_seconds(receiver.pid)
    result = {
        "seconds": round(seconds, 3),
        "bytes": nbytes,
        "instances": len(files),
        "mbps": round(nbytes / seconds / 1e6, 2),
        "per_s": round(len(files) / seconds, 1),
        "associations": len(groups),
        "sender_failures": failures,
        "stored": stored,
        "missing": len(files) - stored,
        "peak_rss_mib": None,
        "machine_busy_before_percent": busy_before,
    }
    result["sender_cpu_s"] = round(own_used, 2)
    if cpu_before is not None and cpu_after is not None:
        result["receiver_cpu_s"] = round(cpu_after - cpu_before, 2)
        result["receiver_cpu_s_per_105mb"] = round((cpu_after - cpu_before) * CT_SERIES_BYTES / nbytes, 3)
        result["receiver_cpu_percent"] = round(100 * (cpu_after - cpu_before) / seconds, 1)
        # CPU time burnt by anything else on the machine during the transfer (kernel threads,
        # writeback, other users' jobs): a run with a large value was disturbed
        result["foreign_cpu_s"] = round(max(machine_used - own_used - (cpu_after - cpu_before), 0.0), 2)
    hwm = vm_hwm_kib(receiver.pid)
    if hwm is not None:
        result["peak_rss_mib"] = round(hwm / 1024, 1)
    if receiver.hwm_idle:
        result["idle_rss_mib"] = round(receiver.hwm_idle / 1024, 1)
    if buffers:
        result["socket_buffers"] = buffers
    if messages:
        result["errors"] = messages[:3]
    return result


def split(files: list[Path], n: int) -> list[list[Path]]:
    return [files[i::n] for i in range(n)]


# --- the cases -------------------------------------------------------------------------------

def sockopt_probe() -> dict:
    sys_ = {k: Path(f"/proc/sys/net/{k.replace('.', '/')}").read_text().strip()
            for k in ("core.rmem_max", "core.wmem_max", "core.rmem_default", "ipv4.tcp_rmem", "ipv4.tcp_wmem")}
    out = {"sysctl": sys_, "requested": CF08_BUFFER}
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        out["autotune_initial"] = {"rcvbuf": s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                                   "sndbuf": s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)}
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CF08_BUFFER)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CF08_BUFFER)
        out["granted"] = {"rcvbuf": s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                          "sndbuf": s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)}
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024 * 1024)
        out["granted_16MiB_request"] = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return out


class Bench:
    def __init__(self, args):
        self.args = args
        self.results: dict = {}
        self.work = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.tmpdir))
        self.n = 0
        self.pg = None  # the PostgreSQL server of the service-pg runs (--pg-cases), started in run()
        self.pg_database = ""

    def tmp(self, name: str) -> Path:
        self.n += 1
        return self.work / f"{self.n:02d}-{name}"

    def profile_out(self, name: str) -> Path | None:
        return Path(self.args.profile_dir) / f"{name}.txt" if self.args.profile else None

    def receiver(self, kind: str, buffer_size: int, fork: bool, netns: str | None, bind: str | None):
        root = self.tmp(kind)
        if kind == "service":
            return Service(root, buffer_size, netns=netns, bind=bind)
        if kind == "service-pg":  # a new database on the run's server for each start
            assert netns is None, "the PostgreSQL server listens on this namespace's loopback only"
            self.pg_database, url = self.pg.database("store")
            return Service(root, buffer_size, bind=bind, config={"index": {"url": url}})
        if kind == "storescp":
            return StoreSCP(root, fork=fork, netns=netns, bind=bind)
        return Orthanc(root, netns=netns, bind=bind)

    def measure(self, kind: str, groups, buffer_size=CF08_BUFFER, fork=False, netns_srv=None, netns_cli=None,
                bind=None, profile=None, sample_buffers=False) -> dict:
        """One transfer to a fresh receiver. `fork`: storescp --fork (parallel associations)."""
        with self.receiver(kind, buffer_size, fork, netns_srv, bind) as rx:
            pg_before = self.pg_counters() if kind == "service-pg" else None
            with profiled(self.args.profile if kind == "service" else None, rx.pid, profile):
                r = send(rx, groups, netns=netns_cli, sample_buffers=sample_buffers and kind == "service")
            if pg_before is not None:
                r["postgres"] = self.pg_figures(pg_before, r)
        if kind == "service-pg":
            self.pg.drop_database(self.pg_database)
        if kind.startswith("service"):
            r["socket_buffer_size"] = buffer_size
        return r

    def pg_counters(self) -> dict:
        self.pg.reset_statements(self.pg_database)
        return {"cpu": self.pg.cpu_seconds(), "wal": self.pg.wal()}

    def pg_figures(self, before: dict, r: dict) -> dict:
        """What the index server did for one transfer: its CPU (postmaster and backends), its WAL
        flushes and their time (pg_stat_wal, the whole server's: nothing else uses it meanwhile),
        and the statements the daemon ran (pg_stat_statements of this database), per instance.
        The counters are read after the transfer, so they include the daemon's few statements
        after the last response (the flusher's, the count)."""
        cpu, wal = self.pg.cpu_seconds(), wal_difference(before["wal"], self.pg.wal())
        statements = self.pg.statements(self.pg_database)
        n = max(r["instances"], 1)
        out = {"cpu_s": round(cpu - before["cpu"], 2), "wal": wal, "statements": statements,
               "per_instance": {"statements": round(statements["calls"] / n, 2),
                                "server_exec_ms": round(statements["exec_ms"] / n, 3),
                                "wal_syncs": round(wal["wal_sync"] / n, 2),
                                "wal_sync_ms": round(wal["wal_sync_time"] / n, 3),
                                "wal_write_ms": round(wal["wal_write_time"] / n, 3),
                                "cpu_ms": round(1000 * (cpu - before["cpu"]) / n, 3),
                                "daemon_cpu_ms": (round(1000 * r["receiver_cpu_s"] / n, 3)
                                                  if r.get("receiver_cpu_s") is not None else None)}}
        if r.get("receiver_cpu_s") is not None:
            out["receiver_and_index_cpu_s_per_105mb"] = round((r["receiver_cpu_s"] + out["cpu_s"]) * CT_SERIES_BYTES
                                                              / r["bytes"], 3)
        return out

    def best(self, fn, *a, **kw) -> dict:
        """Median of --repeat runs (by MB/s); all runs kept."""
        runs = [fn(*a, **kw) for _ in range(self.args.repeat)]
        runs.sort(key=lambda r: r["mbps"])
        chosen = dict(runs[len(runs) // 2])
        if len(runs) > 1:
            chosen["runs_mbps"] = [r["mbps"] for r in runs]
        return chosen

    def compare(self, groups, repeat: bool = False, case: str = "", **kw) -> dict:
        """The same transfer to each receiver in turn; ratios to storescp (by MB/s, which for the
        same files is also the ratio of instances/s). The service on PostgreSQL only in the
        cases --pg-cases names."""
        out = {}
        for kind in RECEIVERS:
            if kind == "service-pg" and case not in self.args.pg_cases:
                continue
            out[kind] = self.best(self.measure, kind, groups, **kw) if repeat else self.measure(kind, groups, **kw)
            r = out[kind]
            log(f"   {kind}: {r['mbps']} MB/s, {r['per_s']} inst/s, receiver CPU {r.get('receiver_cpu_s')} s, "
                f"peak RSS {r['peak_rss_mib']} MiB, {r['sender_failures']} failed, {r['missing']} missing")
            if "postgres" in r:
                pg = r["postgres"]
                log(f"      PostgreSQL: CPU {pg['cpu_s']} s; per instance: {pg['per_instance']}")
        out["ratio"] = round(out["service"]["mbps"] / out["storescp"]["mbps"], 3)
        out["orthanc_ratio"] = round(out["orthanc"]["mbps"] / out["storescp"]["mbps"], 3)
        if "service-pg" in out:
            out["service-pg_ratio"] = round(out["service-pg"]["mbps"] / out["storescp"]["mbps"], 3)
            out["pg_vs_sqlite"] = round(out["service-pg"]["mbps"] / out["service"]["mbps"], 3)
        return out

    def case_a(self, data: Data):
        log(f"a: {len(data.ct)} CT over one association (service with CF-08 buffers)")
        self.results["a"] = self.compare([data.ct], repeat=True, case="a", sample_buffers=True)
        log(f"   ratio to storescp: service {self.results['a']['ratio']}, orthanc {self.results['a']['orthanc_ratio']}")

    def case_b(self, data: Data):
        out = {}
        for n in (4, 10):
            log(f"b: {len(data.ct)} CT over {n} parallel associations (storescp --fork)")
            out[str(n)] = self.compare(split(data.ct, n), case="b", fork=True)
        self.results["b"] = out

    def case_c(self, data: Data):
        log(f"c: one {files_size(data.us) / 1e6:.0f} MB US multi-frame instance")
        self.results["c"] = self.compare([data.us], case="c")

    def case_d(self, data: Data):
        log(f"d: {len(data.small)} small CT over one association")
        self.results["d"] = self.compare([data.small], repeat=True, case="d")

    def case_e(self, data: Data, with_autotune: bool):
        log("e: 100 Mbit/s link in two network namespaces")
        with Link() as link:
            e = {"namespaces": [link.srv, link.cli], "netns_sysctl": link.sysctls()}
            secs = 5 if self.args.quick else 10
            wait_quiet(QUIET_WAIT)
            before = link.iperf(seconds=secs)
            log(f"   iperf3 ceiling {before['mbit_s']} Mbit/s = {before['mbps']} MB/s")
            kw = dict(netns_srv=link.srv, netns_cli=link.cli, bind=link.SERVER_IP)
            e.update(self.compare([data.ct], sample_buffers=True, **kw))
            if with_autotune:
                e["service_autotune"] = self.measure("service", [data.ct], 0, sample_buffers=True, **kw)
                log(f"   service (buffer 0 = autotuning) {e['service_autotune']['mbps']} MB/s")
            wait_quiet(QUIET_WAIT)
            after = link.iperf(seconds=secs)
            log(f"   iperf3 again {after['mbit_s']} Mbit/s")
            # the ceiling is the better of the two iperf3 runs (tbf on a busy 2-core guest wobbles)
            e["iperf3"] = dict(max(before, after, key=lambda r: r["mbps"]),
                               runs_mbit_s=[before["mbit_s"], after["mbit_s"]])
        ceiling = e["iperf3"]["mbps"]
        for k in (*RECEIVERS, "service_autotune"):
            if k in e:
                e[k]["percent_ceiling"] = round(100 * e[k]["mbps"] / ceiling, 1)
        self.results["e"] = e

    def case_f(self, data: Data):
        log("f: socket buffers: getsockopt for the CF-08 request; case a with buffer 0 (autotuning)")
        f = {"probe": sockopt_probe()}
        f["a_autotune"] = self.best(self.measure, "service", [data.ct], 0, sample_buffers=True)
        log(f"   a with autotuning: {f['a_autotune']['mbps']} MB/s")
        self.results["f"] = f

    def run(self):
        only = self.args.only
        data_root = self.work / "data"
        data_root.mkdir()
        log(f"generating data in {data_root} ({'quick' if self.args.quick else 'full'})")
        data = Data(data_root, self.args.quick, only)
        self.results["data"] = {
            "ct": {"instances": len(data.ct), "bytes": files_size(data.ct)},
            "small": {"instances": len(data.small), "bytes": files_size(data.small)},
            "us": {"instances": len(data.us), "bytes": files_size(data.us)},
        }
        if self.args.profile:
            log("profiling the service with py-spy: a and d only (other cases unprofiled)")
        if set(self.args.pg_cases) & only:
            self.pg = postgres_cluster(self.args.pg_setting).__enter__()
            self.results["postgres"] = {"cases": "".join(sorted(set(self.args.pg_cases) & only)),
                                        "settings": self.pg.settings(), "experiment": self.args.pg_setting}
            log(f"PostgreSQL {self.pg.version} on 127.0.0.1:{self.pg.port} for the service-pg runs of case(s) "
                f"{', '.join(self.results['postgres']['cases'])}")
        for case in "abcdef":
            if case not in only:
                continue
            if case == "e":
                self.case_e(data, with_autotune="f" in only)
            else:
                getattr(self, f"case_{case}")(data)
            if case in "ad" and self.args.profile:  # an extra run: py-spy slows what it watches
                self.measure("service", [data.ct if case == "a" else data.small], profile=self.profile_out(case))

    def cleanup(self):
        try:
            if self.pg is not None:
                self.pg.stop()
        finally:
            shutil.rmtree(self.work, ignore_errors=True)


# --- report ----------------------------------------------------------------------------------

def failed(r: dict) -> int:
    return r["sender_failures"] + r["missing"]


def flat_key(prefix: str, kind: str, name: str) -> str:
    """`a.mbps` for the service (the targets' keys), `a.storescp_mbps`, `a.orthanc_mbps`."""
    return f"{prefix}.{name}" if kind == "service" else f"{prefix}.{kind}_{name}"


def flatten(results: dict) -> dict:
    """The figures the targets and the previous-run comparison talk about."""
    flat = {}

    def per_receiver(prefix: str, node: dict, metrics: dict) -> None:
        for kind in RECEIVERS:
            if kind in node:  # records from before Orthanc have no orthanc
                for name, get in metrics.items():
                    flat[flat_key(prefix, kind, name)] = get(node[kind]) if callable(get) else node[kind].get(get)

    a, b, c, d, e, f = (results.get(k) for k in "abcdef")
    for case, node in (("a", a), ("c", c), ("d", d)):
        if node and "service-pg" in node:  # the service on PostgreSQL: its ratio, and CPU with the server's
            flat[f"{case}.service-pg_ratio"] = node["service-pg_ratio"]
            flat[f"{case}.service-pg_cpu_105mb_with_server"] = node["service-pg"]["postgres"].get(
                "receiver_and_index_cpu_s_per_105mb")
    if a:
        per_receiver("a", a, {"mbps": "mbps", "seconds": "seconds", "cpu_105mb": "receiver_cpu_s_per_105mb"})
        flat["a.ratio"], flat["a.orthanc_ratio"] = a["ratio"], a.get("orthanc_ratio")
    for n, r in (b or {}).items():
        per_receiver(f"b.{n}", r, {"mbps": "mbps", "failures": failed})
        for kind in RECEIVERS:
            if a and kind in a and kind in r:
                flat[flat_key(f"b.{n}", kind, "vs_one")] = round(r[kind]["mbps"] / a[kind]["mbps"], 3)
    if c:
        per_receiver("c", c, {"mbps": "mbps", "rss_mib": "peak_rss_mib", "cpu_105mb": "receiver_cpu_s_per_105mb"})
        flat["c.ratio"], flat["c.orthanc_ratio"] = c["ratio"], c.get("orthanc_ratio")
    if d:
        per_receiver("d", d, {"per_s": "per_s"})
        flat["d.ratio"], flat["d.orthanc_ratio"] = d["ratio"], d.get("orthanc_ratio")
    if e:
        flat["e.ceiling_mbps"] = e["iperf3"]["mbps"]
        per_receiver("e", e, {"mbps": "mbps", "percent_ceiling": "percent_ceiling"})
        if "service_autotune" in e:
            flat["f.e_autotune_mbps"] = e["service_autotune"]["mbps"]
    if f:
        flat["f.a_autotune_mbps"] = f["a_autotune"]["mbps"]
    return flat


def table(results: dict, previous: dict | None) -> str:
    flat = flatten(results)
    prev = flatten(previous["results"]) if previous else {}
    a, b, c, d, e, f = (results.get(k) for k in "abcdef")
    rows = []

    pg_prev = any(k.split(".")[-1].startswith("service-pg_") for k in prev)  # a previous run had service-pg

    def row(label: str, key: str, unit: str, each: bool = True):
        """One line: the service's `key`, and with `each` the other receivers' same figure."""
        prefix, name = key.rsplit(".", 1)
        values = [flat.get(flat_key(prefix, kind, name)) if each or kind == "service" else "" for kind in RECEIVERS]
        target = TARGETS.get(key)
        previous_pg = (prev.get(flat_key(prefix, "service-pg", name), "-"),) if pg_prev else ()
        rows.append((label, *("-" if v is None else v for v in values), prev.get(key, "-"), *previous_pg,
                     target_text(target), verdict(target, flat.get(key)), unit))

    if a:
        row(f"a  {results['data']['ct']['instances']} CT 512x512, 1 assoc, loopback", "a.mbps", "MB/s")
        row("a  seconds", "a.seconds", "s")
        row("a  ratio to storescp", "a.ratio", "x")
        row("a  receiver CPU per 105 MB", "a.cpu_105mb", "s")
        if "service-pg" in a:
            row("a  service-pg: with PostgreSQL's CPU", "a.cpu_105mb_with_server", "s")
    for n in b or {}:
        row(f"b  {n} parallel assocs, aggregate", f"b.{n}.mbps", "MB/s")
        row(f"b  {n} parallel: failed + missing", f"b.{n}.failures", "")
        row(f"b  {n} parallel / 1 assoc (a)", f"b.{n}.vs_one", "x")
    if c:
        row(f"c  {c['service']['bytes'] / 1e6:.0f} MB US multi-frame", "c.mbps", "MB/s")
        row("c  ratio to storescp", "c.ratio", "x")
        row("c  peak RSS (VmHWM)", "c.rss_mib", "MiB")
        row("c  receiver CPU per 105 MB", "c.cpu_105mb", "s")
    if d:
        row(f"d  {results['data']['small']['instances']} small CT, 1 assoc", "d.per_s", "inst/s")
        row("d  ratio to storescp", "d.ratio", "x")
    if e:
        row("e  iperf3 TCP ceiling, 100 Mbit/s", "e.ceiling_mbps", "MB/s", each=False)
        row(f"e  {results['data']['ct']['instances']} CT at 100 Mbit/s", "e.mbps", "MB/s")
        row("e  percent of ceiling", "e.percent_ceiling", "%")
        if "service_autotune" in e:
            row("f  e with socket_buffer_size=0", "f.e_autotune_mbps", "MB/s", each=False)
    if f:
        row("f  a with socket_buffer_size=0", "f.a_autotune_mbps", "MB/s", each=False)
    lines = [text_table(("case", *RECEIVERS, "previous", *(("previous pg",) if pg_prev else ()), "target", "verdict",
                         "unit"), rows)]
    lines += pg_lines(results)
    if f:
        p = f["probe"]
        lines.append("")
        lines.append(f"socket buffers: setsockopt({p['requested']}) -> getsockopt rcvbuf {p['granted']['rcvbuf']}, "
                     f"sndbuf {p['granted']['sndbuf']}; a 16 MiB request -> {p['granted_16MiB_request']} "
                     f"(rmem_max {p['sysctl']['core.rmem_max']}, wmem_max {p['sysctl']['core.wmem_max']})")
    for key, res in (("a", a and a["service"]), ("f/a autotune", f and f["a_autotune"]),
                     ("e", e and e["service"]), ("f/e autotune", e and e.get("service_autotune"))):
        if res and res.get("socket_buffers"):
            lines.append(f"  receiver socket mid-transfer ({key}): {res['socket_buffers']} (ss -tm rb/tb)")
    busy, errors = [], []

    def collect(node, where: str):
        if isinstance(node, dict):
            if "machine_busy_before_percent" in node:
                busy.append(node["machine_busy_before_percent"])
            if node.get("errors"):
                errors.append(f"  {where}: {node['errors'][0][-300:]}")
            for k, v in node.items():
                collect(v, f"{where}/{k}" if where else k)
    collect(results, "")
    if errors:
        lines.append("senders that failed (first message of each run):")
        lines += errors
    if busy:
        lines.append(f"machine busy (all CPUs) just before each measurement: median {statistics.median(busy)}%, "
                     f"max {max(busy)}% (other processes share this machine)")
    return "\n".join(lines)


def pg_lines(results: dict) -> list[str]:
    """What the index server did in each service-pg transfer, per instance."""
    pg = results.get("postgres")
    if not pg:
        return []
    s = pg["settings"]
    lines = [f"service-pg: the service with its index on PostgreSQL {s.get('server_version')} (127.0.0.1, TCP; "
             f"fsync {s.get('fsync')}, synchronous_commit {s.get('synchronous_commit')}, wal_sync_method "
             f"{s.get('wal_sync_method')}, shared_buffers {s.get('shared_buffers')}), a new database per start. "
             "Per instance:"]
    if pg.get("experiment"):
        lines.insert(1, f"  EXPERIMENT: the server ran with {pg['experiment']} in its configuration")
    runs = [("a", (results.get("a") or {}).get("service-pg"))]
    runs += [(f"b.{n}", r.get("service-pg")) for n, r in (results.get("b") or {}).items()]
    runs += [(case, (results.get(case) or {}).get("service-pg")) for case in "cd"]
    for where, r in runs:
        if not r or "postgres" not in r:
            continue
        x = r["postgres"]["per_instance"]
        lines.append(f"  {where}: {x['statements']} statements ({x['server_exec_ms']} ms executing them), "
                     f"{x['wal_syncs']} WAL flushes ({x['wal_sync_ms']} ms, writes {x['wal_write_ms']} ms), "
                     f"PostgreSQL CPU {x['cpu_ms']} ms, daemon CPU {x['daemon_cpu_ms']} ms")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a sanity run")
    parser.add_argument("--only", default="a,b,c,d,e,f", help="comma-separated cases (default: all)")
    parser.add_argument("--json", help="also write the full results to this file")
    parser.add_argument("--repeat", type=int, default=1, help="runs of a, d and f/a; the median is reported")
    parser.add_argument("--tmpdir", default=None, help="where data and receivers write (default: $TMPDIR or /tmp)")
    parser.add_argument("--wait-quiet", type=float, default=60.0,
                        help="before each measurement wait up to this many seconds for an idle machine")
    parser.add_argument("--pg-cases", default="a,b",
                        help="cases that also run the service with its index on PostgreSQL (service-pg): any of "
                             f"{','.join(PG_CASES)}, '' for none (default a,b)")
    parser.add_argument("--pg-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="an experiment: this setting in the PostgreSQL server's configuration as well "
                             "(repeatable; recorded, and shown under the table)")
    parser.add_argument("--profile", help="path of a py-spy binary: also record the service on a and d")
    parser.add_argument("--profile-dir", default=str(RESULTS / "profile"), help="where py-spy raw stacks go")
    args = parser.parse_args(argv)
    global QUIET_WAIT
    QUIET_WAIT = args.wait_quiet
    args.only = {c.strip() for c in args.only.split(",") if c.strip()}
    if unknown := args.only - set("abcdef"):
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    args.pg_cases = {c.strip() for c in args.pg_cases.split(",") if c.strip()}
    if bad := [s for s in args.pg_setting if "=" not in s]:
        parser.error(f"--pg-setting wants NAME=VALUE: {', '.join(bad)}")
    args.pg_setting = dict(s.split("=", 1) for s in args.pg_setting)
    if unknown := args.pg_cases - set(PG_CASES):
        parser.error(f"--pg-cases: not one of {','.join(PG_CASES)}: {', '.join(sorted(unknown))}")
    if args.only - {"f"} and os.geteuid() != 0:
        parser.error("needs root: Orthanc and case e run in network namespaces")
    link_tools = ("iperf3", "tc", "ethtool") if "e" in args.only else ()
    for tool in ("storescu", "storescp", "echoscu", "ip", "ss", *link_tools):
        if shutil.which(tool) is None:
            parser.error(f"{tool} not found")
    if shutil.which("Orthanc") is None:
        parser.error("Orthanc not found: apt-get install -y orthanc (see the docstring)")

    previous_path = PREVIOUS.with_name("store-previous-quick.json") if args.quick else PREVIOUS
    previous = load_json(previous_path)
    bench = Bench(args)
    record = run_recorded(bench, args.quick)
    flat = flatten(bench.results)
    record |= {
        "results": bench.results,
        "figures": flat,
        "targets": {k: {"op": v[0], "value": v[1], "goal": v[2], "what": v[3], "verdict": verdict(v, flat.get(k))}
                    for k, v in TARGETS.items() if k in flat},
    }
    print()
    if previous:
        print(f"previous: {previous.get('date')} ({'quick' if previous.get('quick') else 'full'})")
    print(table(bench.results, previous))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    if previous and previous.get("results"):
        # keep figures of cases this run skipped (--only), so the record stays complete
        for case, value in previous["results"].items():
            record["results"].setdefault(case, value)
    previous_path.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
