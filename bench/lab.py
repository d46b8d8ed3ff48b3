"""Shared by the benchmark scripts: DCMTK processes, the quiet-machine wait, py-spy, and the
100 Mbit/s link (two network namespaces, veth, tbf) with its iperf3 ceiling.

bench/store.py and bench/move.py import these; bench/find.py and the others reach them as
`store.X`. Everything here runs subprocesses with timeouts and stays on loopback or inside the
namespaces it creates.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import helpers  # noqa: E402  (tests/helpers.py: free ports; the daemon's Popen, see NetnsPopen)

DCMTK_PDU = "131072"  # storescp advertises the same maximum PDU as the service (CF-01/D-1)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def dcmtk_env() -> dict:
    return {**os.environ, "TCP_NODELAY": "1"}


def run(cmd: list[str], timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc


def vm_hwm_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


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


# --- DCMTK processes ------------------------------------------------------------------------

class StoreSCP:
    """DCMTK storescp writing to a temporary directory (no fsync, no index)."""

    kind = "storescp"

    def __init__(self, root: Path, fork: bool = False, netns: str | None = None, bind: str | None = None,
                 port: int | None = None, title: str = "STORESCP"):
        self.root = root
        self.out = root / "out"
        self.out.mkdir(parents=True)
        self.fork = fork
        self.netns = netns
        self.host = bind or "127.0.0.1"
        self.title = title
        self.port = port or helpers.free_port()

    def __enter__(self):
        cmd = ["storescp", "-od", str(self.out), "-pdu", DCMTK_PDU, "-aet", self.title, "-dhl",
               "--fork" if self.fork else "--single-process", str(self.port)]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        self.stderr = open(self.root / "storescp.log", "wb")
        self.proc = subprocess.Popen(cmd, env=dcmtk_env(), stdout=self.stderr, stderr=self.stderr)
        self.pid = self.proc.pid
        try:
            wait_for_echo(self.proc, self.title, self.host, self.port, self.root / "storescp.log", self.netns)
        except BaseException:  # __exit__ will not run: stop it here
            terminate(self.proc)
            self.stderr.close()
            raise
        self.hwm_idle = vm_hwm_kib(self.pid)
        return self

    def stored(self) -> int:
        return sum(1 for p in self.out.iterdir() if p.is_file())

    def __exit__(self, *exc):
        terminate(self.proc)
        self.stderr.close()
        shutil.rmtree(self.root, ignore_errors=True)


def wait_for_echo(proc: subprocess.Popen, title: str, host: str, port: int, log: Path,
                  netns: str | None = None) -> None:
    """Until the DCMTK server `proc` answers C-ECHO (bounded: 20 s); its log tail if it died."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{title} exited {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        probe = ["echoscu", "-to", "2", "-aec", title, host, str(port)]
        if netns:
            probe = ["ip", "netns", "exec", netns, *probe]
        if run(probe, timeout=10, check=False, env=dcmtk_env()).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{title} did not answer C-ECHO within 20 s")


def terminate(proc: subprocess.Popen | None, signum: int = signal.SIGTERM, grace: float = 10) -> None:
    """`signum`, then SIGKILL after `grace` seconds."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signum)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class NetnsPopen:
    """While active, tests/helpers starts the daemon through `ip netns exec NS` (same PID)."""

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


# --- network namespaces (store.py case e, move.py) --------------------------------------------

class Link:
    """Two namespaces joined by a veth pair shaped to 100 Mbit/s on both ends."""

    SERVER_IP = "10.251.77.1"
    CLIENT_IP = "10.251.77.2"

    def __init__(self, prefix: str = "bstore"):
        tag = f"{os.getpid() % 100000}{uuid.uuid4().hex[:4]}"
        self.srv = f"{prefix}-s-{tag}"
        self.cli = f"{prefix}-c-{tag}"
        self.vs = f"bvs{tag}"[:15]
        self.vc = f"bvc{tag}"[:15]
        self.created: list[str] = []

    def ns(self, netns: str, *cmd: str, timeout: float = 20) -> subprocess.CompletedProcess:
        return run(["ip", "netns", "exec", netns, *cmd], timeout=timeout)

    def __enter__(self):
        try:
            for n in (self.srv, self.cli):
                run(["ip", "netns", "add", n])
                self.created.append(n)
            run(["ip", "link", "add", self.vs, "netns", self.srv, "type", "veth", "peer", "name", self.vc,
                 "netns", self.cli])
            for n, dev, addr in ((self.srv, self.vs, self.SERVER_IP), (self.cli, self.vc, self.CLIENT_IP)):
                self.ns(n, "ip", "link", "set", "lo", "up")
                self.ns(n, "ip", "addr", "add", f"{addr}/24", "dev", dev)
                self.ns(n, "ip", "link", "set", dev, "up")
                self.ns(n, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off")
                self.ns(n, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", "100mbit",
                        "burst", "32kbit", "latency", "400ms")
        except BaseException:
            self.__exit__()
            raise
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
            if server.poll() is None:
                server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)

    def __exit__(self, *exc):
        for n in reversed(self.created):
            subprocess.run(["ip", "netns", "del", n], capture_output=True, timeout=30)
        self.created.clear()


# --- machine description -------------------------------------------------------------------

def machine() -> dict:
    model = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                  if l.startswith("model name")), "?")
    fs = run(["findmnt", "-n", "-o", "FSTYPE,SOURCE,OPTIONS", "--target", tempfile.gettempdir()],
             check=False).stdout.strip()
    versions = {}
    for tool in ("storescp", "iperf3"):
        text = run([tool, "--version"], check=False).stdout.strip().splitlines()
        versions[tool] = text[0] if text else "?"
    import pydicom
    import pynetdicom
    git = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=False).stdout.strip()
    dirty = run(["git", "-C", str(REPO), "status", "--porcelain", "--", "appliance"], check=False).stdout
    return {"git": git, "appliance_uncommitted_files": len(dirty.splitlines()), "cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "tmp_filesystem": fs, "python": platform.python_version(), "pynetdicom": pynetdicom.__version__,
            "pydicom": pydicom.__version__, "tools": versions}
