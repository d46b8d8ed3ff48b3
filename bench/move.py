#!/usr/bin/env python3
"""C-MOVE throughput benchmark: the appliance next to DCMTK dcmqrscp, same data, same run.

A benchmark script, not a test. One study of 200 CT instances (512x512x16, ~525 KB each) is
moved with DCMTK `movescu` (Study Root, QueryRetrieveLevel=STUDY, StudyInstanceUID) to a DCMTK
`storescp` (move destination DEST, its own empty output directory per move, on /dev/shm so
that the destination's disk is not what is measured), from

  appliance  the real daemon (tests/support/helpers.Appliance: temporary data dir, free ports, sd_notify
             READY), filled once with DCMTK storescu through its STORAGE-SCP; the same data dir
             is then served with DEST in [[remote_aes]]. QUERY-RETRIEVE-SCP answers the C-MOVE,
             STORAGE-SCU (EX_STORE_SCU) sends the sub-operations.
  dcmqrscp   DCMTK dcmqrscp (one process per association, its default: Debian's 3.6.7 segfaults
             after the first association with --single-process) on a storage area where
             dcmqridx registered the same 200 files; DEST in its HostTable.

over two links, each server in turn (the order alternates between repetitions):

  loopback   everything on 127.0.0.1
  100mbit    the servers in one network namespace, storescp and movescu in another, joined by a
             veth pair with tbf 100mbit on both ends (bench/lab.py Link, as bench/store.py case e),
             so the sub-operations cross the shaped link. The plain TCP ceiling of that link is
             measured by iperf3 in the same direction (server namespace -> client namespace)
             before and after the moves; the better of the two is the ceiling.

Every DCMTK process runs with TCP_NODELAY=1 (Debian's build otherwise waits on delayed ACKs).
The time of one move is from starting movescu to its exit (association set-up and release
included); it counts only if the final C-MOVE response is Success and storescp holds all 200
files. MB/s = dataset bytes (the 200 files) / seconds, MB = 10^6 bytes; the table shows the
median of the repetitions and every run. A server whose move fails is reported with movescu's
words and not repeated on that link. Targets: appliance >= 97 % of the measured ceiling on the
100 Mbit/s link, and >= dcmqrscp's MB/s on loopback.

Usage (as root for 100mbit, from the repository):
  .venv/bin/python bench/move.py [--quick] [--reps 5] [--only appliance,dcmqrscp]
                                 [--links loopback,100mbit] [--json out.json] [--previous prev.json]
                                 [--profile /path/to/py-spy --profile-dir DIR]

--quick: 2 repetitions and 5 s iperf3 runs (its figures are kept in move-previous-quick.json).
The previous run's figures (bench/results/move-previous.json, or --previous FILE) are shown
side by side; every run writes its record there. --profile records the appliance with py-spy
during one extra, unmeasured loopback move (summarise with bench/pyspy_summary.py).

Traffic goes only to loopback or to addresses inside the namespaces this script creates;
every subprocess has a timeout; every loop is bounded; namespaces are removed and processes
stopped in `finally`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lab  # noqa: E402  (bench/lab.py: DCMTK processes, quiet wait, py-spy, the 100 Mbit/s link)
from lab import (Link, NetnsPopen, StoreSCP, dcmtk_env, log, profiled, run, terminate,  # noqa: E402
                 wait_for_echo, wait_quiet)
import helpers  # noqa: E402  (tests/support/helpers.py, on the path bench/lab.py sets up)
from datasets import CT, ELE, image, write  # noqa: E402

RESULTS = lab.REPO / "bench" / "results"
PREVIOUS = RESULTS / "move-previous.json"  # --quick runs use move-previous-quick.json
INSTANCES = 200
DEST = "DEST"  # the move destination's AE title (storescp)
MOVE_SCU = "BENCH_MOVE"
DCMQR_TITLE = "DCMQRSCP"
SERVERS = ("appliance", "dcmqrscp")
LINKS = ("loopback", "100mbit")
DIMSE_TIMEOUT = 60  # movescu -td: the longest wait for one C-MOVE response
STEP_TIMEOUT = 600  # no single subprocess may take longer
QUIET_WAIT = 30.0  # before each move, wait up to this long for the shared machine to be idle

TARGETS = {
    "100mbit.percent_ceiling": (">=", 97.0, "appliance ≥97% of the measured 100 Mbit/s ceiling"),
    "loopback.vs_dcmqrscp": (">=", 1.0, "appliance ≥ dcmqrscp MB/s on loopback"),
}


# --- data ------------------------------------------------------------------------------------

class Study:
    """The 200 CT instances of one study and series, written once and given to both servers."""

    def __init__(self, root: Path, n: int = INSTANCES):
        root.mkdir(parents=True)
        self.uid = f"2.25.{uuid.uuid4().int}"
        series = f"2.25.{uuid.uuid4().int}"
        self.files = [write(image(CT, ELE, rows=512, columns=512, bits=16, study_uid=self.uid, series_uid=series,
                                  InstanceNumber=str(i + 1)), root / f"ct-{i:04d}.dcm") for i in range(n)]
        self.bytes = sum(f.stat().st_size for f in self.files)


# --- the two servers -------------------------------------------------------------------------

class ApplianceServer:
    """The daemon: filled once through STORAGE-SCP, then served with DEST in [[remote_aes]]."""

    name = "appliance"

    def __init__(self, root: Path):
        self.root = root
        self.data_dir: Path | None = None
        self.app: helpers.Appliance | None = None

    def fill(self, study: Study) -> dict:
        started = time.monotonic()
        app = helpers.Appliance(self.root / "fill")
        try:
            app.start()
            for part in range(0, len(study.files), 100):  # well below ARG_MAX
                run(["storescu", "-aet", "BENCH_SCU", "-aec", app.storage_title, "-to", "10", "-ts", "60",
                     "127.0.0.1", str(app.storage_port), *map(str, study.files[part:part + 100])],
                    timeout=STEP_TIMEOUT, env=dcmtk_env())
            stored = app.index_rows("SELECT COUNT(*) FROM instance")[0][0]
        finally:
            rc = app.stop(timeout=60)
        if stored != len(study.files) or rc != 0:
            raise RuntimeError(f"fill: {stored} of {len(study.files)} instances indexed, daemon exited {rc}:\n"
                               f"{app.log()[-2000:]}")
        self.data_dir = app.data_dir
        return {"instances": stored, "seconds": round(time.monotonic() - started, 1)}

    @contextlib.contextmanager
    def serving(self, tag: str, dest_host: str, dest_port: int, netns: str | None):
        overrides = {"storage": {"data_dir": str(self.data_dir)},
                     "remote_aes": [{"ae_title": DEST, "host": dest_host, "port": dest_port}]}
        self.app = helpers.Appliance(self.root / f"serve-{tag}", overrides)
        with NetnsPopen(netns):
            self.app.spawn()
        try:
            self.app.wait_notify("READY=1", helpers.READY_TIMEOUT)
            self.title = self.app.config.get("query_retrieve_scp", {}).get("ae_title", "EX_QUERY_SCP")
            self.port = self.app.qr_port
            self.pid = self.app.proc.pid
            yield self
        finally:
            rc = self.app.stop(timeout=60)
            if rc != 0:
                log(f"   appliance exited {rc}; log tail:\n{self.app.log()[-2000:]}")

    def move_summary(self) -> str | None:
        """The daemon's last log line about a C-MOVE (its one-line summary, once C-MOVE exists)."""
        lines = [line for line in self.app.log().splitlines() if "C-MOVE" in line]
        return lines[-1][-400:] if lines else None


