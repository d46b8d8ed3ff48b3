"""Shared by the benchmark scripts: the receivers under test (the appliance, DCMTK storescp,
Orthanc), CPU and memory accounting, the quiet-machine wait, py-spy, result tables, and the
100 Mbit/s link (two network namespaces, veth, tbf) with its iperf3 ceiling.

bench/store.py, bench/associations.py and bench/move.py import these; bench/find.py reaches
them as `store.X`. Everything here runs subprocesses with timeouts
and stays on loopback or inside the namespaces it creates.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "support"))

import helpers  # noqa: E402  (tests/support/helpers.py: free ports; the daemon's Popen, see NetnsPopen)
from helpers import terminate  # noqa: E402  (also for the scripts, as lab.terminate)

DCMTK_PDU = "131072"  # storescp advertises the same maximum PDU as the service (CF-01/D-1)
CF08_BUFFER = 1342177  # the service's default network.socket_buffer_size (CF-08)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def dcmtk_env() -> dict:
    return {**os.environ, "TCP_NODELAY": "1"}


def run(cmd: list[str], timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc


# --- what a process uses ---------------------------------------------------------------------

def vm_kib(pid: int, field: str = "VmHWM") -> int | None:
    """A memory figure of /proc/<pid>/status in KiB: VmHWM (peak RSS) or VmRSS (now)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def vm_hwm_kib(pid: int) -> int | None:
    return vm_kib(pid, "VmHWM")


def cpu_seconds(pid: int) -> float | None:
    """utime+stime of the process (all threads) plus reaped children (storescp --fork)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float | None:
    """cpu_seconds of `pid` and of its children not reaped yet (storescp --fork: one per connection)."""
    total = cpu_seconds(pid)
    if total is None:
        return None
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                total += tree_cpu_seconds(int(child)) or 0.0
    return total


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (all CPUs, everything but idle/iowait)."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """This script plus its reaped children (the storescu senders, ip netns exec)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def machine_busy(interval: float = 0.5) -> float:
    """Percent of all CPUs busy (anything, not only us) over `interval` seconds, from /proc/stat."""
    def sample():
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return v[3] + v[4], sum(v)  # idle + iowait, total
    i0, t0 = sample()
    time.sleep(interval)
    i1, t1 = sample()
    return round(100 * (1 - (i1 - i0) / max(t1 - t0, 1)), 1)


def wait_quiet(max_wait: float, threshold: float = 15.0) -> float:
    """The machine is shared (CI, other sessions' tests): wait, bounded, until it is idle."""
    deadline = time.monotonic() + max_wait
    busy = machine_busy()
    while busy > threshold and time.monotonic() < deadline:
        busy = machine_busy(1.0)
    if busy > threshold:
        log(f"   warning: machine {busy}% busy before this measurement (other processes)")
    return busy


# --- receivers: one started fresh for each measurement ---------------------------------------

