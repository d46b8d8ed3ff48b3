"""Fixtures: the real daemon on free loopback ports. The tiers, one folder each:

- unit/    no daemon, no root: the loader, the index, the protocol codecs, the tool's offline
           commands (seconds);
- daemon/  the real daemon on loopback, DCMTK and pynetdicom clients (minutes);
- system/  network namespaces, dnsmasq, systemd-nspawn; e2e/ boots the image under QEMU.

Each test gets its tier as a marker too (`-m unit`). The helpers every tier shares are in support/.

The index backends (IX-01): a test module that says `pytestmark = pytest.mark.index_backends` (or
a test so marked) runs once per backend, `[sqlite]` and `[postgresql]`; its appliances (the
fixtures appliance, make_appliance, small_disk, archive_appliance, move_archive) get a fresh
database of the session's PostgreSQL server (`postgres_cluster`, started on first use) in the
second run, which is also marked `postgresql` (`-m postgresql`). Other tests run on SQLite only.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom import config as pydicom_config
from pynetdicom.association import Association

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS / "support"))
# `image` (the image build, which the system and e2e tests use) is a directory of the checkout,
# not part of the installed package.
sys.path.insert(0, str(TESTS.parent))

import rootfs  # noqa: E402 (needs `image` on the path)
from helpers import SMALL_DISK, SMALL_DISK_INODES, Appliance  # noqa: E402

TIERS = {"unit": "unit", "daemon": "daemon", "system": "system", "e2e": "system"}  # folder -> tier
INDEX_BACKENDS = ("sqlite", "postgresql")


def pytest_configure(config):
    """A suite started in the background by a non-interactive shell (`sh tests/run.sh &`)
    inherits SIGINT ignored (POSIX: asynchronous commands without job control), and so would
    every process it starts: pyroute2's DHCP client, told to release its lease with SIGINT,
    then never does. With Python's own handler here, the children start with the default."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_generate_tests(metafunc):
    """Tests marked `index_backends` (themselves, their class or module) that use the index
    backend (the fixture `index_backend` or an appliance fixture) run on each backend, module
    by module: a module-scoped appliance is built once per backend. A test of what only one
    backend has, in such a module, names it: `@pytest.mark.index_backends("postgresql")`."""
    marker = metafunc.definition.get_closest_marker("index_backends")
    if marker and "index_backend" in metafunc.fixturenames:
        backends = marker.args or INDEX_BACKENDS
        assert set(backends) <= set(INDEX_BACKENDS), backends
        metafunc.parametrize("index_backend", [
            pytest.param(backend, id=backend, marks=[pytest.mark.postgresql] if backend == "postgresql" else [])
            for backend in backends], scope="module")


def pytest_collection_modifyitems(session, config, items):
    """Each test's tier as a marker, from its folder. Tests marked `debian_tree` (the system
    tier and the booted image) run last, and the tree they share starts building now if it is
    not cached, while the others run."""
    for item in items:
        folder = Path(item.path).relative_to(TESTS).parts[0]
        item.add_marker(TIERS[folder])
    needing = [item for item in items if item.get_closest_marker("debian_tree")]
    if needing:
        last = set(needing)
        items[:] = [item for item in items if item not in last] + needing
        rootfs.build_in_background()


# The tests are a client that sends wrong values on purpose (a word as a date, a wildcard in
# an IS): pydicom need not warn about each one.
pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE


def _pause_reactor_first(send):
    """pynetdicom 3.0's send_* methods pause the requester's reactor thread racily: the reactor
    can pass its checkpoint just before it is cleared and take the first response off the queue
    itself ("Received unexpected C-FIND service message", pynetdicom issue 875), so the test
    client loses a response the appliance did send. Clear the checkpoint first and wait until
    the reactor is seen paused twice, 10 ms apart; the method's own pause then finds it so."""

    @functools.wraps(send)
    def call(assoc, *args, **kwargs):
        if assoc.is_established:
            assoc._reactor_checkpoint.clear()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and assoc.is_alive():
                if assoc._is_paused:
                    time.sleep(0.01)
                    if assoc._is_paused:
                        break
                time.sleep(0.001)
        try:
            return send(assoc, *args, **kwargs)
        except BaseException:
            assoc._reactor_checkpoint.set()  # as the method itself does when it gets that far
            raise

    return call


for _name in ("send_c_echo", "send_c_store", "send_c_find", "send_c_move", "send_n_action"):
    setattr(Association, _name, _pause_reactor_first(getattr(Association, _name)))


@pytest.fixture(scope="module")
def index_backend() -> str:
    """The index backend of the test's appliances: "sqlite", or for tests marked
    `index_backends`, "sqlite" and then "postgresql" (pytest_generate_tests)."""
    return "sqlite"


