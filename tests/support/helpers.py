"""Starting the real daemon for tests: a controller that waits on sd_notify READY (no sleeps)."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import tomlkit

from appliance.config.model import QueryRetrieveSCP, Storage, StorageSCP

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
RESOURCES = TESTS / "resources"  # files the tests read (schemas, SQL of released index schemas)
SERVICE_TOOL = REPO / ".venv" / "bin" / "service-tool"  # the installed console script


def tool(*args: str, timeout: float = 60, env: dict | None = None, cwd: Path | None = None,
         prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`service-tool ARGS...` as an installer runs it (`env`: variables added to ours; in `cwd`,
    under `prefix` as Appliance's)."""
    return subprocess.run([*prefix, str(SERVICE_TOOL), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def service_tool(config: Path, *args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    """`service-tool --config CONFIG ARGS...`"""
    return tool("--config", str(config), *args, timeout=timeout, env=env)
READY_TIMEOUT = 30.0
# An `Appliance.prefix`: the daemon as root without CAP_NET_BIND_SERVICE, as the unit runs it
# without the drop-in for a port below 1024 (service_tool/privileged_port.py).
WITHOUT_BIND_CAPABILITY = ("setpriv", "--inh-caps=-net_bind_service", "--bounding-set=-net_bind_service", "--")


_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, below the kernel's ephemeral range and not handed out before in
    this run. Outside that range no outgoing connection can take it as its local port, which
    once kept a destination the C-MOVE tests start on the same port again from binding."""
    ephemeral_start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(1000):
        port = random.randrange(10000, ephemeral_start)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port between 10000 and {ephemeral_start}")


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on `port` (a server started as a subprocess is ready)."""
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def wait_for(condition, what: str, timeout: float = 10.0, interval: float = 0.02):
    """Poll `condition` every `interval` s until it returns something true (returned) or fail
    after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(interval)  # a poll interval, never a wait for an event
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@contextlib.contextmanager
def storescp(port: int, title: str, directory: Path, *options: str, log: Path | None = None,
             timeout: float = 10.0):
    """DCMTK storescp as `title` on `port`, writing what it receives into `directory` (Nagle
    off); ready (its port accepts) on entry, stopped on leaving whatever happened. Its output
    goes to `log` (for -d), else nowhere."""
    with open(log, "wb") if log else contextlib.nullcontext(subprocess.DEVNULL) as out:
        proc = subprocess.Popen(["storescp", *options, "-aet", title, "-od", str(directory), str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "TCP_NODELAY": "1"})
    try:
        # Ready when its port accepts a connection (storescp logs that probe as an association
        # without contexts).
        wait_for(lambda: proc.poll() is not None or accepts(port), f"storescp listening on {port}", timeout)
        assert proc.poll() is None, f"storescp exited with {proc.returncode}" + (
            f":\n{log.read_text(errors='replace')}" if log else "")
        yield proc
    finally:
        terminate(proc)


def terminate(proc: subprocess.Popen | None, signum: int = signal.SIGTERM, grace: float = 10) -> None:
    """`signum` to a process still running, then SIGKILL after `grace` seconds."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signum)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def unread_bytes(local_port: int, remote_port: int) -> int | None:
    """How many bytes the kernel holds for the socket local_port <-> remote_port on loopback
    that its process has not read yet (rx_queue of /proc/net/tcp and tcp6); None if none such.
    Lets a test wait until a service has taken in what was sent to it."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local, remote = fields[1].rsplit(":", 1)[1], fields[2].rsplit(":", 1)[1]
                if (int(local, 16), int(remote, 16)) == (local_port, remote_port):
                    return int(fields[4].split(":")[1], 16)
    return None


def merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@dataclass
class Appliance:
    """A running `python -m appliance serve` with its own config, data dir and free ports; or,
    with `built_in_defaults`, as the README starts it: no --config, run in `root`, so data in
    root/appliance-data and the conformance statement's ports (4000, 5000)."""

    root: Path
    overrides: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    # What the daemon is run under, e.g. ("ip", "netns", "exec", NS): it execs, so proc is the daemon.
    prefix: tuple[str, ...] = ()
    built_in_defaults: bool = False
    # `[index] url`: "" for the SQLite file in the data dir, or a PostgreSQL database's URL
    # (IX-01; conftest.py's fixtures make one per appliance for the tests run on PostgreSQL).
    index_url: str = ""
    proc: subprocess.Popen | None = None

    def __post_init__(self):
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path = self.root / "appliance.toml"
        self.stderr_path = self.root / "stderr.log"
        if self.built_in_defaults:
            assert not self.index_url, "the built-in defaults have no [index] url"
            self.data_dir = self.root / Storage().data_dir
            self.config = {"storage_scp": {"port": StorageSCP().port},
                           "query_retrieve_scp": {"port": QueryRetrieveSCP().port}}
            return
        self.data_dir = self.root / "data"
        base = {
            "storage_scp": {"port": free_port()},
            "query_retrieve_scp": {"port": free_port()},
            "storage": {"data_dir": str(self.data_dir), "reserve_bytes": 0},
            "timeouts": {"shutdown_drain": 10},
        }
        if self.index_url:
            base["index"] = {"url": self.index_url}
        self.config = merge(base, self.overrides)
        self.index_url = self.config.get("index", {}).get("url", "")  # or the overrides'
        self.write_config(self.config)

    # --- configuration ---------------------------------------------------------------------
    def write_config(self, config: dict) -> None:
        self.config_path.write_text(tomlkit.dumps(config))

    @property
    def storage_port(self) -> int:
        return self.config["storage_scp"]["port"]

    @property
    def qr_port(self) -> int:
        return self.config["query_retrieve_scp"]["port"]

    @property
    def storage_title(self) -> str:
        return self.config["storage_scp"].get("ae_title", "EX_STORE_SCP")

    # --- process ---------------------------------------------------------------------------
    def start(self) -> "Appliance":
        self.spawn()
        self.ready_message = self.wait_notify("READY=1", READY_TIMEOUT)
        return self

    def spawn(self) -> "Appliance":
        """Start the process without waiting for READY (start() = spawn() + wait for READY)."""
        notify_path = self.root / "notify.sock"
        notify_path.unlink(missing_ok=True)
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(notify_path))
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "PYTHONUNBUFFERED": "1", **self.env}
        self._stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(self._command(), cwd=self._cwd(), env=env, stdout=self._stderr,
                                     stderr=self._stderr)
        return self

    def _command(self) -> list[str]:
        config = () if self.built_in_defaults else ("--config", str(self.config_path))
        return [*self.prefix, sys.executable, "-m", "appliance", "serve", *config]

    def _cwd(self) -> Path:
        return self.root if self.built_in_defaults else REPO

    def run_to_exit(self, timeout: float = READY_TIMEOUT) -> int:
        """Start the daemon expecting it to give up (bad config, port in use); its exit code."""
        with open(self.stderr_path, "ab") as out:
            return subprocess.run(
                self._command(), cwd=self._cwd(), env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                stdout=out, stderr=out, timeout=timeout).returncode

    def wait_notify(self, wanted: str, timeout: float) -> str:
        """Block until the daemon sends a datagram containing `wanted` (or fail with its log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"appliance exited with {self.proc.returncode}:\n{self.log()}")
            self._notify.settimeout(min(0.5, max(deadline - time.monotonic(), 0.01)))
            try:
                message = self._notify.recv(4096).decode()
            except socket.timeout:
                continue
            if wanted in message.split("\n"):
                return message
        raise AssertionError(f"no {wanted} from the appliance within {timeout} s:\n{self.log()}")

    def status(self) -> dict:
        """The control socket's answer to `status`, as `service-tool status --json` gets it."""
        from appliance.control.client import ask

        return ask(self.data_dir / "control.sock", "status", timeout=10)

    def wait_associations(self, count: int, timeout: float = 10.0) -> list[dict]:
        """The daemon's established associations, once its control socket reports `count`."""
        found: list[dict] = []

        def reported() -> bool:
            found[:] = self.status()["associations"]
            return len(found) == count

        wait_for(reported, f"{count} associations in the service's status", timeout)
        return found

    def reload(self, refused: bool = False) -> str:
        """SIGHUP, as `systemctl reload` sends it, and the daemon's answer (`wait_reloaded`)."""
        self.signal(signal.SIGHUP)
        return self.wait_reloaded(refused)

    def wait_reloaded(self, refused: bool = False) -> str:
        """The end of a reload on sd_notify: RELOADING=1, then READY=1 with a STATUS= that says
        what the daemon runs now, or why it refused the reload (as `refused` expects)."""
        self.wait_notify("RELOADING=1", 10)
        status = self.wait_notify("READY=1", 10).split("STATUS=", 1)[-1].split("\n", 1)[0]
        assert status.startswith("reload refused") == refused, status
        return status

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def wait_log(self, pattern: str, timeout: float = 10.0, since: int = 0) -> re.Match:
        """The first match of `pattern` in the log from character `since` on (a len(log()) taken earlier)."""
        try:
            return wait_for(lambda: re.search(pattern, self.log()[since:]), f"a log line matching {pattern!r}", timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{self.log()}") from None

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._close()

    def _close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._notify.close()
        self._stderr.close()

    # --- what it stored --------------------------------------------------------------------
    def index_rows(self, sql: str, *params) -> list[tuple]:
        """The rows `sql` (sqlite3's `?` placeholders) selects from the index, on either backend.
        PostgreSQL hands back its own types (datetime, bool) where SQLite has text and integers."""
        if self.index_url:
            import postgres

            with postgres.connect(self.index_url) as db:
                return db.execute(postgres.qmark_to_format(sql), params).fetchall()
        import sqlite3

        # closing(): sqlite3's own context manager commits but leaves the file open.
        with contextlib.closing(sqlite3.connect(self.data_dir / "index.sqlite")) as db:
            return db.execute(sql, params).fetchall()

    def remove_index(self) -> None:
        """Take the index from under the running service, so that a new connection finds no
        tables: SQLite's files removed, or the PostgreSQL database's tables dropped."""
        if self.index_url:
            import postgres

            with postgres.connect(self.index_url) as db:
                tables = [name for (name,) in db.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()").fetchall()]
                db.execute("DROP TABLE " + ", ".join(f'"{name}"' for name in tables) + " CASCADE")
            return
        for suffix in ("", "-wal", "-shm"):
            (self.data_dir / f"index.sqlite{suffix}").unlink(missing_ok=True)

    def stored_files(self) -> list[Path]:
        """Files in store/ that hold a stored instance, once the spool has settled: each stored
        file keeps its spool name until the index row is flushed, a few tens of ms later
        (store/flusher.py); files made ahead and never used are empty spool names."""
        wait_for(lambda: not self.in_flight(), "the spool to settle")
        # The store first: the service gives a file its spool name before its store name.
        files = [p for p in (self.data_dir / "store").rglob("*") if p.is_file()]
        spool = self.data_dir / "spool"
        journaled = {p.stem for p in spool.iterdir()} if spool.exists() else set()
        return sorted(p for p in files if p.stem not in journaled)

    def in_flight(self, larger_than: int = 0) -> list[Path]:
        """Spool names of files with more than `larger_than` bytes: instances being received, or
        stored with an index row not flushed yet. The files the service makes ahead (empty,
        store/files.py) are not. Sizes are read here, once: a caller's second stat() could find
        the name renamed into the store meanwhile."""
        found = []
        with contextlib.suppress(FileNotFoundError), os.scandir(self.data_dir / "spool") as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):  # a name the service removes meanwhile
                    if entry.stat().st_size > larger_than:
                        found.append(Path(entry.path))
        return sorted(found)


# The real small disk the `small_disk` fixture (conftest.py) mounts as a data directory (tmpfs).
SMALL_DISK = 24 << 20
SMALL_DISK_INODES = 400  # the 256 store directories, the index files and a few instances


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill_until_free(directory: Path, free: int) -> list[Path]:
    """Grow or shrink a filler file so that `free` bytes (give or take a page) remain on the
    file system."""
    filler = directory / "filler"
    filler.touch()
    grow = free_bytes(directory) - free
    if grow > 0:
        with open(filler, "ab") as f:
            f.write(b"\0" * grow)
    else:
        os.truncate(filler, max(0, filler.stat().st_size + grow))
    return [filler]


def percent_free(directory: Path) -> float:
    """The share of the file system free as df counts it: Avail / (Used + Avail) (MG-04)."""
    st = os.statvfs(directory)
    return 100 * st.f_bavail / (st.f_blocks - st.f_bfree + st.f_bavail)


def fill_until_percent(directory: Path, percent: float) -> None:
    """`fill_until_free` to a share of the file system, counted as `percent_free` does."""
    st = os.statvfs(directory)
    fill_until_free(directory, int((st.f_blocks - st.f_bfree + st.f_bavail) * st.f_frsize * percent / 100))


def dcmtk(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a DCMTK tool with TCP_NODELAY=1 (Debian's DCMTK leaves Nagle on otherwise)."""
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TCP_NODELAY": "1"})


def says_why(comment: str | None, reason: str) -> bool:
    """UL-05: an Error Comment gives the reason its log line gives: all of it, or, beyond the 64
    characters an LO holds, its start and "..."; "/" for each backslash, which an LO cannot hold."""
    reason = reason.replace("\\", "/")
    return bool(comment) and len(comment) <= 64 and (
        comment == reason or comment.endswith("...") and reason.startswith(comment[:-3]))


def dcmtk_error_comment(output: str) -> str | None:
    """The Error Comment of the response a DCMTK tool run with -d printed (its "Status Detail")."""
    found = re.search(r"^D: \(0000,0902\) LO \[(.*)\] +#", output, re.M)
    return found.group(1) if found else None
