"""The service's own upper layer under load and misuse (UL-01..UL-04): connections that hold no
thread and cost no CPU before their request is admitted, associations that leave nothing behind,
a cancel that is already waiting when a C-FIND begins, and no reach into the libraries' internals.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import resource
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_CANCEL
from pynetdicom.dsutils import decode

import datasets
import pdus
import query_archive
import scu
from helpers import REPO, Appliance, says_why, service_tool, wait_for

SUCCESS, CANCEL = 0x0000, 0xFE00
SILENT = 1000
REJECTED = 10_000


def proc_status(pid: int, field: str) -> int:
    """A number from /proc/<pid>/status (VmRSS in kB, Threads)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status(app) -> dict:
    result = service_tool(app.config_path, "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def waiting(app) -> int:
    """Connections the listeners hold that have no association yet."""
    return sum(listener["waiting"] for listener in status(app)["listeners"])


def settled_threads(app) -> int:
    """The service's threads once the last one it starts after READY (the lease watch) runs."""
    app.wait_log(r"appliance\.network: (watching \S+ for DHCP leases lost|DHCP lease watch off)")
    return proc_status(app.proc.pid, "Threads")


@contextlib.contextmanager
def file_limit(needed: int):
    """This process may hold `needed` descriptors (the service raises its own at start)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(needed, hard)), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_thousand_silent_connections_hold_no_thread_cost_no_cpu_and_slow_no_echo(appliance):
    """UL-02: 1,000 connections that say nothing are held by the acceptor's one thread until ARTIM,
    with no thread each and no CPU while idle (under 5 % of a core); a C-ECHO from another client
    meanwhile is answered within 1 s, on either AE."""
    pid = appliance.proc.pid
    threads = settled_threads(appliance)
    with file_limit(SILENT + 200), contextlib.ExitStack() as held:
        for _ in range(SILENT):
            held.enter_context(socket.create_connection(("127.0.0.1", appliance.storage_port), timeout=10))
        wait_for(lambda: waiting(appliance) == SILENT, f"the service to hold {SILENT} connections", timeout=20,
                 interval=0.2)
        assert proc_status(pid, "Threads") == threads

        before, started = cpu_seconds(pid), time.monotonic()
        time.sleep(2)  # the measurement's window: CPU spent while nothing happens
        busy = (cpu_seconds(pid) - before) / (time.monotonic() - started)
        assert busy < 0.05, f"the idle service used {busy:.0%} of a core holding {SILENT} connections"

        for port, title in ((appliance.storage_port, "EX_STORE_SCP"), (appliance.qr_port, "EX_QUERY_SCP")):
            started = time.monotonic()
            assert scu.echo(port, title) == SUCCESS
            assert time.monotonic() - started < 1.0, f"C-ECHO to {title} took {time.monotonic() - started:.2f} s"
    wait_for(lambda: waiting(appliance) == 0, "the closed connections to be dropped", timeout=20, interval=0.2)


def test_connections_before_association_are_bounded_by_descriptors(tmp_path):
    """UL-02, FL-08: with a hard limit of 256 descriptors (which the service cannot raise), one
    listener holds at most 64 connections before their association request. Four hundred silent
    ones do not take the descriptors the service still needs (its start-up after READY, the
    other port, the service tool's control socket): the service says so, does not spin, serves
    QUERY-RETRIEVE-SCP meanwhile, and once the connections go, STORAGE-SCP answers again."""
    app = Appliance(tmp_path / "appliance", prefix=("prlimit", "--nofile=256:256")).start()
    try:
        pid = app.proc.pid
        with file_limit(SILENT + 200), contextlib.ExitStack() as held:
            for _ in range(400):  # more than the listener may hold; the rest wait in the backlog
                held.enter_context(socket.create_connection(("127.0.0.1", app.storage_port), timeout=10))
            app.wait_log(r"STORAGE-SCP: 64 connections wait for their association request, as many as one "
                         r"listener may hold")
            before, started = cpu_seconds(pid), time.monotonic()
            time.sleep(1)  # the measurement's window: CPU spent while not accepting is impossible
            busy = (cpu_seconds(pid) - before) / (time.monotonic() - started)
            assert busy < 0.2, f"the service used {busy:.0%} of a core, unable to accept"
            assert scu.echo(app.qr_port, "EX_QUERY_SCP") == SUCCESS
            assert {listener["ae"]: listener["waiting"] for listener in status(app)["listeners"]} == {
                "STORAGE-SCP": 64, "QUERY-RETRIEVE-SCP": 0}
        assert wait_for(lambda: scu.echo(app.storage_port, "EX_STORE_SCP") == SUCCESS, "a C-ECHO answered again",
                        timeout=20, interval=0.5)
    finally:
        assert app.stop() == 0, app.log()


def test_large_requests_that_never_complete_hold_bounded_memory(appliance):
    """UL-02: an A-ASSOCIATE-RQ may be up to 1 MiB, and its bytes wait for the rest until ARTIM.
    Eighty peers each sending most of a 1 MiB request and then nothing hold at most 64 MiB of
    the service: beyond that a connection is closed, with a line that says so; the service
    still answers a C-ECHO."""
    pid = appliance.proc.pid
    rss = proc_status(pid, "VmRSS")
    almost = pdus.header(0x01, 1 << 20) + bytes((1 << 20) - 4096)
    with contextlib.ExitStack() as held:
        for _ in range(80):
            sock = held.enter_context(socket.create_connection(("127.0.0.1", appliance.storage_port), timeout=10))
            with contextlib.suppress(OSError):  # closed by the service once it holds too much
                sock.sendall(almost)
        appliance.wait_log(r"connection closed: the requests not complete yet hold \d+ bytes, the 67108864 allowed")
        assert scu.echo(appliance.storage_port, "EX_STORE_SCP") == SUCCESS
        grown = (proc_status(pid, "VmRSS") - rss) / 1024
        assert grown < 100, f"the service grew {grown:.0f} MB holding unfinished requests"


def _rejected(port: int, request: bytes) -> None:
    with pdus.connect(port) as sock:
        sock.sendall(request)
        assert pdus.rejection(pdus.read_pdu(sock)) == (1, 1, 7)  # AS-04


def _released(port: int) -> None:
    with contextlib.closing(pdus.associated(port)) as sock:
        sock.sendall(pdus.RELEASE_RQ)
        assert pdus.read_pdu(sock)[:1] == b"\x06"


def _aborted(port: int) -> None:
    with contextlib.closing(pdus.associated(port)) as sock:
        sock.sendall(bytes.fromhex("07 00 00000004 00000000"))
        assert pdus.closed_by_peer(sock)  # its slot is free (max_associations)


def test_rejected_released_and_aborted_associations_leave_nothing_behind(appliance):
    """UL-03: after 10,000 associations rejected for a wrong called AE title, and a few hundred
    released and aborted ones, `status` lists no association and no waiting connection, and the
    service has the threads, descriptors and memory (±10 MB) it had before."""
    pid, port = appliance.proc.pid, appliance.storage_port
    wrong_title = pdus.request(called="NOT_THE_AE")
    with ThreadPoolExecutor(4) as pool:  # first use: caches, the allocator's arenas
        list(pool.map(lambda _: _rejected(port, wrong_title), range(200)))
        list(pool.map(lambda _: _released(port), range(50)))
    wait_for(lambda: not status(appliance)["associations"], "the warm-up's associations to end")
    rss, threads = proc_status(pid, "VmRSS"), settled_threads(appliance)
    descriptors = len(os.listdir(f"/proc/{pid}/fd"))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: _rejected(port, wrong_title), range(REJECTED)))
        list(pool.map(lambda n: (_released if n % 2 else _aborted)(port), range(600)))

    def settled() -> bool:
        now = status(appliance)
        return not now["associations"] and waiting(appliance) == 0 and proc_status(pid, "Threads") == threads
    wait_for(settled, "no association, no waiting connection, no extra thread", timeout=20, interval=0.2)
    assert len(os.listdir(f"/proc/{pid}/fd")) <= descriptors + 2  # a log rotation, a file made ahead
    grown = (proc_status(pid, "VmRSS") - rss) / 1024
    assert grown < 10, f"the service grew {grown:.1f} MB over {REJECTED} rejections"
    assert appliance.log().count("association rejected") == REJECTED + 200


def _reset(sock: socket.socket) -> None:
    """Close with a reset (RST), as a peer that gives up hard does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_connections_that_end_before_their_association_is_used_are_not_errors(appliance):
    """Issue 22 item 10, LG-08: peers that close or reset the connection before any PDU, or right
    after their A-ASSOCIATE-RQ (they gave up waiting, or only tried the port), leave an INFO
    line each and no ERROR; `status` counts no error, its errors being the service's problems."""
    port = appliance.storage_port
    pdus.connect(port).close()
    _reset(pdus.connect(port))
    for end in (socket.socket.close, _reset):  # the A-ASSOCIATE-RQ sent, the A-ASSOCIATE-AC not waited for
        sock = pdus.connect(port)
        sock.sendall(pdus.request())
        end(sock)
    pdus.associated(port).close()  # the A-ASSOCIATE-AC read, nothing sent on the association
    ended = (r"INFO appliance\.association: STORAGE-SCP #\d+ \S+: connection (closed by the peer before an association "
             r"request|lost[^\n]*; nothing came after the A-ASSOCIATE-RQ \(the peer gave up, or only tried the port\); "
             r"0 instances stored)")
    wait_for(lambda: len(re.findall(ended, appliance.log())) == 5, "an INFO line for each connection")
    assert "nothing came after the A-ASSOCIATE-RQ" in appliance.log() and " ERROR " not in appliance.log(), \
        appliance.log()
    assert status(appliance)["problems"] == {"counts": {}, "recent": []}


def test_a_cancel_already_in_the_socket_stops_a_c_find_before_its_first_match(make_appliance):
    """UL-04, QF-19: a C-CANCEL-RQ that arrives with the C-FIND-RQ, before the first Pending is
    sent, stops a query of 150 matches at once: FE00 and no Pending."""
    app = make_appliance(start=False)
    app.start().stop()
    query_archive.fill_index(app, 150)
    app.start()
    query = Dataset()
    query.QueryRetrieveLevel, query.SOPInstanceUID = "IMAGE", ""
    query.StudyInstanceUID, query.SeriesInstanceUID = query_archive.uid("S100"), query_archive.uid("S100.1")
    cancel = C_CANCEL()
    cancel.MessageIDBeingRespondedTo = 7
    with contextlib.closing(pdus.associated(app.qr_port, (datasets.STUDY_ROOT_FIND, (datasets.ILE,)),
                                            called="EX_QUERY_SCP")) as sock:
        sock.sendall(b"".join(pdus.p_data(pdus.c_find(datasets.STUDY_ROOT_FIND, query, message_id=7))
                              + pdus.p_data(cancel)))
        reader, statuses = pdus.Reader(sock), []
        while not statuses or statuses[-1] in (0xFF00, 0xFF01):
            for control, fragment in pdus.pdvs(reader.pdu()):
                if control & 0x01:
                    statuses.append(int.from_bytes(fragment[-2:], "little"))  # Status is the last element
    assert statuses == [CANCEL]
    app.wait_log(r"C-FIND #7 Study Root IMAGE [^\n]*: cancelled by the peer after 0 matches, status 0xFE00")


def test_an_operation_not_offered_on_its_context_is_0211_saying_so(appliance):
    """UL-05: a C-FIND-RQ on the Verification context is answered 0211 (unrecognised operation)
    with the reason in its Error Comment; the requester's mistake is a WARNING (issue 22)."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    with contextlib.closing(pdus.associated(appliance.qr_port, called="EX_QUERY_SCP")) as sock:
        sock.sendall(b"".join(pdus.p_data(pdus.c_find(datasets.STUDY_ROOT_FIND, query))))
        [(_, command)] = pdus.pdvs(pdus.read_pdu(sock))
    answer = decode(BytesIO(command), True, True)
    assert answer.Status == 0x0211
    logged = appliance.wait_log(r"WARNING appliance\.association: QUERY-RETRIEVE-SCP #\d+ TEST_SCU@\S+: C-FIND-RQ #1 "
                                r"status 0x0211: (.*)")
    assert says_why(answer.get("ErrorComment"), logged.group(1)), (answer.get("ErrorComment"), logged.group(1))


# --- no library internals (UL-01) -----------------------------------------------------------

# What the service may import from pynetdicom: its documented PDU and primitive classes,
# presentation-context negotiation and dataset encoding.
PUBLIC = {
    "pynetdicom.pdu": {"A_ASSOCIATE_RQ", "A_ASSOCIATE_AC", "A_ASSOCIATE_RJ"},
    "pynetdicom.pdu_primitives": {"A_ASSOCIATE", "AsynchronousOperationsWindowNegotiation",
                                  "ImplementationClassUIDNotification", "ImplementationVersionNameNotification",
                                  "MaximumLengthNotification", "SCP_SCU_RoleSelectionNegotiation"},
    "pynetdicom.presentation": {"PresentationContext", "build_context", "negotiate_as_acceptor"},
    "pynetdicom.dsutils": {"encode", "decode"},
}


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                yield node.module, alias.name, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, node.lineno


def test_the_service_uses_the_libraries_public_api_only():
    """UL-01: no private module, name or attribute of pynetdicom or pydicom, and from pynetdicom
    only the pieces listed in PUBLIC: a patch release that renames an internal cannot silently
    change the service."""
    found = []
    for path in sorted([*(REPO / "appliance").rglob("*.py"), *(REPO / "service_tool").rglob("*.py")]):
        where = path.relative_to(REPO)
        for module, name, line in _imports(path):
            if not module.startswith(("pynetdicom", "pydicom")):
                continue
            if any(part.startswith("_") for part in module.split(".")) or (name or "").startswith("_"):
                found.append(f"{where}:{line}: private {module} {name or ''}")
            elif module.startswith("pynetdicom") and name not in PUBLIC.get(module, ()) \
                    and (module, name) != ("pynetdicom", None):  # `import pynetdicom`: its __version__
                found.append(f"{where}:{line}: {module}.{name} is not among the public pieces the service uses")
        text = path.read_text()
        for private in ("._accepted_cx", "._serve_request", ".dul.", "._sent_abort", ".state_machine",
                        "._data_set_file", "._config", "._recv_pdu", "._idle_timer"):
            if private in text:
                found.append(f"{where}: {private}")
    assert not found, "\n".join(found)
