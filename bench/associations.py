#!/usr/bin/env python3
"""Association benchmark: set-up, C-ECHO, silent connections and rejections; the appliance next
to DCMTK storescp.

A benchmark script, not a test. It starts the real daemon (bench/lab.py Service:
tests/support/helpers.Appliance, temporary data dir, free ports, sd_notify READY) and DCMTK storescp
(bench/lab.py StoreSCP: TCP_NODELAY=1, --max-pdu 131072, free loopback port), fresh for each
case, and talks to them from raw sockets with pre-encoded PDUs (one A-ASSOCIATE-RQ for
Verification with Implicit VR LE, one C-ECHO-RQ), so the figures are the servers' cost, not a
DICOM toolkit's on the client side. Cases (see docs/performance.md):

  sequential  --count associations one after another: connect, A-ASSOCIATE-RQ/AC,
              A-RELEASE-RQ/RP, close
  echo        the same with one C-ECHO-RQ/RSP inside each association (target ≥ 1000/s)
  parallel    --count associations as in sequential, from --parallel client threads at once
  silent      --silent TCP connections opened and left silent, then the receiver's CPU over
              --idle-seconds while they sit there (target < 5 % of a core), then C-ECHO
              associations on new connections (target: answered within 1 s); the service
              closes silent connections after ARTIM (30 s), which the case stays well within
  rejected    --rejections associations refused, then the receiver's RSS against its RSS
              before (target: within ±10 MB); the service is asked for a wrong called AE
              title, storescp (which checks no title) runs with --refuse

Receivers: the service, storescp --single-process and storescp --fork (a process per
association, as bench/store.py case b uses); `rejected` has no --fork (its children would
take the rejections, not the process measured).

Usage (as root, from the repository):
  .venv/bin/python bench/associations.py [--quick] [--count 1000] [--parallel 10] [--silent 1000]
      [--idle-seconds 3] [--rejections 10000] [--cases sequential,echo,...] [--json out.json]

--quick: 200 associations, 100 silent connections, 500 rejections unless given (its figures
are kept in associations-previous-quick.json).

Traffic goes only to 127.0.0.1; every socket has a timeout and every case a deadline. The
client raises its own RLIMIT_NOFILE to the hard limit to hold the silent connections.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import resource
import selectors
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lab  # noqa: E402  (bench/lab.py: the receivers, CPU and memory accounting, tables)
import pdus  # noqa: E402  (tests/support/pdus.py, on the path bench/lab.py sets up: encoded PDUs, a PDU reader)

log = lab.log
PREVIOUS = lab.REPO / "bench" / "results" / "associations-previous.json"  # --quick: ...-previous-quick.json
HOST = "127.0.0.1"
SOCKET_TIMEOUT = 10.0
PROBE_TIMEOUT = 5.0  # a C-ECHO probe next to the silent connections: the target is 1 s
CASE_DEADLINE = 300.0
CONNECT_DEADLINE = 20.0  # for opening all silent connections (a full listen queue delays SYNs by 1 s, 3 s, ...)
SETTLE = 2.0  # after the silent connections are open, and after the rejections before RSS is read
WARMUP = 20  # the first associations pay for lazy imports and first-use caches; not measured
PROBES = 5
QUIET_WAIT = 30.0  # before each case, wait up to this long for the shared machine to be idle (--wait-quiet)
PDU_NAMES = {1: "RQ", 2: "AC", 3: "RJ", 4: "P-DATA", 5: "RELEASE-RQ", 6: "RELEASE-RP", 7: "ABORT"}
STATUS = bytes.fromhex("00000009 02000000")  # (0000,0900) Status, length 2, Implicit VR LE
WRONG_TITLE = "NOT_THIS_AE"
COUNTS = {"count": 1000, "silent": 1000, "rejections": 10000}
QUICK_COUNTS = {"count": 200, "silent": 100, "rejections": 500}

RECEIVERS = {"service": "service", "storescp": "storescp", "storescp_fork": "storescp --fork"}
CASES = {
    "sequential": tuple(RECEIVERS),
    "echo": tuple(RECEIVERS),
    "parallel": tuple(RECEIVERS),
    "silent": tuple(RECEIVERS),
    "rejected": ("service", "storescp"),
}
# The targets for the service: (case, figure) -> (op, value, goal or None, what)
TARGETS = {
    ("echo", "per_s"): (">=", 1000.0, None, "sequential C-ECHO associations ≥1000/s"),
    ("silent", "probe_max_ms"): ("<=", 1000.0, None, "C-ECHO next to the silent connections within 1 s"),
    ("silent", "probe_failures"): ("==", 0, None, "every C-ECHO next to the silent connections answered"),
    ("silent", "idle_cpu_percent"): ("<=", 5.0, None, "CPU while the silent connections sit: <5% of a core"),
    ("rejected", "rss_delta_mb"): ("abs<=", 10.0, None, "RSS after the rejections within ±10 MB of before"),
}


# --- one exchange --------------------------------------------------------------------------------

def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """(PDU type, body after the 6-byte header) of the next PDU; ConnectionError when closed."""
    pdu = pdus.read_pdu(sock)
    if not pdu:
        raise ConnectionError("closed by peer")
    return pdu[0], pdu[6:]


def refusal(pdu_type: int, body: bytes) -> str:
    """What an unexpected PDU says, e.g. 'RJ 2/3/2' (result/source/reason, as in PS3.8)."""
    if pdu_type == 3 and len(body) >= 4:
        return f"RJ {body[1]}/{body[2]}/{body[3]}"
    if pdu_type == 7 and len(body) >= 4:
        return f"ABORT source {body[2]} reason {body[3]}"
    return PDU_NAMES.get(pdu_type, f"PDU 0x{pdu_type:02x}")


def context_result(ac_body: bytes) -> int | None:
    """Result of the first presentation context item (0x21) in an A-ASSOCIATE-AC body."""
    i = 68  # protocol version, reserved, two AE titles, 32 reserved bytes
    while i + 4 <= len(ac_body):
        item_type, length = ac_body[i], struct.unpack(">H", ac_body[i + 2:i + 4])[0]
        if item_type == 0x21:
            return ac_body[i + 6]
        i += 4 + length
    return None


def echo_failure(pdu_type: int, body: bytes) -> str | None:
    """None if the PDU is a C-ECHO-RSP with status 0x0000 (in one P-DATA-TF), else what it was."""
    if pdu_type != 4:
        return f"after C-ECHO-RQ: {refusal(pdu_type, body)}"
    i = body.find(STATUS)
    if i < 0 or len(body) < i + 10:
        return "C-ECHO response without a status"
    status = struct.unpack_from("<H", body, i + 8)[0]
    return None if status == 0 else f"C-ECHO status 0x{status:04x}"


def association(port: int, rq: bytes, echo: bytes | None = None,
                timeout: float = SOCKET_TIMEOUT, tls=None) -> tuple[float, float, str | None]:
    """Connect, [TLS handshake with the ssl context `tls`,] associate, [C-ECHO], release, close:
    (seconds in all, seconds to the AC, None or what failed)."""
    start = time.perf_counter()
    accepted = 0.0
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = tls.wrap_socket(raw) if tls is not None else raw
            sock.sendall(rq)
            pdu_type, body = read_pdu(sock)
            accepted = time.perf_counter() - start
            if pdu_type != 2:
                return time.perf_counter() - start, accepted, refusal(pdu_type, body)
            if (result := context_result(body)) != 0:
                return time.perf_counter() - start, accepted, f"context result {result}"
            if echo is not None:
                sock.sendall(echo)
                if failure := echo_failure(*read_pdu(sock)):
                    return time.perf_counter() - start, accepted, failure
            sock.sendall(pdus.RELEASE_RQ)
            pdu_type, body = read_pdu(sock)
            if pdu_type != 6:
                return time.perf_counter() - start, accepted, f"after release: {refusal(pdu_type, body)}"
    except OSError as exc:  # includes timeouts and resets
        return time.perf_counter() - start, accepted, type(exc).__name__
    return time.perf_counter() - start, accepted, None


def rejection(port: int, rq: bytes) -> tuple[float, float, str | None]:
    """Connect, send an A-ASSOCIATE-RQ, read the A-ASSOCIATE-RJ, close: (seconds, seconds, None
    or what came instead)."""
    start = time.perf_counter()
    try:
        with socket.create_connection((HOST, port), timeout=SOCKET_TIMEOUT) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(rq)
            pdu_type, body = read_pdu(sock)
    except OSError as exc:
        failure = type(exc).__name__
    else:
        failure = None if pdu_type == 3 else f"not rejected: {refusal(pdu_type, body)}"
    seconds = time.perf_counter() - start
    return seconds, seconds, failure


# --- the cases -----------------------------------------------------------------------------------

def run_case(receiver, step, count: int, parallel: int) -> dict:
    """`count` calls of `step` from `parallel` threads (count/parallel each); wall time, latencies."""
    busy = lab.wait_quiet(QUIET_WAIT)
    per_thread = [count // parallel + (i < count % parallel) for i in range(parallel)]
    latencies: list[tuple[float, float]] = []  # (whole association, up to the AC)
    failures: dict[str, int] = {}
    lock = threading.Lock()
    cpu_before, client_before = lab.tree_cpu_seconds(receiver.pid), lab.own_cpu_seconds()
    start = time.monotonic()
    deadline = start + CASE_DEADLINE

    def worker(n: int):
        for _ in range(n):
            if time.monotonic() > deadline:
                return
            seconds, accepted, failure = step()
            with lock:
                if failure:
                    failures[failure] = failures.get(failure, 0) + 1
                else:
                    latencies.append((seconds, accepted))

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in per_thread]
    for t in threads:
        t.start()
    for t in threads:  # bounded: the deadline plus one socket timeout per step
        t.join(CASE_DEADLINE + 3 * SOCKET_TIMEOUT)
    wall = time.monotonic() - start
    cpu_used = lab.tree_cpu_seconds(receiver.pid) - cpu_before
    client_used = lab.own_cpu_seconds() - client_before  # shows the client is not the bottleneck
    with lock:  # a thread past its join bound could still be adding
        latencies, failures = list(latencies), dict(failures)
    done = len(latencies) + sum(failures.values())
    ms = sorted(1000 * whole for whole, _ in latencies)
    # the split shows which half of the exchange a server spends its time in
    to_ac = [1000 * ac for _, ac in latencies]
    after_ac = [1000 * (whole - ac) for whole, ac in latencies]
    return {
        "requested": count,
        "parallel": parallel,
        "done": done,
        "ok": len(latencies),
        "failures": sum(failures.values()),
        "failure_kinds": failures,
        "stopped_by_deadline": done < count,
        "seconds": round(wall, 3),
        "per_s": round(len(latencies) / wall, 1),
        "median_ms": round(statistics.median(ms), 2) if ms else None,
        "p95_ms": round(ms[math.ceil(0.95 * len(ms)) - 1], 2) if ms else None,  # nearest rank
        "median_to_ac_ms": round(statistics.median(to_ac), 2) if ms else None,
        "median_after_ac_ms": round(statistics.median(after_ac), 2) if ms else None,
        "cpu_s_per_1000": round(1000 * cpu_used / done, 2) if done else None,
        "client_cpu_s_per_1000": round(1000 * client_used / done, 2) if done else None,
        "fds_after": open_fds(receiver.pid),  # a leak shows here
        "machine_busy_before_percent": busy,
    }


def open_fds(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        return len(list(Path(f"/proc/{pid}/fd").iterdir()))
    return None


def kinds(r: dict) -> str:
    return f" {r['failure_kinds']}" if r["failure_kinds"] else ""


def measure(receiver, step, count: int, parallel: int = 1) -> dict:
    for _ in range(WARMUP):
        step()
    r = run_case(receiver, step, count, parallel)
    log(f"   {r['per_s']}/s, median {r['median_ms']} ms, p95 {r['p95_ms']} ms, "
        f"{r['failures']} failed{kinds(r)}, server {r['cpu_s_per_1000']} CPU s/1000")
    return r


def open_silent(port: int, n: int) -> tuple[list[socket.socket], int]:
    """`n` connections started at once, non-blocking (a server slow to accept fills its listen
    queue, and later SYNs wait for retransmission); those established within CONNECT_DEADLINE,
    and how many were not."""
    selector = selectors.DefaultSelector()  # epoll: descriptors above 1024
    for _ in range(n):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex((HOST, port))
        selector.register(sock, selectors.EVENT_WRITE)
    established = []
    deadline = time.monotonic() + CONNECT_DEADLINE
    while selector.get_map() and time.monotonic() < deadline:
        for key, _ in selector.select(deadline - time.monotonic()):
            selector.unregister(key.fileobj)
            if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                established.append(key.fileobj)
            else:
                key.fileobj.close()
    left = [key.fileobj for key in selector.get_map().values()]
    for sock in left:
        sock.close()
    selector.close()
    return established, n - len(established)


def still_open(sock: socket.socket) -> bool:
    """The server has not closed or reset the connection (nothing is ever sent on it)."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def silent_case(receiver, n: int, idle_seconds: float, echo_step) -> dict:
    """`n` silent connections; the receiver's CPU while they sit; then C-ECHO associations."""
    busy = lab.wait_quiet(QUIET_WAIT)
    opened = time.monotonic()
    socks, not_established = open_silent(receiver.port, n)
    try:
        open_seconds = time.monotonic() - opened
        time.sleep(SETTLE)  # the server accepts them all (storescp --fork: a child each)
        cpu_before, started = lab.tree_cpu_seconds(receiver.pid), time.monotonic()
        time.sleep(idle_seconds)
        idle_cpu = lab.tree_cpu_seconds(receiver.pid) - cpu_before
        idle_wall = time.monotonic() - started
        probes, failures = [], {}
        for _ in range(PROBES):
            seconds, _, failure = echo_step()
            if failure:  # a server that cannot answer one is not asked again: each waits PROBE_TIMEOUT
                failures[failure] = failures.get(failure, 0) + 1
                break
            probes.append(1000 * seconds)
        held = sum(still_open(s) for s in socks)
        fds = open_fds(receiver.pid)
    finally:
        for s in socks:
            s.close()
    return {
        "requested": n,
        "established": len(socks),
        "not_established": not_established,
        "open_seconds": round(open_seconds, 2),
        "idle_seconds": round(idle_wall, 2),
        "idle_cpu_percent": round(100 * idle_cpu / idle_wall, 2),
        "probes_ms": [round(ms, 2) for ms in probes],
        "probe_median_ms": round(statistics.median(probes), 2) if probes else None,
        "probe_max_ms": round(max(probes), 2) if probes else None,
        "probe_failures": sum(failures.values()),
        "probe_failure_kinds": failures,
        "still_open_after": held,
        "server_fds_during": fds,
        "machine_busy_before_percent": busy,
    }