class DcmQrServer:
    """DCMTK dcmqrscp on a storage area indexed once with dcmqridx; DEST in its HostTable."""

    name = "dcmqrscp"

    def __init__(self, root: Path):
        self.root = root
        self.area = root / "area"

    def fill(self, study: Study) -> dict:
        started = time.monotonic()
        self.area.mkdir(parents=True)
        # dcmqridx registers the files where they are. DCMTK's compiled limits (see bench/find.py):
        # 500 studies per storage area, an index.dat of at most 32 MiB; one study of 200 fits.
        run(["dcmqridx", str(self.area), *map(str, study.files)], timeout=STEP_TIMEOUT)
        return {"instances": len(study.files), "seconds": round(time.monotonic() - started, 1),
                "index_bytes": (self.area / "index.dat").stat().st_size}

    def config(self, tag: str, port: int, dest_host: str, dest_port: int) -> Path:
        path = self.root / f"dcmqrscp-{tag}.cfg"
        path.write_text(
            f"NetworkTCPPort  = {port}\nMaxPDUSize      = 131072\nMaxAssociations = 16\n\n"
            f"HostTable BEGIN\n{DEST} = ({DEST}, {dest_host}, {dest_port})\nHostTable END\n\n"
            "VendorTable BEGIN\nVendorTable END\n\n"
            f"AETable BEGIN\n{DCMQR_TITLE}  {self.area}  RW  (500, 1024mb)  ANY\nAETable END\n")
        return path

    @contextlib.contextmanager
    def serving(self, tag: str, dest_host: str, dest_port: int, netns: str | None, host: str = "127.0.0.1",
                probe_netns: str | None = None):
        self.title, self.port = DCMQR_TITLE, helpers.free_port()
        cmd = ["dcmqrscp", "-c", str(self.config(tag, self.port, dest_host, dest_port)), str(self.port)]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        log_path = self.root / f"dcmqrscp-{tag}.log"
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(cmd, env=dcmtk_env(), stdout=out, stderr=out)
            try:
                wait_for_echo(proc, self.title, host, self.port, log_path, probe_netns)
                self.pid = proc.pid
                yield self
            finally:
                terminate(proc)

    def move_summary(self) -> None:
        return None


