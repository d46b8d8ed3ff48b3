"""DCMTK dcmqrscp.cfg <-> the remote AE table (service_tool/dcmqrscp_cfg.py): DCMTK's own sample,
the format's corners, warnings and refusals by line, and a rendered file run by real dcmqrscp."""

from __future__ import annotations

import gzip
import re
import subprocess
from pathlib import Path

import pytest

from appliance.config import load_dict
from helpers import accepts, dcmtk, free_port, wait_for
from service_tool import dcmqrscp_cfg

# Where DCMTK packages put their sample: Debian's /etc, a source build's etc or docs.
SAMPLES = ["/etc/dcmtk/dcmqrscp.cfg", "/usr/local/etc/dcmtk/dcmqrscp.cfg", "/usr/share/doc/dcmtk/examples/dcmqrscp.cfg",
           "/usr/share/doc/dcmtk/examples/dcmqrscp.cfg.gz"]


def installed_sample() -> str:
    path = next((Path(p) for p in SAMPLES if Path(p).exists()), None)
    assert path is not None, f"DCMTK's sample dcmqrscp.cfg is in none of {SAMPLES}"
    return gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()


def line_of(text: str, start: str) -> int:
    """The number of the line that begins with `start`."""
    return next(n for n, line in enumerate(text.splitlines(), 1) if line.startswith(start))


def remotes(imported) -> list[tuple]:
    return [(r.ae_title, r.host, r.port, r.store, r.query) for r in imported.remotes]


def test_dcmtk_sample_with_its_examples_enabled():
    shipped = installed_sample()
    assert all(re.match(r"line \d+: ", w) for w in dcmqrscp_cfg.parse(shipped).warnings)
    # Debian ships the examples commented out (upstream has them active): enable them, as its
    # text tells the installer to.
    text = re.sub(r"(?m)^#(?=[A-Za-z\"])", "", shipped)
    imported = dcmqrscp_cfg.parse(text)
    # acmeCTcompany (acme1, acme2) and unitedMRcompany are the peers of RW entries.
    assert remotes(imported) == [("ACME1", "acmehost1", 5678, True, True), ("ACME2", "acmehost2", 5678, True, True),
                                 ("UNITED1", "unitedhost1", 104, True, True), ("UNITED2", "unitedhost2", 104, True, True)]
    assert all(r.move_destination and r.commitment for r in imported.remotes)
    for start, says in [("NetworkTCPPort", "NetworkTCPPort is not imported"),
                        ('"Acme CT Company"', "VendorTable entry 'Acme CT Company' is not imported"),
                        ("ACME_STORE", "AETable entry ACME_STORE ("),
                        ("UNITED_STORE", "AETable entry UNITED_STORE (")]:
        assert f"line {line_of(text, start)}: {says}" in "\n".join(imported.warnings)
    # Both variants have an R entry for ANY next to the RW entries with peers.
    assert any("admits ANY calling AE" in w and "query = true" in w for w in imported.warnings)


CORNERS = """\
# Global part
NetworkTCPPort = 104

HostTable BEGIN
# column-1 comment
   # indented comment
mod1 = (MOD1, mod1.example, 104)
mod2 = (MOD2,
        10.0.0.2, 11112)
viewers = (VIEWER, viewer.example, 104), (VIEWER2, viewer.example, 105)
modalities = mod1, mod2
everyone = modalities,
           viewers
archive = (ARCHIVE, 2001:db8::30, 11112)
HostTable END

AETable BEGIN
STORE   /data/store  RW  (10, 1024mb)  modalities
QUERY   /data/query  R   (10, 1024mb)  everyone
INBOX   /data/inbox  W   (1, 64kb)     (PUSHER, 10.0.0.9, 104)
PUBLIC  /data/pub    R   (10, 1024mb)  ANY
AETable END
"""