def rejected_case(receiver, step, count: int) -> dict:
    """RSS (VmRSS) before `count` rejections and SETTLE seconds after them."""
    for _ in range(WARMUP):
        step()
    time.sleep(SETTLE)
    before = lab.vm_kib(receiver.pid, "VmRSS")
    r = run_case(receiver, step, count, 1)
    time.sleep(SETTLE)
    after = lab.vm_kib(receiver.pid, "VmRSS")
    r.update(rss_before_mb=round(before * 1024 / 1e6, 1), rss_after_mb=round(after * 1024 / 1e6, 1),
             rss_delta_mb=round((after - before) * 1024 / 1e6, 1),
             peak_rss_mb=round(lab.vm_hwm_kib(receiver.pid) * 1024 / 1e6, 1))
    log(f"   {r['per_s']} rejections/s, {r['failures']} not rejected{kinds(r)}; "
        f"RSS {r['rss_before_mb']} -> {r['rss_after_mb']} MB")
    return r


def start(name: str, case: str, root: Path):
    """A fresh receiver for one case: no case inherits another's leftovers (threads, descriptors)."""
    if name == "service":
        return lab.Service(root)
    return lab.StoreSCP(root, fork=name == "storescp_fork", refuse=case == "rejected")


def run_one(case: str, receiver, name: str, args) -> dict:
    port = receiver.port
    rq = pdus.request("BENCH_SCU", receiver.title, max_length=131072)  # encoded once per receiver
    echo = b"".join(pdus.c_echo())
    if case == "sequential":
        return measure(receiver, functools.partial(association, port, rq), args.count)
    if case == "echo":
        return measure(receiver, functools.partial(association, port, rq, echo), args.count)
    if case == "parallel":
        return measure(receiver, functools.partial(association, port, rq), args.count, args.parallel)
    if case == "silent":
        r = silent_case(receiver, args.silent, args.idle_seconds,
                        functools.partial(association, port, rq, echo, PROBE_TIMEOUT))
        log(f"   {r['established']} held; idle CPU {r['idle_cpu_percent']}% of a core; C-ECHO median "
            f"{r['probe_median_ms']} ms, max {r['probe_max_ms']} ms, {r['probe_failure_kinds'] or 'no failure'}; "
            f"{r['still_open_after']} still open after")
        return r
    wrong = rq if name != "service" else pdus.request("BENCH_SCU", WRONG_TITLE, max_length=131072)
    return rejected_case(receiver, functools.partial(rejection, port, wrong), args.rejections)