# --- one move --------------------------------------------------------------------------------

FINAL = re.compile(r"Received Final Move Response \(([^)]*)\)")


def movescu(server, study: Study, host: str, netns: str | None) -> tuple[subprocess.CompletedProcess | None, float]:
    """The timed part: movescu from spawn to exit. (None, seconds) if it had to be killed."""
    cmd = ["movescu", "-v", "-S", "-aet", MOVE_SCU, "-aec", server.title, "-aem", DEST,
           "-to", "10", "-ta", "30", "-td", str(DIMSE_TIMEOUT),
           "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study.uid}", host, str(server.port)]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=STEP_TIMEOUT, env=dcmtk_env())
    except subprocess.TimeoutExpired:  # subprocess.run has killed it
        return None, time.monotonic() - start
    return proc, time.monotonic() - start


def received(dest: StoreSCP, want: int) -> int:
    """Files in storescp's directory; bounded wait for a last file being closed."""
    deadline = time.monotonic() + 2
    count = dest.stored()
    while count < want and time.monotonic() < deadline:
        time.sleep(0.05)
        count = dest.stored()
    return count


def move_once(server, study: Study, dest_root: Path, dest_port: int, link: Link | None) -> dict:
    """A fresh storescp (DEST), one timed movescu, then count what arrived."""
    netns_cli = link.cli if link else None
    dest_host = link.CLIENT_IP if link else "127.0.0.1"
    server_host = link.SERVER_IP if link else "127.0.0.1"
    with StoreSCP(dest_root, netns=netns_cli, bind=dest_host, port=dest_port, title=DEST) as dest:
        os.sync()  # the previous move's files are written back before, not during, this one
        busy = wait_quiet(QUIET_WAIT)
        proc, seconds = movescu(server, study, server_host, netns_cli)
        got = received(dest, len(study.files))
    output = (proc.stdout + proc.stderr) if proc else ""
    final = FINAL.findall(output)
    status = final[-1] if final else None
    ok = proc is not None and proc.returncode == 0 and status == "Success" and got == len(study.files)
    result = {
        "ok": ok,
        "seconds": round(seconds, 3),
        "bytes": study.bytes,
        "mbps": round(study.bytes / seconds / 1e6, 2) if ok else None,
        "final_status": status,
        "movescu_rc": proc.returncode if proc else f"killed after {STEP_TIMEOUT} s",
        "received": got,
        "missing": len(study.files) - got,
        "machine_busy_before_percent": busy,
    }
    if summary := server.move_summary():
        result["log_summary"] = summary
    if not ok:
        tail = [line for line in output.splitlines() if not line.startswith("I: Received Move Response")]
        result["error"] = (f"final status {status}, movescu exit {result['movescu_rc']}, "
                           f"{got}/{len(study.files)} received; movescu: " + " | ".join(tail[-6:]))
    return result