def test_multi_line_entries_groups_comments_and_any():
    imported = dcmqrscp_cfg.parse(CORNERS)
    assert remotes(imported) == [
        ("MOD1", "mod1.example", 104, True, True),  # STORE (RW) and QUERY via everyone -> modalities
        ("MOD2", "10.0.0.2", 11112, True, True),  # a peer spanning two lines
        ("VIEWER", "viewer.example", 104, False, True),  # two peers under one name, reached by a
        ("VIEWER2", "viewer.example", 105, False, True),  # group continued on the next line
        ("ARCHIVE", "2001:db8::30", 11112, False, False),  # in no AETable entry: a move destination
        ("PUSHER", "10.0.0.9", 104, True, False),  # a peer written in the AETable; W gives store
    ]
    warnings = imported.warnings
    assert "line 9: continues the entry of line 8; dcmqrscp reads every line as an entry of its own, " \
           "so it misreads or refuses this one" in warnings
    assert any(w.startswith("line 13: continues the entry of line 12;") for w in warnings)
    # PUBLIC admits anyone to query, but QUERY's peers turn that allow-list on; nobody may store
    # without a peer list, so the store side agrees with dcmqrscp.
    assert any(w.startswith("line 21: AETable entry admits ANY calling AE, but the peers of lines 18, 19")
               and "query = true" in w for w in warnings)
    assert not any("store = true, which turns on" in w for w in warnings)
    assert any(w.startswith("line 20: AETable entry INBOX (/data/inbox W (1, 64kb))") and
               "dcmqrscp also answered their C-FIND and C-MOVE there" in w for w in warnings)


def test_what_the_appliance_cannot_hold_is_a_warning_on_its_line():
    text = """\
MaxPDUSize = 16384
HostTable BEGIN
a = (PACS, pacs.example, 104)
b = (PACS, other.example, 104)
c = (PACS, PACS.EXAMPLE, 104)
d = (LONG_TITLE_OF_17CH, host.example, 104)
e = (BADHOST, acme_host, 104)
f = (NOPORT, host.example, 0)
a = (OTHER, other.example, 11112)
HostTable END
VendorTable BEGIN
"Acme" = a
VendorTable END
AETable BEGIN
ARCHIVE /data/a RW (10, 10mb) ANY
ARCHIVE /data/b R (10, 10mb) ANY
AETable END
"""
    imported = dcmqrscp_cfg.parse(text)
    assert remotes(imported) == [("PACS", "pacs.example", 104, False, False),
                                 ("OTHER", "other.example", 11112, False, False)]
    assert all(re.match(r"line \d+: ", w) for w in imported.warnings)
    said = "\n".join(imported.warnings)
    for expected in [
        "line 1: MaxPDUSize is not imported; the appliance's own are storage_scp.max_pdu_size",
        "line 4: PACS is defined again as other.example:104; the appliance keeps one address per title, "
        "line 3's pacs.example:104",
        "line 6: remote AE LONG_TITLE_OF_17CH is not imported: AE title: 'LONG_TITLE_OF_17CH' is longer than 16",
        "line 7: remote AE BADHOST is not imported: host: 'acme_host' is neither an IP address nor a host name",
        "line 8: remote AE NOPORT is not imported: port: must be a TCP port",
        "line 9: symbolic name a is defined again; dcmqrscp uses line 3's",
        "line 12: VendorTable entry 'Acme' is not imported",
        "line 15: AETable entry ARCHIVE (/data/a RW (10, 10mb)) is dcmqrscp's own AE, not imported",
        "line 16: AETable entry ARCHIVE (/data/b R (10, 10mb))",
    ]:
        assert expected in said
    assert "the title is also on line 15, and the appliance has one AE per title" in said
    assert not any(w.startswith("line 5:") for w in imported.warnings)  # host names ignore case