def count_files(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0


class Receiver:
    """What the scripts need of a DICOM receiver: where it listens, its PID, what it stored."""

    kind = "?"
    client_netns: str | None = None  # where a client must run to reach host:port; None: anywhere here
    hwm_idle: int | None = None  # VmHWM (KiB) once ready, before any load

    def __init__(self, root: Path, netns: str | None, bind: str | None, port: int | None, title: str):
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.netns = netns  # where the receiver runs
        self.host = bind or "127.0.0.1"
        self.port = port or helpers.free_port()
        self.title = title

    def stored(self) -> int:
        raise NotImplementedError


class Service(Receiver):
    """The appliance (`python -m appliance serve` through tests/support/helpers.Appliance): default
    configuration, fresh data dir, free ports, ready at sd_notify READY."""

    kind = "service"

    def __init__(self, root: Path, buffer_size: int = CF08_BUFFER, netns: str | None = None,
                 bind: str | None = None, env: dict | None = None, config: dict | None = None):
        network = {"socket_buffer_size": buffer_size, **({"bind_address": bind} if bind else {})}
        self.app = helpers.Appliance(root, helpers.merge({"network": network}, config or {}), env=env or {})
        super().__init__(root, netns, bind, self.app.storage_port, self.app.storage_title)

    def __enter__(self):
        try:
            with NetnsPopen(self.netns):
                self.app.start()
        except BaseException:  # __exit__ will not run: stop it here
            self.app.stop(timeout=10)
            raise
        self.pid = self.app.proc.pid
        self.hwm_idle = vm_hwm_kib(self.pid)
        return self

    def stored(self) -> int:
        return self.app.index_rows("SELECT COUNT(*) FROM instance")[0][0]

    def __exit__(self, *exc):
        rc = self.app.stop(timeout=60)
        if rc != 0:
            log(f"service exited {rc}; log tail:\n{self.app.log()[-3000:]}")
        shutil.rmtree(self.root, ignore_errors=True)


class ServerProcess(Receiver):
    """A server binary started from a command line with TCP_NODELAY=1 in its environment (the
    DCMTK it is built on leaves Nagle on otherwise), ready once it answers C-ECHO, stopped and
    its directory removed on exit."""

    ready_when_rejecting = False  # a server that refuses every association is ready once it says so
    echo_options: tuple[str, ...] = ()  # echoscu's options for the readiness probe (TLS)

    def command(self) -> list[str]:
        raise NotImplementedError

    def setup(self, stack: contextlib.ExitStack) -> None:
        """What the start needs (configuration, a namespace); `stack` undoes it after the stop."""

    def __enter__(self):
        with contextlib.ExitStack() as stack:
            stack.callback(shutil.rmtree, self.root, ignore_errors=True)
            self.setup(stack)
            log_path = self.root / f"{self.kind}.log"
            out = stack.enter_context(open(log_path, "wb"))
            cmd = self.command()
            if self.netns:  # ip netns exec execs: the PID is the server's
                cmd = ["ip", "netns", "exec", self.netns, *cmd]
            self.proc = subprocess.Popen(cmd, env=dcmtk_env(), stdout=out, stderr=out)
            stack.callback(terminate, self.proc)
            self.pid = self.proc.pid
            wait_for_echo(self.proc, self.title, self.host, self.port, log_path, self.netns,
                          self.ready_when_rejecting, self.echo_options)
            self.hwm_idle = vm_hwm_kib(self.pid)
            self._cleanup = stack.pop_all()
        return self

    def __exit__(self, *exc):
        self._cleanup.close()


class StoreSCP(ServerProcess):
    """DCMTK storescp writing to a temporary directory (no fsync, no index); `tls`: its +tls
    options (key, certificate, trusted CA), and those of a client it trusts for the probe."""

    kind = "storescp"

    def __init__(self, root: Path, fork: bool = False, netns: str | None = None, bind: str | None = None,
                 port: int | None = None, title: str = "STORESCP", refuse: bool = False,
                 tls: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())):
        super().__init__(root, netns, bind, port, title)
        self.out = root / "out"
        self.out.mkdir()
        self.fork = fork
        self.ready_when_rejecting = refuse  # --refuse: every association is rejected (it checks no title)
        self.tls_options, self.echo_options = tls

    def command(self) -> list[str]:
        return ["storescp", *self.tls_options, "-od", str(self.out), "-pdu", DCMTK_PDU, "-aet", self.title, "-dhl",
                *(["--refuse"] if self.ready_when_rejecting else []),
                "--fork" if self.fork else "--single-process", str(self.port)]

    def stored(self) -> int:
        return count_files(self.out)