def median_run(runs: list[dict]) -> dict:
    """The repetitions' summary: median MB/s of the successful runs, every run kept."""
    good = sorted((r for r in runs if r["ok"]), key=lambda r: r["mbps"])
    out = {"runs": runs, "runs_mbps": [r["mbps"] for r in runs], "ok_runs": len(good)}
    if good:
        out.update(mbps=round(statistics.median(r["mbps"] for r in good), 2),
                   seconds=round(statistics.median(r["seconds"] for r in good), 3),
                   log_summary=good[-1].get("log_summary"))
    failed = [r for r in runs if not r["ok"]]
    if failed:
        out["error"] = failed[0]["error"]
    return out


# --- the benchmark ---------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.results: dict = {}
        self.work = Path(tempfile.mkdtemp(prefix="bench-move-", dir=args.tmpdir))
        # The destination writes to memory: its disk's write-back is not what is measured, and
        # on a shared VM it made single moves vary by a factor of two.
        self.dest_work = Path(tempfile.mkdtemp(prefix="bench-move-dest-", dir=args.dest_dir))
        self.servers = {}
        self.n = 0

    def tmp(self, name: str, under: Path | None = None) -> Path:
        self.n += 1
        return (under or self.work) / f"{self.n:03d}-{name}"

    def fill(self, study: Study):
        """Give both servers the study; a server that cannot take it is reported and left out."""
        fills = {}
        for cls in (ApplianceServer, DcmQrServer):
            if cls.name not in self.args.only:
                continue
            server = cls(self.work / cls.name)
            try:
                fills[cls.name] = server.fill(study)
                self.servers[cls.name] = server
                log(f"   {cls.name}: {fills[cls.name]}")
            except Exception as exc:  # report it, keep the other server's figures
                fills[cls.name] = {"error": f"{type(exc).__name__}: {exc}"[-3000:]}
                log(f"   {cls.name}: FILL FAILED: {fills[cls.name]['error']}")
        self.results["fill"] = fills

    def serve(self, stack: contextlib.ExitStack, name: str, server, tag: str, dest_port: int,
              link: Link | None) -> bool:
        kw = {"tag": tag, "dest_host": link.CLIENT_IP if link else "127.0.0.1", "dest_port": dest_port,
              "netns": link.srv if link else None}
        if name == "dcmqrscp" and link:  # probe across the link, as movescu will reach it
            kw.update(host=link.SERVER_IP, probe_netns=link.cli)
        try:
            stack.enter_context(server.serving(**kw))
            return True
        except Exception as exc:
            self.results[tag][name] = {"error": f"could not start: {type(exc).__name__}: {exc}"[-3000:]}
            log(f"   {name}: {self.results[tag][name]['error']}")
            return False

    def moves(self, tag: str, study: Study, link: Link | None = None):
        """Every server up at once; --reps moves each, alternating which goes first."""
        dest_port = helpers.free_port()
        self.results[tag] = {}
        with contextlib.ExitStack() as stack:
            up = {name: server for name, server in self.servers.items()
                  if self.serve(stack, name, server, tag, dest_port, link)}
            runs: dict[str, list] = {name: [] for name in up}
            for rep in range(self.args.reps):
                order = list(up) if rep % 2 == 0 else list(reversed(up))
                for name in order:
                    if runs[name] and not runs[name][-1]["ok"]:
                        continue  # failed once on this link: not repeated
                    try:
                        r = move_once(up[name], study, self.tmp(f"dest-{tag}-{name}", self.dest_work), dest_port, link)
                    except Exception as exc:  # e.g. storescp could not start: that server's run failed
                        r = {"ok": False, "mbps": None, "error": f"{type(exc).__name__}: {exc}"[-3000:]}
                    runs[name].append(r)
                    log(f"   {tag} {name} #{rep + 1}: " + (f"{r['mbps']} MB/s in {r['seconds']} s" if r["ok"]
                                                          else f"FAILED: {r['error']}"))
            if tag == "loopback" and self.args.profile and "appliance" in up:
                self.profile(up["appliance"], study, dest_port)
        for name, r in runs.items():
            self.results[tag][name] = median_run(r)

    def profile(self, server: ApplianceServer, study: Study, dest_port: int):
        out = Path(self.args.profile_dir) / "move-loopback.txt"
        log(f"   one more appliance move under py-spy -> {out}")
        with profiled(self.args.profile, server.pid, out):
            r = move_once(server, study, self.tmp("dest-profile", self.dest_work), dest_port, None)
        self.results["profile"] = {"file": str(out), "move": r}

    def network(self, study: Study):
        with Link(prefix="bmove") as link:
            secs = 5 if self.args.quick else 10
            wait_quiet(QUIET_WAIT)
            before = link.iperf(secs, reverse=True)
            log(f"   iperf3 ceiling (server -> client namespace) {before['mbit_s']} Mbit/s = {before['mbps']} MB/s")
            self.moves("100mbit", study, link)
            wait_quiet(QUIET_WAIT)
            after = link.iperf(secs, reverse=True)
            log(f"   iperf3 again {after['mbit_s']} Mbit/s")
            net = self.results["100mbit"]
            net["namespaces"] = [link.srv, link.cli]
        # the better of the two iperf3 runs (tbf on a busy 2-core guest wobbles), as bench/store.py
        net["iperf3"] = dict(max(before, after, key=lambda r: r["mbps"]),
                             runs_mbit_s=[before["mbit_s"], after["mbit_s"]])
        for name in SERVERS:
            if net.get(name, {}).get("mbps"):
                net[name]["percent_ceiling"] = round(100 * net[name]["mbps"] / net["iperf3"]["mbps"], 1)

    def run(self):
        log(f"generating {INSTANCES} CT 512x512 instances in {self.work}")
        study = Study(self.work / "data")
        self.results["data"] = {"instances": len(study.files), "bytes": study.bytes, "study_uid": study.uid}
        log(f"   {study.bytes / 1e6:.1f} MB; filling the servers")
        self.fill(study)
        if "loopback" in self.args.links:
            log(f"loopback: {self.args.reps} moves per server")
            self.moves("loopback", study)
        if "100mbit" in self.args.links:
            log(f"100mbit: two namespaces, veth + tbf; {self.args.reps} moves per server")
            try:
                self.network(study)
            except Exception as exc:  # the namespaces are gone (Link's finally); keep loopback's figures
                self.results["100mbit"] = {"error": f"{type(exc).__name__}: {exc}"[-3000:]}
                log(f"   100mbit FAILED: {self.results['100mbit']['error']}")

    def cleanup(self):
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.rmtree(self.dest_work, ignore_errors=True)


