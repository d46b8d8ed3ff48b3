#!/usr/bin/env python3
"""Association set-up benchmark: accept and release N associations, the appliance next to DCMTK storescp.

A benchmark script, not a test. It starts the real daemon through bench/store.py's Service
(tests/helpers.Appliance: temporary data dir, free ports, sd_notify READY) and DCMTK storescp
through bench/store.py's StoreSCP (TCP_NODELAY=1, --max-pdu 131072, free loopback port), once
--single-process and once --fork, then opens and releases --count associations against each,
(1) one after the other and (2) from --parallel client threads at once (count/parallel each). The client is a raw socket sending one pre-encoded
A-ASSOCIATE-RQ (Verification, Implicit VR LE) and an A-RELEASE-RQ, so the figures are the
servers' cost, not a DICOM toolkit's on the client side. See docs/performance.md.

Usage (as root, from the repository):
  .venv/bin/python bench/associations.py [--count 1000] [--parallel 10] [--json out.json]

Traffic goes only to 127.0.0.1; every socket has a timeout and every case a deadline.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
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

import store  # noqa: E402  (bench/store.py: receivers, CPU accounting, machine description)
import pdus  # noqa: E402  (tests/pdus.py, on the path bench/store.py sets up: the encoded RQ, a PDU reader)

log = store.log
PREVIOUS = store.RESULTS / "associations-previous.json"
HOST = "127.0.0.1"
SOCKET_TIMEOUT = 10.0
CASE_DEADLINE = 300.0
WARMUP = 20  # the first associations pay for lazy imports and first-use caches; not measured
QUIET_WAIT = 30.0  # before each case, wait up to this long for the shared machine to be idle
PDU_NAMES = {1: "RQ", 2: "AC", 3: "RJ", 4: "P-DATA", 5: "RELEASE-RQ", 6: "RELEASE-RP", 7: "ABORT"}


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


def one_association(port: int, rq: bytes) -> tuple[float, float, str | None]:
    """Connect, associate, release, close: (seconds in all, seconds to the AC, None or what failed)."""
    start = time.perf_counter()
    accepted = 0.0
    try:
        with socket.create_connection((HOST, port), timeout=SOCKET_TIMEOUT) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(rq)
            pdu_type, body = read_pdu(sock)
            accepted = time.perf_counter() - start
            if pdu_type != 2:
                return time.perf_counter() - start, accepted, refusal(pdu_type, body)
            if (result := context_result(body)) != 0:
                return time.perf_counter() - start, accepted, f"context result {result}"
            sock.sendall(pdus.RELEASE_RQ)
            pdu_type, body = read_pdu(sock)
            if pdu_type != 6:
                return time.perf_counter() - start, accepted, f"after release: {refusal(pdu_type, body)}"
    except OSError as exc:  # includes timeouts and resets
        return time.perf_counter() - start, accepted, type(exc).__name__
    return time.perf_counter() - start, accepted, None


def run_case(receiver, rq: bytes, count: int, parallel: int) -> dict:
    """`count` associations from `parallel` threads (count/parallel each); wall time, latencies."""
    busy = store.wait_quiet(QUIET_WAIT)
    per_thread = [count // parallel + (i < count % parallel) for i in range(parallel)]
    latencies: list[tuple[float, float]] = []  # (whole association, up to the AC)
    failures: dict[str, int] = {}
    lock = threading.Lock()
    cpu_before, client_before = store.cpu_seconds(receiver.pid), store.own_cpu_seconds()
    start = time.monotonic()
    deadline = start + CASE_DEADLINE

    def worker(n: int):
        for _ in range(n):
            if time.monotonic() > deadline:
                return
            seconds, accepted, failure = one_association(receiver.port, rq)
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
    cpu_used = store.cpu_seconds(receiver.pid) - cpu_before
    client_used = store.own_cpu_seconds() - client_before  # shows the client is not the bottleneck
    with lock:  # a thread past its join bound could still be adding
        latencies, failures = list(latencies), dict(failures)
    done = len(latencies) + sum(failures.values())
    ms = sorted(1000 * whole for whole, _ in latencies)
    # the split shows which half of the exchange a server spends its time in
    to_ac = [1000 * ac for _, ac in latencies]
    release = [1000 * (whole - ac) for whole, ac in latencies]
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
        "median_release_ms": round(statistics.median(release), 2) if ms else None,
        "cpu_s_per_1000": round(1000 * cpu_used / done, 2) if done else None,
        "client_cpu_s_per_1000": round(1000 * client_used / done, 2) if done else None,
        "fds_after": len(list(Path(f"/proc/{receiver.pid}/fd").iterdir())),  # a leak shows here
        "machine_busy_before_percent": busy,
    }


def measure(receiver, rq: bytes, count: int, parallel: int) -> dict:
    for _ in range(WARMUP):
        one_association(receiver.port, rq)
    r = run_case(receiver, rq, count, parallel)
    log(f"   {r['per_s']} assoc/s, median {r['median_ms']} ms, p95 {r['p95_ms']} ms, "
        f"{r['failures']} failed {r['failure_kinds'] or ''}, server {r['cpu_s_per_1000']} CPU s/1000")
    return r


# --- report ----------------------------------------------------------------------------------

ROWS = (("per_s", "associations/s"), ("median_ms", "median latency, ms"), ("p95_ms", "p95 latency, ms"),
        ("median_to_ac_ms", "  median connect+RQ to AC, ms"),
        ("median_release_ms", "  median release+close, ms"),
        ("failures", "failures"), ("cpu_s_per_1000", "server CPU s per 1000"),
        ("client_cpu_s_per_1000", "client CPU s per 1000"), ("fds_after", "server open fds after"))
RECEIVERS = {"service": "service", "storescp": "storescp", "storescp_fork": "storescp --fork"}


def table(results: dict, previous: dict | None) -> str:
    prev = (previous or {}).get("results", {})
    head = ("case", *RECEIVERS.values(), "prev service", "prev storescp", "prev --fork")
    rows = []
    for case in ("sequential", "parallel"):
        p = results["service"][case]["parallel"]
        label = "sequential" if p == 1 else f"{p} parallel"
        for key, what in ROWS:
            cells = [results[r][case][key] for r in RECEIVERS]
            cells += [prev.get(r, {}).get(case, {}).get(key, "-") for r in RECEIVERS]
            rows.append((f"{label}: {what}", *("-" if c is None else c for c in cells)))
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)) for r in rows]
    for r in RECEIVERS:
        for case in ("sequential", "parallel"):
            res = results[r][case]
            if res["failure_kinds"] or res["stopped_by_deadline"]:
                lines.append(f"{RECEIVERS[r]} {case}: {res['done']}/{res['requested']} done, "
                             f"failures {res['failure_kinds']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000, help="associations per case (default 1000)")
    parser.add_argument("--parallel", type=int, default=10, help="client threads in the parallel case")
    parser.add_argument("--json", help="also write the full results to this file")
    args = parser.parse_args(argv)
    if args.count < 1 or not 1 <= args.parallel <= args.count:
        parser.error("need count >= 1 and 1 <= parallel <= count")
    if shutil.which("storescp") is None or shutil.which("echoscu") is None:
        parser.error("DCMTK storescp/echoscu not found")

    previous = None
    with contextlib.suppress(ValueError, OSError):
        previous = json.loads(PREVIOUS.read_text())
    # The one A-ASSOCIATE-RQ every association sends (Verification, Implicit VR LE), encoded once;
    # storescp accepts any called title.
    rq = pdus.request("BENCH_SCU", store.SCP_TITLE, max_length=131072)
    work = Path(tempfile.mkdtemp(prefix="bench-assoc-"))
    started = datetime.datetime.now(datetime.timezone.utc)
    try:
        receivers = {
            "service": lambda d: store.Service(d, store.CF08_BUFFER),
            "storescp": lambda d: store.StoreSCP(d),  # --single-process: one association at a time
            "storescp_fork": lambda d: store.StoreSCP(d, fork=True),  # as bench/store.py case b
        }
        results = {name: {} for name in receivers}
        # a fresh receiver per case: no case inherits another's leftovers (threads, descriptors)
        for case, parallel in (("sequential", 1), ("parallel", args.parallel)):
            for name, start in receivers.items():
                log(f"{RECEIVERS[name]}, {case}: {args.count} associations from {parallel} client thread(s)")
                with start(work / f"{name}-{case}") as receiver:
                    r = results[name][case] = measure(receiver, rq, args.count, parallel)
                    if name == "service" and r["failures"]:  # its data dir goes away: show why now
                        unusual = [line for line in receiver.app.log().splitlines()
                                   if " accepted (" not in line and " released;" not in line]
                        log("service log, last lines other than accepted/released:\n  " + "\n  ".join(unusual[-5:]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record = {
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "count": args.count,
        "parallel": args.parallel,
        "machine": store.machine(),
        "results": results,
    }
    print()
    if previous:
        print(f"previous: {previous.get('date')}, count {previous.get('count')}, parallel {previous.get('parallel')}")
    print(table(results, previous))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))
    store.RESULTS.mkdir(parents=True, exist_ok=True)
    PREVIOUS.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