class Orthanc(ServerProcess):
    """Debian's Orthanc with a minimal configuration: DICOM only (no HTTP server, no plugins, no
    Lua), 128 KiB PDUs like the others, the called AE title checked, every storage class and
    uncompressed transfer syntax storescu proposes accepted (its defaults). It fsyncs each stored
    file (SyncStorageArea, its default since 1.7.4, kept and written out) and keeps a SQLite index
    in WAL mode with synchronous=NORMAL, so it is the durable peer of the service; storescp is not.

    Orthanc 1.10 has no setting for the address its DICOM port listens on, so unless it is given
    a namespace (case e) it runs in one of its own with only loopback up, and clients join it."""

    kind = "orthanc"

    def __init__(self, root: Path, netns: str | None = None, bind: str | None = None, title: str = "ORTHANC"):
        super().__init__(root, netns, bind, None, title)
        self.storage = root / "storage"

    def setup(self, stack: contextlib.ExitStack) -> None:
        if self.netns is None:
            self.netns = self.client_netns = stack.enter_context(namespace(f"borth-{unique_tag()}"))
        config = {
            "Name": "bench", "StorageDirectory": str(self.storage), "IndexDirectory": str(self.root / "index"),
            "StorageCompression": False, "SyncStorageArea": True, "Plugins": [], "LuaScripts": [],
            "HttpServerEnabled": False, "RemoteAccessAllowed": False, "SaveJobs": False,
            "DicomServerEnabled": True, "DicomAet": self.title, "DicomPort": self.port,
            "DicomCheckCalledAet": True, "DicomAlwaysAllowEcho": True, "DicomAlwaysAllowStore": True,
            "DicomModalities": {}, "MaximumPduLength": int(DCMTK_PDU),
        }
        (self.root / "orthanc.json").write_text(json.dumps(config, indent=1))

    def command(self) -> list[str]:
        return ["Orthanc", str(self.root / "orthanc.json")]

    def stored(self) -> int:
        return count_files(self.storage)