# --- report ----------------------------------------------------------------------------------

def machine() -> dict:
    m = lab.machine()
    for tool in ("dcmqrscp", "movescu"):
        text = run([tool, "--version"], check=False).stdout.strip().splitlines()
        m["tools"][tool] = text[0] if text else "?"
    return m


def flatten(results: dict) -> dict:
    """The figures the targets and the previous-run comparison talk about."""
    flat = {}
    for tag in LINKS:
        part = results.get(tag) or {}
        for name in SERVERS:
            if (part.get(name) or {}).get("mbps") is not None:
                flat[f"{tag}.{name}.mbps"] = part[name]["mbps"]
            if (part.get(name) or {}).get("percent_ceiling") is not None:
                flat[f"{tag}.{name}.percent_ceiling"] = part[name]["percent_ceiling"]
    if "iperf3" in (results.get("100mbit") or {}):
        flat["100mbit.ceiling_mbps"] = results["100mbit"]["iperf3"]["mbps"]
    if "100mbit.appliance.percent_ceiling" in flat:
        flat["100mbit.percent_ceiling"] = flat["100mbit.appliance.percent_ceiling"]
    if "loopback.appliance.mbps" in flat and "loopback.dcmqrscp.mbps" in flat:
        flat["loopback.vs_dcmqrscp"] = round(flat["loopback.appliance.mbps"] / flat["loopback.dcmqrscp.mbps"], 3)
    return flat


