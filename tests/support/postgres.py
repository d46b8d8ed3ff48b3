"""A throwaway PostgreSQL server for the tests of the PostgreSQL index (IX-01, IX-02): Debian's
own binaries (package `postgresql`, tests/run.sh installs it), a fresh cluster in a temporary
directory, listening on 127.0.0.1 on a free port and on a unix socket in that directory only.

The cluster is initialised as the service requires its database: encoding UTF8, locale C. It
trusts every connection (loopback only, nothing in it outlives the run). It runs with fsync off:
the tests kill the server's processes, never the machine under it, so what the server wrote is
in the host's page cache either way, and commits still wait for the server as the service
expects (synchronous_commit on). fsync on cost 0.18 s per test here (CREATE DATABASE and each
commit's flush): 25 s instead of 8 s for 99 of them. The benchmarks, which measure durable
storing, turn it on (bench/lab.py). initdb refuses to run as root, so as root (the suite in CI)
the server runs as Debian's `postgres` system user."""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

from helpers import free_port, wait_for

INSTALL_DIR = Path("/usr/lib/postgresql")  # Debian: /usr/lib/postgresql/<major>/bin
SYSTEM_USER = "postgres"  # created by Debian's postgresql-common
SUPERUSER = "postgres"  # the cluster's superuser, the user of every URL handed out
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "max_connections": 200,  # several daemons at a time, each with its pool
    "shared_buffers": "32MB",
    "fsync": "off",  # see above; bench/lab.py turns it on
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "log_line_prefix": "%m [%p] %q%u@%d ",
}
DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

_index_databases = itertools.count(1)  # names of the databases `database()` makes

def bin_dir() -> Path:
    """The newest PostgreSQL installed from Debian's packages; AssertionError (a missing
    install step, not a reason to skip) when there is none."""
    found = [p.parent for p in INSTALL_DIR.glob("*/bin/initdb") if p.parent.parent.name.isdigit()]
    assert found, (f"PostgreSQL is not installed (no {INSTALL_DIR}/<version>/bin/initdb): "
                   "apt-get install postgresql, as tests/run.sh does")
    return max(found, key=lambda p: int(p.parent.name))


def connect(url: str, **kwargs) -> psycopg.Connection:
    """A psycopg connection to `url` (autocommit unless told otherwise); `with` closes it."""
    kwargs.setdefault("autocommit", True)
    kwargs.setdefault("connect_timeout", 10)
    return psycopg.connect(url, **kwargs)


def qmark_to_format(query: str) -> str:
    """A query written for sqlite3 (`?` placeholders) as psycopg takes it: each `?` outside a
    quoted literal or identifier becomes `%s`, and each `%` becomes `%%` (psycopg reads `%`
    everywhere, quoted or not, as the start of a placeholder)."""
    out = []
    quote = None
    for char in query:
        if quote:
            quote = None if char == quote else quote  # '' and "" inside: closed and opened again
        elif char in "'\"":
            quote = char
        elif char == "?":
            out.append("%s")
            continue
        out.append("%%" if char == "%" else char)
    return "".join(out)