def wait_for_echo(proc: subprocess.Popen, title: str, host: str, port: int, log: Path,
                  netns: str | None = None, rejection_will_do: bool = False, options: tuple[str, ...] = ()) -> None:
    """Until the DICOM server `proc` answers C-ECHO (bounded: 20 s); its log tail if it died.
    `rejection_will_do`: an A-ASSOCIATE-RJ shows it is up as well (storescp --refuse)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{title} exited {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        probe = ["echoscu", *options, "-to", "2", "-aec", title, host, str(port)]
        if netns:
            probe = ["ip", "netns", "exec", netns, *probe]
        answer = run(probe, timeout=10, check=False, env=dcmtk_env())
        if answer.returncode == 0 or (rejection_will_do and "Association Rejected" in answer.stderr):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{title} did not answer C-ECHO within 20 s")


class NetnsPopen:
    """While active, tests/support/helpers starts the daemon through `ip netns exec NS` (same PID)."""

    def __init__(self, netns: str | None):
        self.netns = netns

    def __enter__(self):
        self._orig = helpers.subprocess.Popen
        if self.netns:
            orig, ns = self._orig, self.netns

            def popen(args, *a, **kw):
                return orig(["ip", "netns", "exec", ns, *args], *a, **kw)

            helpers.subprocess.Popen = popen
        return self

    def __exit__(self, *exc):
        helpers.subprocess.Popen = self._orig


# --- profiling (outside the product: py-spy attached to the daemon's PID) --------------------

@contextlib.contextmanager
def profiled(pyspy: str | None, pid: int, out: Path | None):
    if not pyspy or out is None:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    rec = subprocess.Popen([pyspy, "record", "--pid", str(pid), "--rate", "250", "--idle", "--threads",
                            "--format", "raw", "--output", str(out), "--nonblocking"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # let py-spy attach before the load starts
    try:
        yield
    finally:
        terminate(rec, signal.SIGINT, 30)  # py-spy writes its profile on SIGINT


# --- network namespaces (store.py case e and Orthanc, move.py) ---------------------------------

def unique_tag() -> str:
    """Short and unique on this machine: namespace and device names are global."""
    return f"{os.getpid() % 100000}{uuid.uuid4().hex[:4]}"


@contextlib.contextmanager
def namespace(name: str):
    """A network namespace with loopback up, deleted on exit (which ends its sockets)."""
    run(["ip", "netns", "add", name])
    try:
        run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"])
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


class Link:
    """Two namespaces joined by a veth pair shaped to 100 Mbit/s on both ends."""

    SERVER_IP = "10.251.77.1"
    CLIENT_IP = "10.251.77.2"

    def __init__(self, prefix: str = "bstore"):
        tag = unique_tag()
        self.srv = f"{prefix}-s-{tag}"
        self.cli = f"{prefix}-c-{tag}"
        self.vs = f"bvs{tag}"[:15]
        self.vc = f"bvc{tag}"[:15]

    def ns(self, netns: str, *cmd: str, timeout: float = 20) -> subprocess.CompletedProcess:
        return run(["ip", "netns", "exec", netns, *cmd], timeout=timeout)

    def __enter__(self):
        with contextlib.ExitStack() as stack:
            for n in (self.srv, self.cli):
                stack.enter_context(namespace(n))
            run(["ip", "link", "add", self.vs, "netns", self.srv, "type", "veth", "peer", "name", self.vc,
                 "netns", self.cli])
            for n, dev, addr in ((self.srv, self.vs, self.SERVER_IP), (self.cli, self.vc, self.CLIENT_IP)):
                self.ns(n, "ip", "addr", "add", f"{addr}/24", "dev", dev)
                self.ns(n, "ip", "link", "set", dev, "up")
                self.ns(n, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off")
                self.ns(n, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", "100mbit",
                        "burst", "32kbit", "latency", "400ms")
            self._cleanup = stack.pop_all()
        return self

    def sysctls(self) -> dict:
        text = self.ns(self.srv, "sysctl", "net.core.rmem_max", "net.core.wmem_max", "net.ipv4.tcp_rmem",
                       "net.ipv4.tcp_wmem").stdout
        return dict(line.split(" = ", 1) for line in text.strip().splitlines())

    def iperf(self, seconds: int, reverse: bool = False) -> dict:
        """TCP ceiling, client namespace -> server namespace; `reverse`: server -> client."""
        port = str(helpers.free_port())
        server = subprocess.Popen(["ip", "netns", "exec", self.srv, "iperf3", "-s", "-1", "-B", self.SERVER_IP,
                                   "-p", port], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            out = None
            for _ in range(50):  # bounded wait for the server to listen
                proc = run(["ip", "netns", "exec", self.cli, "iperf3", "-c", self.SERVER_IP, "-p", port,
                            "-t", str(seconds), "-J", *(["-R"] if reverse else [])],
                           timeout=seconds + 30, check=False)
                try:
                    parsed = json.loads(proc.stdout)
                except ValueError:
                    parsed = {}
                if proc.returncode == 0 and "sum_received" in parsed.get("end", {}):
                    out = parsed
                    break
                time.sleep(0.2)
            if out is None:
                raise RuntimeError("iperf3 client never connected")
            bps = out["end"]["sum_received"]["bits_per_second"]
            return {"mbit_s": round(bps / 1e6, 2), "mbps": round(bps / 8 / 1e6, 2), "seconds": seconds,
                    **({"direction": "server->client"} if reverse else {})}
        finally:
            terminate(server)

    def __exit__(self, *exc):
        self._cleanup.close()


# --- the index on PostgreSQL (IX-01): find.py's appliance-pg, store.py's service-pg ------------

# On top of tests/support/postgres.SETTINGS: fsync on (the tests' cluster runs without it), with
# synchronous_commit on, as the service expects of its server. shared_buffers: the tests' 32 MB suits many small clusters at once;
# a server holding an archive's index gets more (the 1M-instance index is ~0.9 GB). max_wal_size:
# the bulk load is not checkpointed every GB (find.py checkpoints once after it).
# pg_stat_statements and track_wal_io_timing: the evidence of what a write costs (round
# trips, server time per statement, WAL flushes and their time), read per database.
PG_BENCH_SETTINGS = {
    "fsync": "on",
    "shared_buffers": "512MB",
    "max_wal_size": "4GB",
    "shared_preload_libraries": "pg_stat_statements",
    "track_wal_io_timing": "on",
}
PG_SHOWN = ("server_version", "shared_buffers", "fsync", "synchronous_commit", "wal_sync_method", "full_page_writes",
            "max_wal_size", "checkpoint_timeout", "wal_writer_delay", "commit_delay", "jit", "work_mem",
            "effective_cache_size", "random_page_cost", "autovacuum")


def postgres_cluster(extra: dict | None = None):
    """tests/support/postgres.PostgresCluster with PG_BENCH_SETTINGS (and `extra`, for
    experiments): one server on a free loopback port for a whole run (a `with` starts it and
    stops and removes it); a fresh database per appliance start (`database`)."""
    import postgres  # tests/support/postgres.py (psycopg, a dependency of the service)

    class BenchCluster(postgres.PostgresCluster):
        def __init__(self):
            super().__init__()
            self.made = 0

        def _init(self) -> None:
            super()._init()
            with open(self.data_dir / "postgresql.conf", "a") as conf:
                conf.write("# bench/lab.py\n")
                conf.writelines(f"{key} = '{value}'\n" for key, value in {**PG_BENCH_SETTINGS, **(extra or {})}.items())

        def __enter__(self):
            try:
                self.start()
                with self.connect() as admin:
                    admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            except BaseException:
                self.stop()
                raise
            return self

        def __exit__(self, *exc):
            self.stop()

        def database(self, prefix: str) -> tuple[str, str]:
            """A new database as the service requires it: (name, URL)."""
            self.made += 1
            name = f"{prefix}_{self.made}"
            return name, self.create_database(name)

        def settings(self) -> dict:
            with self.connect() as admin:
                return {name: admin.execute(f"SHOW {name}").fetchone()[0] for name in (*PG_SHOWN, *(extra or {}))}

        def cpu_seconds(self) -> float | None:
            """The server's CPU so far: the postmaster, its backends (children: a finished
            backend's time is in the postmaster's reaped children's)."""
            return tree_cpu_seconds(self.proc.pid) if self.running else None

        def wal(self) -> dict:
            """pg_stat_wal, the whole server's (counters: take a difference)."""
            with self.connect() as admin:
                cur = admin.execute("SELECT wal_records, wal_bytes, wal_write, wal_sync, wal_write_time, "
                                    "wal_sync_time FROM pg_stat_wal")
                return dict(zip([c.name for c in cur.description], map(float, cur.fetchone())))

        def reset_statements(self, database: str) -> None:
            """pg_stat_statements of `database` from zero (what the daemon's start ran goes)."""
            with self.connect() as admin:
                admin.execute("SELECT pg_stat_statements_reset(0, oid, 0) FROM pg_database WHERE datname = %s",
                              (database,))

        def statements(self, database: str, limit: int = 10) -> dict:
            """pg_stat_statements of `database`: calls and server time of all statements, and
            the `limit` statements that took the most time. (A COMMIT's wait for its WAL flush
            comes after its statement ends: that time is pg_stat_wal's wal_sync_time.)"""
            with self.connect() as admin:
                cur = admin.execute(
                    "SELECT calls, total_exec_time, mean_exec_time, left(regexp_replace(query, '\\s+', ' ', 'g'), 140) "
                    "FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s "
                    "ORDER BY total_exec_time DESC", (database,))
                rows = cur.fetchall()
            return {"calls": sum(r[0] for r in rows), "exec_ms": round(sum(r[1] for r in rows), 1),
                    "top": [{"calls": calls, "total_ms": round(total, 2), "mean_ms": round(mean, 4), "query": query}
                            for calls, total, mean, query in rows[:limit]]}

    return BenchCluster()