@pytest.mark.parametrize("text, line", [
    ("NetworkTCPPort = 104\nMaxPDU = 4096\n", 2),  # unknown keyword
    ("HostTable BEGIN\nm = (M, h, 104)\n", 1),  # no END
    ("HostTable END\n", 1),  # END without BEGIN
    ("HostTable BEGIN\nm = (M, h, 104)\nAETable BEGIN\n", 3),  # a table inside a table
    ("HostTable BEGIN\nm = (M, h, 104)\ng = m, n\nHostTable END\n", 3),  # undefined name
    ("AETable BEGIN\nA /d RW (1, 1mb) m\nAETable END\nHostTable BEGIN\nm = (M, h, 104)\nHostTable END\n", 2),
    ("HostTable BEGIN\nm = (M, h)\nHostTable END\n", 2),  # a peer of two values
    ("HostTable BEGIN\nm = (M, h, port)\nHostTable END\n", 2),
    ("HostTable BEGIN\nm = (M,\n  h, 104\nHostTable END\n", 2),  # never closed
    ("HostTable BEGIN\nm = (\"M A\", h, 104)\nHostTable END\n", 2),  # a quote inside a peer
    ("HostTable BEGIN\nm = M, h, 104)\nHostTable END\n", 2),  # stray parenthesis
    ("HostTable BEGIN\n(M, h, 104)\nHostTable END\n", 2),  # no name
    ("HostTable BEGIN\nm\nHostTable END\n", 2),  # a name without peers
    ("AETable BEGIN\nA /d X (1, 1mb) ANY\nAETable END\n", 2),  # access
    ("AETable BEGIN\nA /d RW (1, 1 mb) ANY\nAETable END\n", 2),  # quota
    ("AETable BEGIN\nA /d RW (0, 1mb) ANY\nAETable END\n", 2),
    ("AETable BEGIN\nA /d RW ANY\nAETable END\n", 2),  # no quota
    ("AETable BEGIN\nA /d RW (1, 1mb)\n  ANY extra\nAETable END\n", 3),
])
def test_syntax_errors_name_the_line(text, line):
    with pytest.raises(ValueError, match=rf"^line {line}: "):
        dcmqrscp_cfg.parse(text)


ROUND_TRIP = [
    {"ae_title": "CT_ROOM_1", "host": "10.0.4.21", "port": 104, "store": True},
    {"ae_title": "VIEWER1", "host": "viewer1.radiology.example", "port": 11112, "query": True},
    {"ae_title": "WORKSTATION", "host": "2001:db8::30", "port": 104, "store": True, "query": True},
    {"ae_title": "PACS", "host": "10.0.4.9", "port": 104},
    # symbolic names: these collide once lower-cased and cleaned, or would be read as keywords
    {"ae_title": "ct.1", "host": "10.0.4.22", "port": 104, "store": True},
    {"ae_title": "CT_1", "host": "10.0.4.23", "port": 104, "query": True},
    {"ae_title": "ANY", "host": "10.0.4.24", "port": 104, "store": True},
    {"ae_title": "HostTable", "host": "10.0.4.25", "port": 104, "query": True},
    {"ae_title": "#1", "host": "10.0.4.26", "port": 104, "store": True, "query": True},
]


def test_render_then_parse_gives_back_the_remote_aes_and_flags():
    config = load_dict({"query_retrieve_scp": {"ae_title": "#EX QUERY"}, "remote_aes": ROUND_TRIP})
    back = dcmqrscp_cfg.parse(dcmqrscp_cfg.render(config, "/srv/dcmqrscp"))
    assert remotes(back) == [(r["ae_title"], r["host"], r["port"], r.get("store", False), r.get("query", False))
                             for r in ROUND_TRIP]