class PostgresCluster:
    """One PostgreSQL server of its own: `start()`, then databases with `create_database(name)`
    (their URLs), `kill()` and `restart()` to take it away and bring it back with its data, and
    `stop()` at the end, which removes everything. The server process is a child of this one
    and gets SIGQUIT (immediate shutdown) should this process die without stopping it."""

    def __init__(self, bin_path: Path | None = None):
        self.bin = bin_path or bin_dir()
        self.version = self.bin.parent.name
        self.port = free_port()  # kept across restarts: the URLs handed out stay valid
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None

    # --- where -----------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.dir / "socket"

    @property
    def log_path(self) -> Path:
        return self.dir / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.dir and self.log_path.exists() else ""

    # --- as whom ---------------------------------------------------------------------------
    def _as_server_user(self) -> list[str]:
        """What the server's programs run under: as root, Debian's system user (initdb refuses
        root); always with the parent-death signal, so a test run that dies leaves no server.
        setpriv execs: the process started is the program itself."""
        prefix = ["setpriv", "--pdeathsig", "QUIT"]
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                raise AssertionError(f"no user {SYSTEM_USER!r} (Debian's postgresql package creates it)") from None
            prefix += [f"--reuid={SYSTEM_USER}", f"--regid={SYSTEM_USER}", "--init-groups"]
        return [*prefix, "--"]

    def _env(self) -> dict:
        # No PG* variables of the caller's (PGDATA, PGPORT...): this cluster is told everything.
        return {**{k: v for k, v in os.environ.items() if not k.startswith("PG")}, "LC_ALL": "C", "LANG": "C"}

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run([*self._as_server_user(), str(self.bin / program), *args], cwd=self.dir,
                              env=self._env(), capture_output=True, text=True, timeout=START_TIMEOUT)
        assert done.returncode == 0, f"{program} exited with {done.returncode}:\n{done.stdout}{done.stderr}"

    # --- life ------------------------------------------------------------------------------
    def _init(self) -> None:
        # pytest's temporary directories are root's, mode 0700: the server user could not enter them.
        self.dir = Path(tempfile.mkdtemp(prefix="pgtests-", dir="/tmp"))
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            for path in (self.dir, self.socket_dir):
                shutil.chown(path, SYSTEM_USER, SYSTEM_USER)
        self._run("initdb", f"--pgdata={self.data_dir}", f"--username={SUPERUSER}", "--encoding=UTF8",
                  "--locale=C", "--auth=trust")
        settings = {**SETTINGS, "port": self.port, "unix_socket_directories": str(self.socket_dir)}
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\n# tests/support/postgres.py\n")
            conf.writelines(f"{key} = '{value}'\n" for key, value in settings.items())

    def start(self) -> "PostgresCluster":
        """Initialise the cluster on the first call; start the server and wait until it accepts
        connections (the status `pg_ctl -w` waits for, in postmaster.pid)."""
        assert not self.running, "the server is running"
        if self.dir is None:
            self._init()
        with open(self.log_path, "ab") as log:
            command = [*self._as_server_user(), str(self.bin / "postgres"), "-D", str(self.data_dir)]
            self.proc = subprocess.Popen(command, cwd=self.dir, env=self._env(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(lambda: self.proc.poll() is not None or self._ready(), "PostgreSQL to accept connections",
                     START_TIMEOUT, interval=0.05)
        except AssertionError as exc:
            self.kill()
            raise AssertionError(f"{exc}:\n{self.log()}") from None
        assert self.proc.poll() is None, f"postgres exited with {self.proc.returncode}:\n{self.log()}"
        return self

    def _ready(self) -> bool:
        # postmaster.pid: pid, data dir, start time, port, socket dir, address, shm key, status.
        # A file a killed server left names another pid.
        with contextlib.suppress(FileNotFoundError):
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            return len(lines) >= 8 and lines[0] == str(self.proc.pid) and lines[7].strip() == "ready"
        return False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def shutdown(self, signum: int = signal.SIGINT) -> None:
        """Stop the server, keeping its data: SIGINT a fast shutdown (connections closed, a
        checkpoint), SIGQUIT an immediate one (no checkpoint: crash recovery at the next start);
        SIGKILL after STOP_TIMEOUT."""
        if not self.running:
            return
        self.proc.send_signal(signum)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def kill(self) -> None:
        """The server goes away at once, as in a crash: every connection is cut, nothing is
        checkpointed, and the next start() recovers from the WAL what was committed. This is
        PostgreSQL's immediate shutdown (SIGQUIT to the postmaster, which kills its backends
        and reaps them); a SIGKILL to the postmaster would orphan its backends, and where
        nothing reaps orphans (a container's pid 1) they would stay behind as zombies."""
        self.shutdown(signal.SIGQUIT)

    def restart(self) -> "PostgresCluster":
        """The server back, on the same port with the same data (after kill(), or stopped fast now)."""
        self.shutdown()
        return self.start()

    def stop(self) -> None:
        """Fast shutdown, then remove the cluster's directory; nothing left behind. Idempotent."""
        try:
            self.shutdown()
        finally:
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None

    # --- databases -------------------------------------------------------------------------
    def connect(self, url: str | None = None, **kwargs) -> psycopg.Connection:
        """A connection to `url`, by default to the cluster's `postgres` database as superuser."""
        return connect(url or self.url(), **kwargs)

    @contextlib.contextmanager
    def database(self):
        """The URL of a new database (`index_N`) for one appliance, dropped on leaving."""
        name = f"index_{next(_index_databases)}"
        url = self.create_database(name)
        try:
            yield url
        finally:
            self.drop_database(name)

    def create_database(self, name: str) -> str:
        """A new database as the service requires it (UTF8, collation and ctype C); its URL."""
        assert DATABASE_NAME.fullmatch(name), f"not a plain database name: {name!r}"
        with self.connect() as admin:
            admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'")
                          .format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop `name` if it exists, cutting off whoever is still connected to it."""
        with self.connect() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