def verdict(key: str, flat: dict, results: dict) -> str:
    op, want, _ = TARGETS[key]
    tag = key.split(".")[0]
    if key not in flat:
        app = (results.get(tag) or {}).get("appliance")
        return "NOT met (appliance failed)" if app and app.get("error") and not app.get("mbps") else ""
    return "met" if {">=": flat[key] >= want, "<=": flat[key] <= want}[op] else "NOT met"


def table(results: dict, previous: dict | None) -> str:
    flat = flatten(results)
    prev = flatten(previous.get("results") or {}) if previous else {}
    head = ("link", "appliance", "dcmqrscp", "prev appliance", "prev dcmqrscp", "target", "verdict", "unit")
    rows = []

    def cell(v):
        return "-" if v is None else v

    def runs(part: dict | None) -> str:
        if not part:
            return "-"
        if "runs" not in part:
            return "FAILED" if part.get("error") else "-"
        return ", ".join("fail" if v is None else str(v) for v in part["runs_mbps"])

    n = (results.get("data") or {}).get("instances", INSTANCES)
    for tag in LINKS:
        part = results.get(tag)
        if part is None:
            continue
        a, d = part.get("appliance"), part.get("dcmqrscp")
        label = "loopback" if tag == "loopback" else "100 Mbit/s"
        if tag == "100mbit" and "iperf3" in part:
            ip = part["iperf3"]
            rows.append((f"{label} iperf3 ceiling ({ip['mbit_s']} Mbit/s)", ip["mbps"], "",
                         cell(prev.get("100mbit.ceiling_mbps")), "", "", "", "MB/s"))
        rows.append((f"{label}, {n} CT, median", cell((a or {}).get("mbps")), cell((d or {}).get("mbps")),
                     cell(prev.get(f"{tag}.appliance.mbps")), cell(prev.get(f"{tag}.dcmqrscp.mbps")),
                     "", "", "MB/s"))
        rows.append((f"{label}, runs", runs(a), runs(d), "", "", "", "", "MB/s"))
        if tag == "100mbit":
            key = "100mbit.percent_ceiling"
            rows.append((f"{label}, % of ceiling", cell((a or {}).get("percent_ceiling")),
                         cell((d or {}).get("percent_ceiling")), cell(prev.get("100mbit.appliance.percent_ceiling")),
                         cell(prev.get("100mbit.dcmqrscp.percent_ceiling")), "≥97", verdict(key, flat, results), "%"))
        else:
            key = "loopback.vs_dcmqrscp"
            rows.append((f"{label}, appliance / dcmqrscp", cell(flat.get(key)), "", cell(prev.get(key)), "",
                         "≥1", verdict(key, flat, results), "x"))
    if not rows:
        return "(no link measured)"
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(head, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    data = results.get("data") or {}
    lines.append(f"MB/s = {data.get('bytes', 0) / 1e6:.1f} MB (the {n} files) / seconds from starting movescu "
                 "to its exit; a run counts if the final response is Success and storescp holds every file")
    for name, fill in (results.get("fill") or {}).items():
        if "error" in fill:
            lines.append(f"{name} fill FAILED: {fill['error'][:600]}")
    for tag in LINKS:
        if (results.get(tag) or {}).get("error"):
            lines.append(f"{tag} FAILED: {results[tag]['error'][:600]}")
        for name in SERVERS:
            part = (results.get(tag) or {}).get(name) or {}
            if part.get("error"):
                lines.append(f"{tag} {name} FAILED: {part['error'][:600]}")
            if part.get("log_summary"):
                lines.append(f"{tag} {name} log: {part['log_summary']}")
    busy = [r["machine_busy_before_percent"] for tag in LINKS for name in SERVERS
            for r in ((results.get(tag) or {}).get(name) or {}).get("runs", [])
            if r.get("machine_busy_before_percent") is not None]
    if busy:
        lines.append(f"machine busy (all CPUs) just before each move: median {statistics.median(busy)}%, "
                     f"max {max(busy)}% (other processes share this machine)")
    return "\n".join(lines)


def main(argv=None) -> int:
    global QUIET_WAIT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 repetitions, 5 s iperf3 runs (sanity run)")
    parser.add_argument("--reps", type=int, default=None, help="moves per server and link (default 5, quick 2)")
    parser.add_argument("--only", default="appliance,dcmqrscp", help="appliance, dcmqrscp or both (default)")
    parser.add_argument("--links", default="loopback,100mbit", help="loopback, 100mbit or both (default)")
    parser.add_argument("--json", help="also write the full results to this file")
    parser.add_argument("--previous", help="a previous run's JSON to show side by side "
                                           "(default: bench/results/move-previous[-quick].json)")
    parser.add_argument("--tmpdir", default=None, help="where the servers' data goes (default: $TMPDIR or /tmp)")
    parser.add_argument("--dest-dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                        help="where the destination storescp writes (default: /dev/shm, a tmpfs)")
    parser.add_argument("--wait-quiet", type=float, default=QUIET_WAIT,
                        help="before each move wait up to this many seconds for an idle machine")
    parser.add_argument("--profile", help="path of a py-spy binary: record one extra appliance move on loopback")
    parser.add_argument("--profile-dir", default=str(RESULTS / "profile"), help="where py-spy raw stacks go")
    args = parser.parse_args(argv)
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    args.links = {s.strip() for s in args.links.split(",") if s.strip()}
    if unknown := (args.only - set(SERVERS)) | (args.links - set(LINKS)):
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    args.reps = args.reps or (2 if args.quick else 5)
    if not 1 <= args.reps <= 50:
        parser.error("--reps: 1 to 50")
    if "100mbit" in args.links and os.geteuid() != 0:
        parser.error("the 100mbit link needs root (network namespaces); or --links loopback")
    for tool in ("storescu", "storescp", "echoscu", "movescu", "dcmqrscp", "dcmqridx", "iperf3", "ip", "tc",
                 "ethtool"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} not found")
    QUIET_WAIT = args.wait_quiet

    previous_path = PREVIOUS.with_name("move-previous-quick.json") if args.quick else PREVIOUS
    previous = lab.load_json(Path(args.previous or previous_path))
    bench = Bench(args)
    record = lab.run_recorded(bench, args.quick, machine)
    flat = flatten(bench.results)
    record |= {
        "reps": args.reps,
        "results": bench.results,
        "figures": flat,
        "targets": {k: {"op": v[0], "value": v[1], "what": v[2], "verdict": verdict(k, flat, bench.results)}
                    for k, v in TARGETS.items()},
    }
    print()
    if previous:
        print(f"previous: {previous.get('date')} ({'quick' if previous.get('quick') else 'full'}, "
              f"{args.previous or previous_path})")
    print(table(bench.results, previous))
    print(f"run time {record['seconds']} s")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2, default=str))
    RESULTS.mkdir(parents=True, exist_ok=True)
    own_previous = lab.load_json(previous_path)
    for part, value in ((own_previous or {}).get("results") or {}).items():  # keep what --only/--links skipped
        mine = record["results"].setdefault(part, value)
        if part in LINKS and mine is not value:
            for name in SERVERS:
                if name in value:
                    mine.setdefault(name, value[name])
    previous_path.write_text(json.dumps(record, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