def wal_difference(before: dict, after: dict) -> dict:
    return {k: round(after[k] - before[k], 3) for k in before}


# --- machine description -------------------------------------------------------------------

def machine() -> dict:
    model = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                  if l.startswith("model name")), "?")
    fs = run(["findmnt", "-n", "-o", "FSTYPE,SOURCE,OPTIONS", "--target", tempfile.gettempdir()],
             check=False).stdout.strip()
    versions = {}
    for tool in ("storescp", "iperf3", "Orthanc"):
        with contextlib.suppress(OSError):  # Orthanc is optional for the scripts other than store.py
            text = run([tool, "--version"], check=False).stdout.strip().splitlines()
            versions[tool] = text[0] if text else "?"
    postgres = sorted((p for p in Path("/usr/lib/postgresql").glob("*/bin/postgres") if p.parent.parent.name.isdigit()),
                      key=lambda p: int(p.parent.parent.name))
    if postgres:  # Debian's, as tests/support/postgres.py finds it
        versions["postgres"] = run([str(postgres[-1]), "--version"], check=False).stdout.strip()
    import pydicom
    import pynetdicom
    git = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=False).stdout.strip()
    dirty = run(["git", "-C", str(REPO), "status", "--porcelain", "--", "appliance"], check=False).stdout
    return {"git": git, "appliance_uncommitted_files": len(dirty.splitlines()), "cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "tmp_filesystem": fs, "python": platform.python_version(), "pynetdicom": pynetdicom.__version__,
            "pydicom": pydicom.__version__, "tools": versions}


