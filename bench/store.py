#!/usr/bin/env python3
"""STORAGE-SCP throughput benchmark: the appliance next to DCMTK storescp, same data, same run.

A benchmark script, not a test. It starts the real daemon through tests/helpers.Appliance
(temporary data dir, free ports, sd_notify READY), sends with DCMTK storescu and compares
with DCMTK storescp receiving the same files. Cases (see docs/performance.md):

  a  200 CT 512x512x16 (~512 KiB) over one association on loopback
  b  the same 200 over 4 and over 10 parallel associations (parallel storescu processes)
  c  one ~300 MB US multi-frame instance (640x480x8, 1000 frames): MB/s and peak RSS (VmHWM)
  d  200 small CT 64x64x16 (~10 KiB): instances/s
  e  the 200 CT through a 100 Mbit/s link (two network namespaces, veth, tbf), with the
     plain TCP ceiling of that link measured by iperf3 in the same run
  f  network.socket_buffer_size 1342177 (CF-08 default) versus 0 (autotuning) on a and e,
     plus what getsockopt reports for the requested size

Usage (as root, from the repository):
  .venv/bin/python bench/store.py [--quick] [--only a,b,...] [--json out.json]
                                  [--profile /path/to/py-spy --profile-dir DIR]

Traffic goes only to loopback or to addresses inside the namespaces this script creates;
every subprocess has a timeout; namespaces are removed in `finally`. MB = 10^6 bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import helpers  # noqa: E402  (tests/helpers.py: the real daemon, started and awaited)
from datasets import CT, ELE, US_MULTIFRAME, image, write  # noqa: E402
# bench/lab.py, shared with bench/move.py (find.py and the others reach these as store.X)
from lab import (Link, NetnsPopen, StoreSCP, dcmtk_env, log, machine, machine_busy, profiled,  # noqa: E402,F401
                 run, terminate, vm_hwm_kib, wait_for_echo, wait_quiet)

RESULTS = REPO / "bench" / "results"
PREVIOUS = RESULTS / "store-previous.json"  # --quick runs use store-previous-quick.json
CF08_BUFFER = 1342177
SCP_TITLE = "EX_STORE_SCP"
STEP_TIMEOUT = 600  # no single sender run may take longer than this

TARGETS = {
    "a.ratio": (">=", 0.5, "≥0.5× DCMTK storescp MB/s, one loopback association"),
    "b.10.failures": ("==", 0, "10 parallel associations: no failure"),
    "b.10.vs_one": (">=", 1.0, "10 parallel: aggregate not lower than one association"),
    "e.percent_ceiling": (">=", 97.0, "≥97% of the 100 Mbit/s link ceiling"),
    "c.mbps": (">=", 500.0, "300 MB instance at ≥500 MB/s"),
    "c.rss_mib": ("<=", 64.0, "300 MB instance: service peak RSS ≤64 MiB"),
    "d.per_s": (">=", 600.0, "≥600 small instances/s, one association"),
    "e.mbps": (">=", 2.0, "ST-23 seed: ≥2 MB/s at 100 Mbit/s"),
}


def cpu_seconds(pid: int) -> float | None:
    """utime+stime of the process (all threads) plus reaped children (storescp --fork)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (all CPUs, everything but idle/iowait)."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """This script plus its reaped children (the storescu senders, ip netns exec)."""
    import resource
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def files_size(files: list[Path]) -> int:
    return sum(f.stat().st_size for f in files)


# --- data ------------------------------------------------------------------------------------

class Data:
    """The generated instances, written once and reused by every receiver."""

    def __init__(self, root: Path, quick: bool, only: set[str]):
        self.root = root
        n_ct = 40 if quick else 200
        n_small = 50 if quick else 200
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


# --- receivers -------------------------------------------------------------------------------

class Service:
    """The appliance, fresh data dir per measurement."""

    kind = "service"

    def __init__(self, root: Path, buffer_size: int, netns: str | None = None, bind: str | None = None,
                 env: dict | None = None):
        overrides = {"network": {"socket_buffer_size": buffer_size}}
        if bind:
            overrides["network"]["bind_address"] = bind
        self.app = helpers.Appliance(root, overrides, env=env or {})
        self.netns = netns
        self.host = bind or "127.0.0.1"
        self.title = SCP_TITLE

    def __enter__(self):
        with NetnsPopen(self.netns):
            self.app.start()
        self.pid = self.app.proc.pid
        self.port = self.app.storage_port
        self.hwm_idle = vm_hwm_kib(self.pid)
        return self

    def stored(self) -> int:
        return self.app.index_rows("SELECT COUNT(*) FROM instance")[0][0]

    def __exit__(self, *exc):
        rc = self.app.stop(timeout=60)
        if rc != 0:
            log(f"service exited {rc}; log tail:\n{self.app.log()[-3000:]}")
        shutil.rmtree(self.app.root, ignore_errors=True)


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


def send(receiver, groups: list[list[Path]], netns: str | None = None, sample_buffers: bool = False) -> dict:
    """Run one storescu per group in parallel; wall time from first spawn to last exit."""
    os.sync()  # earlier runs' dirty pages are written back before, not during, the measurement
    busy_before = wait_quiet(QUIET_WAIT) if QUIET_WAIT else machine_busy()
    procs = []
    machine_before, own_before = machine_cpu_seconds(), own_cpu_seconds()
    logs = []
    buffers: dict = {}
    sampler = None
    cpu_before = cpu_seconds(receiver.pid)
    start = time.monotonic()
    for i, group in enumerate(groups):
        cmd = ["storescu", "-aet", "BENCH_SCU", "-aec", receiver.title, "-to", "10", "-ts", "60",
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
    cpu_after = cpu_seconds(receiver.pid)
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

    def tmp(self, name: str) -> Path:
        self.n += 1
        return self.work / f"{self.n:02d}-{name}"

    def profile_out(self, name: str) -> Path | None:
        return Path(self.args.profile_dir) / f"{name}.txt" if self.args.profile else None

    def service_run(self, groups, buffer_size=CF08_BUFFER, netns_srv=None, netns_cli=None, bind=None,
                    profile=None, sample_buffers=False) -> dict:
        with Service(self.tmp("service"), buffer_size, netns=netns_srv, bind=bind) as svc:
            with profiled(self.args.profile, svc.pid, profile):
                r = send(svc, groups, netns=netns_cli, sample_buffers=sample_buffers)
        r["socket_buffer_size"] = buffer_size
        return r

    def storescp_run(self, groups, fork=False, netns_srv=None, netns_cli=None, bind=None) -> dict:
        with StoreSCP(self.tmp("storescp"), fork=fork, netns=netns_srv, bind=bind) as scp:
            return send(scp, groups, netns=netns_cli)

    def best(self, fn, *a, **kw) -> dict:
        """Median of --repeat runs (by MB/s); all runs kept."""
        runs = [fn(*a, **kw) for _ in range(self.args.repeat)]
        runs.sort(key=lambda r: r["mbps"])
        chosen = dict(runs[len(runs) // 2])
        if len(runs) > 1:
            chosen["runs_mbps"] = [r["mbps"] for r in runs]
        return chosen

    def case_a(self, data: Data):
        log(f"a: {len(data.ct)} CT over one association (service, CF-08 buffers)")
        svc = self.best(self.service_run, [data.ct], sample_buffers=True)
        log(f"   service {svc['mbps']} MB/s; storescp ...")
        scp = self.best(self.storescp_run, [data.ct])
        self.results["a"] = {"service": svc, "storescp": scp, "ratio": round(svc["mbps"] / scp["mbps"], 3)}
        log(f"   storescp {scp['mbps']} MB/s; ratio {self.results['a']['ratio']}")

    def case_b(self, data: Data):
        out = {}
        for n in (4, 10):
            log(f"b: {len(data.ct)} CT over {n} parallel associations")
            svc = self.service_run(split(data.ct, n))
            scp = self.storescp_run(split(data.ct, n), fork=True)
            out[str(n)] = {"service": svc, "storescp": scp, "ratio": round(svc["mbps"] / scp["mbps"], 3)}
            log(f"   service {svc['mbps']} MB/s ({svc['sender_failures']} failed, {svc['missing']} missing); "
                f"storescp {scp['mbps']} MB/s")
        self.results["b"] = out

    def case_c(self, data: Data):
        log(f"c: one {files_size(data.us) / 1e6:.0f} MB US multi-frame instance")
        svc = self.service_run([data.us])
        scp = self.storescp_run([data.us])
        self.results["c"] = {"service": svc, "storescp": scp, "ratio": round(svc["mbps"] / scp["mbps"], 3)}
        log(f"   service {svc['mbps']} MB/s, peak RSS {svc['peak_rss_mib']} MiB; storescp {scp['mbps']} MB/s, "
            f"peak RSS {scp['peak_rss_mib']} MiB")

    def case_d(self, data: Data):
        log(f"d: {len(data.small)} small CT over one association")
        svc = self.best(self.service_run, [data.small])
        scp = self.best(self.storescp_run, [data.small])
        self.results["d"] = {"service": svc, "storescp": scp, "ratio": round(svc["per_s"] / scp["per_s"], 3)}
        log(f"   service {svc['per_s']} inst/s; storescp {scp['per_s']} inst/s")

    def case_e(self, data: Data, with_autotune: bool):
        log("e: 100 Mbit/s link in two network namespaces")
        with Link() as link:
            e = {"namespaces": [link.srv, link.cli], "netns_sysctl": link.sysctls()}
            secs = 5 if self.args.quick else 10
            wait_quiet(QUIET_WAIT)
            before = link.iperf(seconds=secs)
            log(f"   iperf3 ceiling {before['mbit_s']} Mbit/s = {before['mbps']} MB/s")
            kw = dict(netns_srv=link.srv, netns_cli=link.cli, bind=link.SERVER_IP)
            e["service"] = self.service_run([data.ct], CF08_BUFFER, sample_buffers=True, **kw)
            log(f"   service {e['service']['mbps']} MB/s")
            if with_autotune:
                e["service_autotune"] = self.service_run([data.ct], 0, sample_buffers=True, **kw)
                log(f"   service (buffer 0 = autotuning) {e['service_autotune']['mbps']} MB/s")
            e["storescp"] = self.storescp_run([data.ct], **kw)
            log(f"   storescp {e['storescp']['mbps']} MB/s")
            wait_quiet(QUIET_WAIT)
            after = link.iperf(seconds=secs)
            log(f"   iperf3 again {after['mbit_s']} Mbit/s")
            # the ceiling is the better of the two iperf3 runs (tbf on a busy 2-core guest wobbles)
            e["iperf3"] = dict(max(before, after, key=lambda r: r["mbps"]),
                               runs_mbit_s=[before["mbit_s"], after["mbit_s"]])
        ceiling = e["iperf3"]["mbps"]
        for k in ("service", "service_autotune", "storescp"):
            if k in e:
                e[k]["percent_ceiling"] = round(100 * e[k]["mbps"] / ceiling, 1)
        self.results["e"] = e

    def case_f(self, data: Data):
        log("f: socket buffers: getsockopt for the CF-08 request; case a with buffer 0 (autotuning)")
        f = {"probe": sockopt_probe()}
        f["a_autotune"] = self.best(self.service_run, [data.ct], 0, sample_buffers=True)
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
            log("profiling with py-spy: a and d only (other cases unprofiled)")
        for case in "abcdef":
            if case not in only:
                continue
            if case == "a":
                self.case_a(data)
                if self.args.profile:
                    self.service_run([data.ct], profile=self.profile_out("a"))
            elif case == "b":
                self.case_b(data)
            elif case == "c":
                self.case_c(data)
            elif case == "d":
                self.case_d(data)
                if self.args.profile:
                    self.service_run([data.small], profile=self.profile_out("d"))
            elif case == "e":
                self.case_e(data, with_autotune="f" in only)
            elif case == "f":
                self.case_f(data)

    def cleanup(self):
        shutil.rmtree(self.work, ignore_errors=True)


# --- report ----------------------------------------------------------------------------------

def flatten(results: dict) -> dict:
    """The figures the targets and the previous-run comparison talk about."""
    flat = {}
    a, b, c, d, e, f = (results.get(k) for k in "abcdef")
    if a:
        flat["a.mbps"] = a["service"]["mbps"]
        flat["a.storescp_mbps"] = a["storescp"]["mbps"]
        flat["a.ratio"] = a["ratio"]
    if b:
        for n, r in b.items():
            flat[f"b.{n}.mbps"] = r["service"]["mbps"]
            flat[f"b.{n}.failures"] = r["service"]["sender_failures"] + r["service"]["missing"]
            flat[f"b.{n}.storescp_mbps"] = r["storescp"]["mbps"]
        if a and "10" in b:
            flat["b.10.vs_one"] = round(b["10"]["service"]["mbps"] / a["service"]["mbps"], 3)
    if c:
        flat["c.mbps"] = c["service"]["mbps"]
        flat["c.rss_mib"] = c["service"]["peak_rss_mib"]
        flat["c.storescp_mbps"] = c["storescp"]["mbps"]
        flat["c.storescp_rss_mib"] = c["storescp"]["peak_rss_mib"]
    if d:
        flat["d.per_s"] = d["service"]["per_s"]
        flat["d.storescp_per_s"] = d["storescp"]["per_s"]
    if e:
        flat["e.ceiling_mbps"] = e["iperf3"]["mbps"]
        flat["e.mbps"] = e["service"]["mbps"]
        flat["e.percent_ceiling"] = e["service"]["percent_ceiling"]
        flat["e.storescp_mbps"] = e["storescp"]["mbps"]
        if "service_autotune" in e:
            flat["f.e_autotune_mbps"] = e["service_autotune"]["mbps"]
    if f:
        flat["f.a_autotune_mbps"] = f["a_autotune"]["mbps"]
    return flat


def verdict(key: str, value) -> str:
    if key not in TARGETS or value is None:
        return ""
    op, want, _ = TARGETS[key]
    ok = {">=": value >= want, "<=": value <= want, "==": value == want}[op]
    return "met" if ok else "NOT met"


def table(results: dict, previous: dict | None) -> str:
    flat = flatten(results)
    prev = flatten(previous["results"]) if previous else {}
    a, b, c, d, e, f = (results.get(k) for k in "abcdef")
    nct = results["data"]["ct"]["instances"]
    nsmall = results["data"]["small"]["instances"]
    rows = []

    def row(label, svc, dcmtk, key, unit):
        target = TARGETS.get(key)
        rows.append((label, svc, dcmtk, prev.get(key, "-"),
                     f"{target[0]}{target[1]:g}" if target else "", verdict(key, flat.get(key)), unit))

    if a:
        row(f"a  {nct} CT 512x512, 1 assoc, loopback", a["service"]["mbps"], a["storescp"]["mbps"], "a.mbps", "MB/s")
        row("a  seconds", a["service"]["seconds"], a["storescp"]["seconds"], "-", "s")
        row("a  ratio service/DCMTK", a["ratio"], "", "a.ratio", "x")
    if b:
        for n, r in b.items():
            row(f"b  {n} parallel assocs, aggregate", r["service"]["mbps"], r["storescp"]["mbps"], f"b.{n}.mbps",
                "MB/s")
            row(f"b  {n} parallel: failed/missing", flat[f"b.{n}.failures"],
                r["storescp"]["sender_failures"] + r["storescp"]["missing"], f"b.{n}.failures", "")
        if "b.10.vs_one" in flat:
            row("b  10 parallel / 1 assoc", flat["b.10.vs_one"], "", "b.10.vs_one", "x")
    if c:
        row(f"c  {c['service']['bytes'] / 1e6:.0f} MB US multi-frame", c["service"]["mbps"], c["storescp"]["mbps"],
            "c.mbps", "MB/s")
        row("c  peak RSS (VmHWM)", c["service"]["peak_rss_mib"], c["storescp"]["peak_rss_mib"], "c.rss_mib", "MiB")
    if d:
        row(f"d  {nsmall} small CT, 1 assoc", d["service"]["per_s"], d["storescp"]["per_s"], "d.per_s", "inst/s")
    if e:
        row("e  iperf3 TCP ceiling, 100 Mbit/s", e["iperf3"]["mbps"], "", "e.ceiling_mbps", "MB/s")
        row(f"e  {nct} CT at 100 Mbit/s", e["service"]["mbps"], e["storescp"]["mbps"], "e.mbps", "MB/s")
        row("e  percent of ceiling", e["service"]["percent_ceiling"], e["storescp"]["percent_ceiling"],
            "e.percent_ceiling", "%")
        if "service_autotune" in e:
            row("f  e with socket_buffer_size=0", e["service_autotune"]["mbps"], "", "f.e_autotune_mbps", "MB/s")
    if f:
        row("f  a with socket_buffer_size=0", f["a_autotune"]["mbps"], "", "f.a_autotune_mbps", "MB/s")
    head = ("case", "service", "DCMTK", "previous", "target", "verdict", "unit")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(head, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)) for r in rows]
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
    busy = []

    def collect(node):
        if isinstance(node, dict):
            if "machine_busy_before_percent" in node:
                busy.append(node["machine_busy_before_percent"])
            for v in node.values():
                collect(v)
    collect(results)
    if busy:
        lines.append(f"machine busy (all CPUs) just before each measurement: median {statistics.median(busy)}%, "
                     f"max {max(busy)}% (other processes share this machine)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a sanity run")
    parser.add_argument("--only", default="a,b,c,d,e,f", help="comma-separated cases (default: all)")
    parser.add_argument("--json", help="also write the full results to this file")
    parser.add_argument("--repeat", type=int, default=1, help="runs of a, d and f/a; the median is reported")
    parser.add_argument("--tmpdir", default=None, help="where data and receivers write (default: $TMPDIR or /tmp)")
    parser.add_argument("--wait-quiet", type=float, default=60.0,
                        help="before each measurement wait up to this many seconds for an idle machine")
    parser.add_argument("--profile", help="path of a py-spy binary: also record the service on a and d")
    parser.add_argument("--profile-dir", default=str(RESULTS / "profile"), help="where py-spy raw stacks go")
    args = parser.parse_args(argv)
    global QUIET_WAIT
    QUIET_WAIT = args.wait_quiet
    args.only = {c.strip() for c in args.only.split(",") if c.strip()}
    if unknown := args.only - set("abcdef"):
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    if "e" in args.only and os.geteuid() != 0:
        parser.error("case e needs root (network namespaces)")
    for tool in ("storescu", "storescp", "echoscu", "iperf3", "ip", "tc", "ethtool", "ss"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} not found")

    previous_path = PREVIOUS.with_name("store-previous-quick.json") if args.quick else PREVIOUS
    previous = None
    if previous_path.exists():
        with contextlib.suppress(ValueError, OSError):
            previous = json.loads(previous_path.read_text())
    bench = Bench(args)
    started = datetime.datetime.now(datetime.timezone.utc)
    try:
        bench.run()
    finally:
        bench.cleanup()
    record = {
        "date": started.isoformat(timespec="seconds"),
        "seconds": round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(), 1),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quick": args.quick,
        "machine": machine(),
        "results": bench.results,
        "figures": flatten(bench.results),
        "targets": {k: {"op": v[0], "value": v[1], "what": v[2], "verdict": verdict(k, flatten(bench.results).get(k))}
                    for k, v in TARGETS.items() if k in flatten(bench.results)},
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