def show_service_log(receiver) -> None:
    """The service's data dir goes away with it: what it logged other than the usual, now."""
    unusual = [line for line in receiver.app.log().splitlines()
               if " accepted (" not in line and " released;" not in line and "association rejected" not in line]
    log("service log, last lines other than accepted/released/rejected:\n  " + "\n  ".join(unusual[-8:]))


class Bench:
    """Each case against each of its receivers, a fresh receiver every time."""

    def __init__(self, args, cases: list[str]):
        self.args, self.cases = args, cases
        self.results: dict = {}
        self.work = Path(tempfile.mkdtemp(prefix="bench-assoc-"))

    def run(self) -> None:
        for case in self.cases:
            for name in CASES[case]:
                log(f"{RECEIVERS[name]}, {case}")
                with start(name, case, self.work / f"{name}-{case}") as receiver:
                    r = self.results.setdefault(case, {})[name] = run_one(case, receiver, name, self.args)
                    if name == "service" and (r.get("failures") or r.get("probe_failures")):
                        show_service_log(receiver)

    def cleanup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


# --- report --------------------------------------------------------------------------------------

SETUP_ROWS = (("per_s", "associations/s"), ("median_ms", "median latency, ms"), ("p95_ms", "p95 latency, ms"),
              ("median_to_ac_ms", "  median connect+RQ to AC, ms"),
              ("median_after_ac_ms", "  median after the AC (C-ECHO,) release, close, ms"),
              ("failures", "failures"), ("cpu_s_per_1000", "server CPU s per 1000"),
              ("client_cpu_s_per_1000", "client CPU s per 1000"), ("fds_after", "server open fds after"))