def test_render_leaves_out_with_a_comment_what_dcmqrscp_cannot_hold():
    config = load_dict({
        "storage_scp": {"accepted_addresses": ["10.0.0.0/8"]},
        "query_retrieve_scp": {"accepted_calling_aes": ["VIEWER9"]},
        "remote_aes": [{"ae_title": "CT ROOM", "host": "10.0.4.21", "port": 104, "store": True},
                       {"ae_title": "PACS", "host": "10.0.4.9", "port": 104, "move_destination": False}]})
    text = dcmqrscp_cfg.render(config, "/srv/dcmqrscp")
    assert "# CT ROOM: not exported; a HostTable peer's title cannot hold a blank" in text
    assert "# PACS: move_destination = false is not exported" in text
    assert "# storage_scp.accepted_addresses: not exported" in text
    assert "# query_retrieve_scp.accepted_calling_aes VIEWER9: not exported" in text
    # Both allow-lists are on with no peer dcmqrscp can hold: an AETable entry would need one
    # (or ANY, which admits everyone), so the titles are left out.
    assert "# EX_STORE_SCP: left out" in text and "# EX_QUERY_SCP: left out" in text
    assert remotes(dcmqrscp_cfg.parse(text)) == [("PACS", "10.0.4.9", 104, False, False)]
    with pytest.raises(ValueError, match="quote or a parenthesis"):
        dcmqrscp_cfg.render(config, "/srv/dcm(qr)")


# --- real dcmqrscp -----------------------------------------------------------------------------

# Enough store peers (16-character titles) that their group does not fit on one line.
MODALITIES = [f"MODALITY_{n:07d}" for n in range(40)]


@pytest.fixture
def dcmqrscp(tmp_path):
    """dcmqrscp running a rendered config: the box titles, the peers, its port."""
    port = free_port()
    config = load_dict({
        "storage_scp": {"port": port, "max_pdu_size": 262144},  # above dcmqrscp's 131072
        "query_retrieve_scp": {"ae_title": "EX QUERY"},  # a blank: the AETable must quote it
        "remote_aes": [{"ae_title": t, "host": "127.0.0.1", "port": 104, "store": True} for t in MODALITIES]
                      + [{"ae_title": "VIEWER1", "host": "127.0.0.1", "port": 104, "query": True},
                         {"ae_title": "PACS", "host": "127.0.0.1", "port": 104}]})
    storage = tmp_path / "storage area"
    storage.mkdir()
    text = dcmqrscp_cfg.render(config, str(storage))
    assert sum(len(t) + 2 for t in MODALITIES) > 510  # one line could not list them
    assert max(len(line) for line in text.splitlines()) <= 510
    cfg, log = tmp_path / "dcmqrscp.cfg", tmp_path / "dcmqrscp.log"
    cfg.write_text(text)
    with open(log, "wb") as out:
        # -dhl: the caller's host is compared as the IP address 127.0.0.1 (no name lookup). Not -s:
        # 3.6.7's single-process mode exits after its first association.
        proc = subprocess.Popen(["dcmqrscp", "-d", "-dhl", "-c", str(cfg)],
                                stdout=out, stderr=subprocess.STDOUT, env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"})
    try:
        wait_for(lambda: proc.poll() is not None or accepts(port), "dcmqrscp to listen")
        assert proc.poll() is None, f"dcmqrscp exited with {proc.returncode}:\n{text}\n{log.read_text(errors='replace')}"
        yield port
    finally:
        proc.kill()
        proc.wait(10)


def echo(port: int, calling: str, called: str) -> bool:
    result = dcmtk("echoscu", "-aet", calling, "-aec", called, "127.0.0.1", str(port), timeout=30)
    assert result.returncode == 0 or "Association Rejected" in result.stderr, result.stderr
    return result.returncode == 0


def test_real_dcmqrscp_admits_only_the_listed_peers(dcmqrscp):
    assert echo(dcmqrscp, MODALITIES[0], "EX_STORE_SCP")
    assert echo(dcmqrscp, MODALITIES[-1], "EX_STORE_SCP")  # reached through the sub-groups
    assert echo(dcmqrscp, "VIEWER1", "EX QUERY")
    assert not echo(dcmqrscp, "VIEWER1", "EX_STORE_SCP")  # query only
    assert not echo(dcmqrscp, MODALITIES[0], "EX QUERY")  # store only
    assert not echo(dcmqrscp, "PACS", "EX_STORE_SCP")  # a remote AE with neither flag
    assert not echo(dcmqrscp, "STRANGER", "EX QUERY")  # not in the table