# --- reports -----------------------------------------------------------------------------------

def run_recorded(bench, quick: bool, describe=machine) -> dict:
    """`bench.run()`, with `bench.cleanup()` whatever happens; the head of the run's record:
    when, how long, the command, the machine (`describe`)."""
    started = datetime.datetime.now(datetime.timezone.utc)
    try:
        bench.run()
    finally:
        bench.cleanup()
    return {
        "date": started.isoformat(timespec="seconds"),
        "seconds": round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(), 1),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quick": quick,
        "machine": describe(),
    }


def load_json(path: Path) -> dict | None:
    """A previous run's record (results/*-previous.json), or None if there is none readable."""
    with contextlib.suppress(ValueError, OSError):
        return json.loads(path.read_text())
    return None


def run_and_report(bench, name: str, quick: bool, table, json_path: Path | None = None) -> None:
    """`bench` run (run_recorded), `table(results, previous run's record)` printed, and the run's
    record kept as bench/results/<name>-previous[-quick].json (and at `json_path`)."""
    path = REPO / "bench" / "results" / f"{name}-previous{'-quick' if quick else ''}.json"
    previous = load_json(path)
    record = run_recorded(bench, quick)
    record["results"] = bench.results
    print(table(bench.results, previous))
    if previous:
        print(f"(previous: {previous.get('date')}, git {previous.get('machine', {}).get('git')})")
    text = json.dumps(record, indent=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if json_path:
        json_path.write_text(text)


def verdict(target: tuple | None, value) -> str:
    """'met' or 'NOT met' against a target (op, value, goal or None, what); '+ goal' if the goal is met."""
    if target is None or value is None:
        return ""
    op, want, goal, _ = target

    def meets(limit) -> bool:
        return {">=": value >= limit, "<=": value <= limit, "==": value == limit, "abs<=": abs(value) <= limit}[op]
    if not meets(want):
        return "NOT met"
    return "met + goal" if goal is not None and meets(goal) else "met"


def target_text(target: tuple | None) -> str:
    if target is None:
        return ""
    op, want, goal, _ = target
    return f"{op.replace('abs', '|x|')}{want:g}" + (f" (goal {goal:g})" if goal is not None else "")


def text_table(head: tuple, rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