ROWS = {
    "sequential": SETUP_ROWS,
    "echo": SETUP_ROWS,
    "parallel": SETUP_ROWS,
    "silent": (("established", "silent connections held"), ("idle_cpu_percent", "CPU while they sit, % of a core"),
               ("probe_median_ms", "C-ECHO association next to them, median ms"),
               ("probe_max_ms", "C-ECHO association next to them, max ms"), ("probe_failures", "C-ECHO failures"),
               ("still_open_after", "silent connections still open at the end"),
               ("server_fds_during", "server open fds while they sit")),
    "rejected": (("per_s", "rejections/s"), ("failures", "not rejected"), ("rss_before_mb", "RSS before, MB"),
                 ("rss_after_mb", "RSS after, MB"), ("rss_delta_mb", "RSS after - before, MB"),
                 ("peak_rss_mb", "peak RSS, MB"), ("fds_after", "server open fds after")),
}


def figure(results: dict, case: str, name: str, key: str):
    """A figure from a record; records from before the cases were added keyed receiver first."""
    node = results.get(case, {}).get(name) or results.get(name, {}).get(case) or {}
    return node.get(key, "-")


def table(results: dict, previous: dict | None) -> str:
    prev = (previous or {}).get("results", {})
    rows = []
    for case, receivers in CASES.items():
        if case not in results:
            continue
        label = f"{results[case]['service'].get('parallel', 1)} parallel" if case == "parallel" else case
        for key, what in ROWS[case]:
            target = TARGETS.get((case, key))
            cells = [figure(results, case, r, key) if r in receivers else "" for r in RECEIVERS]
            cells += [figure(prev, case, r, key) if r in receivers else "" for r in RECEIVERS]
            rows.append((f"{label}: {what}", *("-" if c is None else c for c in cells), lab.target_text(target),
                         lab.verdict(target, results[case]["service"].get(key))))
    head = ("case", *RECEIVERS.values(), *(f"prev {r}" for r in RECEIVERS.values()), "target", "verdict")
    lines = [lab.text_table(head, rows)]
    for case, by_receiver in results.items():
        for r, res in by_receiver.items():
            notes = []
            if kinds := res.get("failure_kinds") or res.get("probe_failure_kinds"):
                notes.append(f"failures {kinds}")
            if res.get("stopped_by_deadline"):
                notes.append(f"stopped by the deadline, {res['done']}/{res['requested']} done")
            if res.get("not_established"):
                notes.append(f"{res['not_established']} of {res['requested']} connections not established "
                             f"within {CONNECT_DEADLINE:g} s")
            if notes:
                lines.append(f"{RECEIVERS[r]} {case}: " + "; ".join(notes))
    return "\n".join(lines)