@pytest.fixture(scope="session")
def postgres_cluster():
    """The session's PostgreSQL server (support/postgres.py), started when a test first asks for
    it and stopped, its files removed, when the session ends, whatever happened. No PostgreSQL
    installed is an error: an install step missed (tests/run.sh), not a reason to skip."""
    import postgres

    cluster = postgres.PostgresCluster()
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@contextlib.contextmanager
def index_url(request, backend: str):
    """The `[index] url` of one appliance on `backend`: "" for SQLite, else the URL of a new
    database of the session's cluster, dropped on leaving (after the appliance has stopped)."""
    if backend == "sqlite":
        yield ""
        return
    assert backend == "postgresql", backend
    with request.getfixturevalue("postgres_cluster").database() as url:
        yield url


@pytest.fixture(scope="module")
def new_index_url(request, index_backend):
    """Factory for a module's own appliance fixtures: the `[index] url` of one more appliance on
    the module's backend (`index_url`); its databases are dropped when the module ends."""
    with contextlib.ExitStack() as databases:
        yield lambda: databases.enter_context(index_url(request, index_backend))


@pytest.fixture
def appliance(tmp_path, request, index_backend):
    """A running appliance with default configuration (reserve 0, short drain)."""
    with index_url(request, index_backend) as url:
        app = Appliance(tmp_path / "appliance", index_url=url).start()
        yield app
        assert app.stop() == 0, app.log()


@pytest.fixture(scope="module")
def qr(archive_appliance):
    """An association to archive_appliance's QUERY-RETRIEVE-SCP, for the module's C-FINDs."""
    import scu

    with scu.association(archive_appliance.qr_port, "EX_QUERY_SCP", scu.query_contexts()) as assoc:
        yield assoc


@pytest.fixture
def make_appliance(tmp_path, request, index_backend):
    """Factory for an appliance with config overrides; started ones are stopped at teardown."""
    made = []
    with contextlib.ExitStack() as databases:
        def make(overrides: dict | None = None, start: bool = True, name: str = "appliance",
                 env: dict | None = None, prefix: tuple[str, ...] = ()) -> Appliance:
            url = databases.enter_context(index_url(request, index_backend))
            app = Appliance(tmp_path / name, overrides or {}, env or {}, prefix, index_url=url)
            made.append(app)
            return app.start() if start else app

        yield make
        for app in made:
            if app.proc is not None and app.proc.poll() is None:
                app.stop()


@pytest.fixture
def small_disk(tmp_path, request, index_backend):
    """Factory for one appliance, `small_disk(overrides, start=True)`, whose data dir is a real
    tmpfs of SMALL_DISK bytes and SMALL_DISK_INODES inodes (ST-07, MG-04); stopped and unmounted
    at the end even when the test or the daemon failed. On PostgreSQL only the files are on the
    small disk, not the index."""
    made = []
    databases = contextlib.ExitStack()

    def make(overrides: dict | None = None, start: bool = True) -> Appliance:
        assert not made, "one small disk per test"
        url = databases.enter_context(index_url(request, index_backend))
        app = Appliance(tmp_path / "appliance", overrides or {}, index_url=url)
        app.data_dir.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK},nr_inodes={SMALL_DISK_INODES},mode=0700",
                        "tmpfs", str(app.data_dir)], check=True)
        made.append(app)
        return app.start() if start else app

    with databases:
        yield make
        for app in made:
            try:
                assert app.stop() == 0, app.log()
            finally:
                if app.proc is not None and app.proc.poll() is None:
                    app.kill()
                if subprocess.run(["umount", str(app.data_dir)]).returncode != 0:
                    subprocess.run(["umount", "--lazy", str(app.data_dir)], check=True)
                    raise AssertionError(f"{app.data_dir} was still busy at teardown (lazily unmounted)")


@pytest.fixture
def modalities():
    """commitment_peer.Modality objects a test started: their listeners are stopped at teardown."""
    made = []
    yield made
    for modality in made:
        modality.stop()


@pytest.fixture(scope="module")
def archive_appliance(tmp_path_factory, request, index_backend):
    """One appliance per test module, holding tests/support/query_archive.py's studies (read-only use)."""
    import query_archive

    root = tmp_path_factory.mktemp("archive")
    with index_url(request, index_backend) as url:
        app = Appliance(root / "appliance", index_url=url).start()
        query_archive.populate(app, root / "files")
        yield app
        assert app.stop() == 0, app.log()


@pytest.fixture(scope="module")
def move_archive(tmp_path_factory, request, index_backend):
    """An appliance holding tests/support/query_archive.py's studies, with MOVE_DESTINATIONS in its
    remote AE table on free ports (`move_archive.destination_ports`); nothing listens on them
    until a test starts a destination there."""
    import query_archive
    from destinations import MOVE_DESTINATIONS
    from helpers import free_port
    root = tmp_path_factory.mktemp("move")
    ports = {title: free_port() for title in MOVE_DESTINATIONS}
    remote = [{"ae_title": title, "host": "127.0.0.1", "port": port} for title, port in ports.items()]
    with index_url(request, index_backend) as url:
        app = Appliance(root / "appliance", {"remote_aes": remote, "storage_scu": {"open_retry_delay": 0.2}},
                        index_url=url).start()
        app.destination_ports = ports
        query_archive.populate(app, root / "files")
        yield app
        assert app.stop() == 0, app.log()