def raise_nofile() -> int:
    """The client's soft descriptor limit raised to the hard one (the service does the same)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def main(argv=None) -> int:
    global QUIET_WAIT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"a sanity run: {QUICK_COUNTS} unless given")
    parser.add_argument("--count", type=int, help=f"associations in sequential, echo, parallel ({COUNTS['count']})")
    parser.add_argument("--parallel", type=int, default=10, help="client threads in the parallel case")
    parser.add_argument("--silent", type=int, help=f"connections in the silent case ({COUNTS['silent']})")
    parser.add_argument("--idle-seconds", type=float, default=3.0, help="CPU window of the silent case")
    parser.add_argument("--rejections", type=int, help=f"associations in the rejected case ({COUNTS['rejections']})")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated (default: all)")
    parser.add_argument("--wait-quiet", type=float, default=QUIET_WAIT,
                        help="before each case wait up to this many seconds for an idle machine")
    parser.add_argument("--json", help="also write the full results to this file")
    args = parser.parse_args(argv)
    QUIET_WAIT = args.wait_quiet
    for key, value in (QUICK_COUNTS if args.quick else COUNTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if unknown := set(cases) - set(CASES):
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    if min(args.count, args.silent, args.rejections) < 1 or not 1 <= args.parallel <= args.count:
        parser.error("need counts >= 1 and 1 <= parallel <= count")
    if not 0 < args.idle_seconds <= 20:  # the silent connections must outlast it (ARTIM 30 s)
        parser.error("need 0 < --idle-seconds <= 20")
    if "silent" in cases and raise_nofile() < args.silent + 100:
        parser.error(f"the hard RLIMIT_NOFILE is below {args.silent + 100}: fewer --silent")
    if shutil.which("storescp") is None or shutil.which("echoscu") is None:
        parser.error("DCMTK storescp/echoscu not found")

    previous_path = PREVIOUS.with_name("associations-previous-quick.json") if args.quick else PREVIOUS
    previous = lab.load_json(previous_path)
    bench = Bench(args, cases)
    results = bench.results
    record = lab.run_recorded(bench, args.quick) | {
        "count": args.count,
        "parallel": args.parallel,
        "silent": args.silent,
        "rejections": args.rejections,
        "results": results,
        "targets": {f"{case}.{key}": {"op": t[0], "value": t[1], "what": t[3],
                                      "verdict": lab.verdict(t, results[case]["service"].get(key))}
                    for (case, key), t in TARGETS.items() if case in results},
    }
    print()
    if previous:
        print(f"previous: {previous.get('date')}, count {previous.get('count')}, parallel {previous.get('parallel')}, "
              f"silent {previous.get('silent', '-')}, rejections {previous.get('rejections', '-')}")
    print(table(results, previous))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))
    previous_path.parent.mkdir(parents=True, exist_ok=True)
    if previous and previous.get("results"):
        for case, value in previous["results"].items():  # keep the cases this run skipped (--cases)
            if case in CASES:
                record["results"].setdefault(case, value)
    previous_path.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
