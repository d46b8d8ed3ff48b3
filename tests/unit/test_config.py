"""The configuration loader and writer (CF-*, AE-02..AE-07, PC-04, TL-04).

Every refusal is a ConfigError naming the dotted key, so the service tool and the daemon's
start-up message point the installer at the line to fix.
"""

from __future__ import annotations

import os
import stat

import pytest
import tomlkit

from appliance.config import load_dict, load_file
from appliance.config.model import Config
from appliance.config.write import write_document
from appliance.codes import uids
from appliance.errors import ConfigError

REMOTE = {"ae_title": "PACS", "host": "pacs.example.org", "port": 104}

# (case id, document, dotted key the message must name)
INVALID = [
    # wrong types
    ("port-string", {"storage_scp": {"port": "4000"}}, "storage_scp.port"),
    ("port-float", {"storage_scp": {"port": 4000.0}}, "storage_scp.port"),
    ("port-bool", {"query_retrieve_scp": {"port": True}}, "query_retrieve_scp.port"),
    ("title-int", {"storage_scp": {"ae_title": 5}}, "storage_scp.ae_title"),
    ("bool-string", {"storage_scp": {"check_called_ae": "yes"}}, "storage_scp.check_called_ae"),
    ("timeout-string", {"timeouts": {"artim": "30s"}}, "timeouts.artim"),
    ("timeout-inf", {"timeouts": {"artim": float("inf")}}, "timeouts.artim"),
    ("timeout-nan", {"storage_scp": {"idle_timeout": float("nan")}}, "storage_scp.idle_timeout"),
    ("list-not-list", {"storage_scp": {"accepted_calling_aes": "MODALITY"}}, "storage_scp.accepted_calling_aes"),
    ("list-item-type", {"storage_scp": {"sop_classes": [1]}}, "storage_scp.sop_classes[0]"),
    ("section-not-table", {"storage": "data"}, "storage"),
    ("nested-not-table", {"storage_scp": {"default_values": []}}, "storage_scp.default_values"),
    ("remote-not-list", {"remote_aes": REMOTE}, "remote_aes"),
    # ranges
    ("port-zero-no-tls", {"storage_scp": {"port": 0}}, "storage_scp.port"),  # SE-07: the AE must listen
    ("tls-port-high", {"storage_scp": {"tls_port": 65536}}, "storage_scp.tls_port"),
    ("tls-port-same", {"query_retrieve_scp": {"tls_port": 4000}}, "query_retrieve_scp.tls_port"),
    ("tls-ports-same", {"storage_scp": {"tls_port": 2762}, "query_retrieve_scp": {"tls_port": 2762}},
     "query_retrieve_scp.tls_port"),
    ("tls-file-empty", {"tls": {"certificate": ""}}, "tls.certificate"),
    ("audit-scheme", {"audit": {"collector": "http://siem:514"}}, "audit.collector"),
    ("audit-no-port", {"audit": {"collector": "tcp://siem"}}, "audit.collector"),
    ("audit-bad-host", {"audit": {"collector": "udp://bad host:514"}}, "audit.collector"),
    ("audit-spool-zero", {"audit": {"spool_max_bytes": 0}}, "audit.spool_max_bytes"),
    ("port-high", {"query_retrieve_scp": {"port": 65536}}, "query_retrieve_scp.port"),
    ("port-negative", {"storage_scp": {"port": -1}}, "storage_scp.port"),
    ("remote-port", {"remote_aes": [{**REMOTE, "port": 70000}]}, "remote_aes[0].port"),
    ("pdu-small", {"storage_scp": {"max_pdu_size": 4095}}, "storage_scp.max_pdu_size"),
    ("pdu-zero", {"query_retrieve_scp": {"max_pdu_size": 0}}, "query_retrieve_scp.max_pdu_size"),
    ("pdu-huge", {"storage_scu": {"max_pdu_size": 2**32}}, "storage_scu.max_pdu_size"),
    ("pdu-send", {"network": {"max_pdu_send": 100}}, "network.max_pdu_send"),
    ("assoc-zero", {"storage_scp": {"max_associations": 0}}, "storage_scp.max_associations"),
    ("timeout-zero", {"timeouts": {"connect": 0}}, "timeouts.connect"),
    ("timeout-negative", {"query_retrieve_scp": {"idle_timeout": -1}}, "query_retrieve_scp.idle_timeout"),
    ("reserve-negative", {"storage": {"reserve_bytes": -1}}, "storage.reserve_bytes"),
    # MG-04: disk watermarks, whole percentages, the alert level the lower one
    ("warn-percent-high", {"storage": {"warn_free_percent": 101}}, "storage.warn_free_percent"),
    ("alert-percent-negative", {"storage": {"alert_free_percent": -1}}, "storage.alert_free_percent"),
    ("warn-percent-fraction", {"storage": {"warn_free_percent": 12.5}}, "storage.warn_free_percent"),
    ("alert-percent-string", {"storage": {"alert_free_percent": "5%"}}, "storage.alert_free_percent"),
    ("alert-above-warn", {"storage": {"warn_free_percent": 10, "alert_free_percent": 20}},
     "storage.alert_free_percent"),
    ("buffer-huge", {"network": {"socket_buffer_size": 2**31}}, "network.socket_buffer_size"),
    ("buffer-negative", {"network": {"socket_buffer_size": -1}}, "network.socket_buffer_size"),
    ("drain-negative", {"timeouts": {"shutdown_drain": -1}}, "timeouts.shutdown_drain"),
    ("log-level", {"logging": {"level": "verbose"}}, "logging.level"),
    ("log-size", {"logging": {"max_bytes": 0}}, "logging.max_bytes"),
    ("choice", {"storage_scp": {"duplicate_policy": "keep"}}, "storage_scp.duplicate_policy"),
    ("choice-hierarchy", {"storage_scp": {"hierarchy_conflict": "new_uid"}}, "storage_scp.hierarchy_conflict"),
    ("choice-limit", {"query_retrieve_scp": {"association_limit": "per_ip"}}, "query_retrieve_scp.association_limit"),
    ("choice-scu", {"storage_scu": {"context_mode": "all"}}, "storage_scu.context_mode"),
    ("data-dir-empty", {"storage": {"data_dir": " "}}, "storage.data_dir"),
    ("date-default", {"storage_scp": {"default_values": {"study_date": "2024-01-01"}}},
     "storage_scp.default_values.study_date"),
    # AE-07: invalid AE titles
    ("title-empty", {"storage_scp": {"ae_title": ""}}, "storage_scp.ae_title"),
    ("title-spaces", {"query_retrieve_scp": {"ae_title": "    "}}, "query_retrieve_scp.ae_title"),
    ("title-17", {"storage_scu": {"ae_title": "A" * 17}}, "storage_scu.ae_title"),
    ("title-backslash", {"storage_scp": {"ae_title": "EX\\SCP"}}, "storage_scp.ae_title"),
    ("title-control", {"storage_scp": {"ae_title": "EX\tSCP"}}, "storage_scp.ae_title"),
    ("title-non-ascii", {"storage_scp": {"ae_title": "ÄRZTE"}}, "storage_scp.ae_title"),
    ("calling-title", {"storage_scp": {"accepted_calling_aes": ["OK", "BAD\\"]}}, "storage_scp.accepted_calling_aes"),
    ("remote-title", {"remote_aes": [{**REMOTE, "ae_title": "A" * 17}]}, "remote_aes[0].ae_title"),
    # AE-06: STORAGE-SCP needs its own title (surrounding spaces are not significant)
    ("scp-equals-qr", {"storage_scp": {"ae_title": "EX_QUERY_SCP"}}, "storage_scp.ae_title"),
    ("scp-equals-scu", {"storage_scu": {"ae_title": " EX_STORE_SCP "}}, "storage_scp.ae_title"),
    ("same-port", {"query_retrieve_scp": {"port": 4000}}, "query_retrieve_scp.port"),
    # PC-04 and the SCP's transfer syntaxes
    ("no-implicit", {"storage_scp": {"transfer_syntaxes": [uids.EXPLICIT_LE]}}, "storage_scp.transfer_syntaxes"),
    ("unknown-ts", {"storage_scp": {"transfer_syntaxes": [uids.IMPLICIT_LE, "1.2.840.10008.1.2.2"]}},
     "storage_scp.transfer_syntaxes"),
    ("twice-ts", {"storage_scp": {"transfer_syntaxes": [uids.IMPLICIT_LE, uids.IMPLICIT_LE]}},
     "storage_scp.transfer_syntaxes"),
    ("bad-uid", {"storage_scp": {"sop_classes": ["1.2.03"]}}, "storage_scp.sop_classes"),
    ("no-classes", {"storage_scp": {"sop_classes": []}}, "storage_scp.sop_classes"),
    # unknown keys, at every depth
    ("unknown-top", {"storage_scpp": {}}, "storage_scpp"),
    ("unknown-key", {"storage_scp": {"aetitle": "X"}}, "storage_scp.aetitle"),
    ("unknown-nested", {"storage_scp": {"default_values": {"sex": "F"}}}, "storage_scp.default_values.sex"),
    ("unknown-remote", {"remote_aes": [{**REMOTE, "tls_port": 2762}]}, "remote_aes[0].tls_port"),
    ("internal-key", {"base_dir": "/"}, "base_dir"),
    # remote AE table
    ("remote-duplicate", {"remote_aes": [REMOTE, {**REMOTE, "ae_title": "PACS  ", "host": "10.0.0.2"}]},
     "remote_aes[1].ae_title"),
    ("remote-no-title", {"remote_aes": [{"host": "h", "port": 104}]}, "remote_aes[0].ae_title"),
    ("remote-no-host", {"remote_aes": [REMOTE, {"ae_title": "WS", "port": 104}]}, "remote_aes[1].host"),
    ("remote-no-port", {"remote_aes": [{"ae_title": "WS", "host": "h"}]}, "remote_aes[0].port"),
    ("remote-host-empty", {"remote_aes": [{**REMOTE, "host": ""}]}, "remote_aes[0].host"),
    ("remote-host-space", {"remote_aes": [{**REMOTE, "host": "pacs example"}]}, "remote_aes[0].host"),
    # addresses
    ("bind-name", {"network": {"bind_address": "localhost"}}, "network.bind_address"),
    ("bind-network", {"network": {"bind_address": "10.0.0.0/8"}}, "network.bind_address"),
    ("bind-bad-ip", {"network": {"bind_address": "10.0.0.256"}}, "network.bind_address"),
    ("allow-bad", {"storage_scp": {"accepted_addresses": ["10.0.0.0/33"]}}, "storage_scp.accepted_addresses"),
    ("allow-name", {"query_retrieve_scp": {"accepted_addresses": ["modality.example"]}},
     "query_retrieve_scp.accepted_addresses"),
]


@pytest.mark.parametrize("document, key", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_value_is_refused_naming_the_key(document, key):
    with pytest.raises(ConfigError) as caught:
        load_dict(document)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key}: ")


def test_every_invalid_key_is_listed_and_the_error_reads_as_the_first():  # TL-04, issue 22 item 4
    document = {"storage_scpp": {}, "storage_scp": {"port": 70000, "default_values": {"sex": "F"}},
                "timeouts": {"artim": "soon"},
                "remote_aes": [{**REMOTE, "host": "pacs example"}, {"ae_title": "WS", "port": 104}, "x"]}
    with pytest.raises(ConfigError) as caught:
        load_dict(document)
    assert [p.key for p in caught.value.problems] == [
        "storage_scpp", "storage_scp.port", "storage_scp.default_values.sex", "timeouts.artim",
        "remote_aes[0].host", "remote_aes[1].host", "remote_aes[2]"]
    assert (caught.value.key, str(caught.value)) == ("storage_scpp", "storage_scpp: unknown key")


def test_rules_between_keys_are_all_listed_once_every_key_is_valid():
    shared = {"storage_scp": {"ae_title": "EX_QUERY_SCP"}, "query_retrieve_scp": {"port": 4000},
              "storage": {"warn_free_percent": 5, "alert_free_percent": 10}}
    with pytest.raises(ConfigError) as caught:
        load_dict(shared)
    assert [p.key for p in caught.value.problems] == [
        "storage_scp.ae_title", "query_retrieve_scp.port", "storage.alert_free_percent"]
    # An invalid value stands in as its default, which the rules between keys would misjudge.
    with pytest.raises(ConfigError) as caught:
        load_dict({**shared, "timeouts": {"artim": -1}})
    assert [p.key for p in caught.value.problems] == ["timeouts.artim"]


VALID = [
    # AE-05: Q/R and SCU may share a title
    ("qr-shares-scu", {"storage_scu": {"ae_title": "EX_QUERY_SCP"}}),
    ("title-16", {"storage_scp": {"ae_title": "A" * 16}}),
    ("title-padded", {"storage_scp": {"ae_title": "  STORE  "}}),
    ("title-inner-space", {"storage_scp": {"ae_title": "MY STORE"}}),
    ("implicit-only", {"storage_scp": {"transfer_syntaxes": [uids.IMPLICIT_LE]}}),
    ("ts-reordered", {"storage_scp": {"transfer_syntaxes": [uids.IMPLICIT_LE, uids.EXPLICIT_LE]}}),
    ("bind-ipv4", {"network": {"bind_address": "192.0.2.1"}}),
    ("bind-ipv6", {"network": {"bind_address": "::1"}}),
    ("allow-lists", {"storage_scp": {"accepted_addresses": ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"],
                                     "accepted_calling_aes": ["MODALITY_1", "CT 2"]}}),
    ("remotes", {"remote_aes": [REMOTE, {"ae_title": "WS", "host": "2001:db8::5", "port": 11112},
                                {"ae_title": "LAB", "host": "10.1.2.3", "port": 4006}]}),
    ("timeout-int", {"timeouts": {"artim": 5}}),
    ("buffer-autotune", {"network": {"socket_buffer_size": 0}}),
    ("log-stderr-only", {"logging": {"file": ""}}),
    # SE-07: TLS beside or instead of the plain port
    ("tls-beside-plain", {"storage_scp": {"tls_port": 2762}, "query_retrieve_scp": {"tls_port": 2763}}),
    ("tls-only", {"storage_scp": {"port": 0, "tls_port": 2762}}),
    ("remote-tls", {"remote_aes": [{**REMOTE, "tls": True}]}),
    ("audit-collectors", {"audit": {"collector": "tls://siem.example.org:6514", "source_id": "ARCHIVE-1"}}),
    ("audit-udp-ip", {"audit": {"collector": "udp://[2001:db8::9]:514"}}),
    # MG-04: 0 turns a watermark off; with the warning off, any alert level
    ("watermarks-equal", {"storage": {"warn_free_percent": 10, "alert_free_percent": 10}}),
    ("warning-off", {"storage": {"warn_free_percent": 0, "alert_free_percent": 20}}),
    ("watermarks-off", {"storage": {"warn_free_percent": 0, "alert_free_percent": 0}}),
]


@pytest.mark.parametrize("document", [c[1] for c in VALID], ids=[c[0] for c in VALID])
def test_valid_document_is_accepted(document):
    load_dict(document)


def test_qr_and_scu_sharing_a_title_keep_it():  # AE-05
    config = load_dict({"storage_scu": {"ae_title": "EX_QUERY_SCP"}})
    assert config.storage_scu.ae_title == config.query_retrieve_scp.ae_title == "EX_QUERY_SCP"


def test_integer_seconds_become_floats():
    assert load_dict({"timeouts": {"artim": 5}}).timeouts.artim == 5.0


def test_defaults_are_the_conformance_statement():
    c = load_dict({})
    # AE-02, AE-03: titles and ports (F.4.4.1.1)
    assert (c.storage_scp.ae_title, c.query_retrieve_scp.ae_title, c.storage_scu.ae_title) == \
        ("EX_STORE_SCP", "EX_QUERY_SCP", "EX_STORE_SCU")
    assert (c.storage_scp.port, c.query_retrieve_scp.port) == (4000, 5000)
    # CF-01, CF-02, CF-14, CF-22 (D-1: 128 kbytes everywhere)
    assert c.storage_scp.max_pdu_size == c.query_retrieve_scp.max_pdu_size == c.storage_scu.max_pdu_size == 131072
    assert c.network.max_pdu_send == 131072
    # CF-03..CF-07 (seconds)
    t = c.timeouts
    assert (t.connect, t.artim, t.association_response, t.send, t.pdu_gap) == (10, 30, 30, 30, 30)
    assert c.network.socket_buffer_size == 1_342_177  # CF-08
    # CF-10..CF-12, SU-04 / CF-42
    assert c.storage_scu.max_associations == 10
    assert c.storage_scu.dimse_timeout == 5 * 60
    assert (c.storage_scu.open_retries, c.storage_scu.open_retry_delay) == (0, 30)
    # CF-15..CF-21
    s = c.storage_scp
    assert s.idle_timeout == 15 * 60
    assert (s.max_associations, s.association_limit) == (10, "total")
    assert (s.archive_retrieved, s.archive_unsolicited) == (False, True)
    assert s.always_new_association_for_reports is False
    assert (s.report_attempts, s.report_retry_interval) == (5, 5 * 60)
    # CF-22..CF-24
    q = c.query_retrieve_scp
    assert (q.max_associations, q.association_limit, q.idle_timeout) == (10, "total", 3 * 60)
    # CF-30..CF-42 proposals
    assert (s.duplicate_policy, s.coercion_warning, s.quarantine) == ("new_uid", False, False)
    assert s.hierarchy_conflict == "refuse"  # ST-26
    assert set(vars(s.default_values).values()) == {""}
    assert s.transfer_syntaxes == (uids.JPEG_BASELINE, uids.EXPLICIT_LE, uids.IMPLICIT_LE)
    assert (c.storage_scu.context_mode, c.storage_scu.us_conversion) == ("single", True)
    assert s.sop_classes == c.storage_scu.sop_classes == uids.DEFAULT_STORAGE_CLASSES
    for local in (s, q):
        assert (local.check_called_ae, local.accepted_calling_aes, local.accepted_addresses) == (True, (), ())
    assert s.exam_types == () and c.remote_aes == ()
    assert (c.storage.warn_free_percent, c.storage.alert_free_percent) == (15, 5)  # MG-04
    assert c == Config(base_dir=".")


def test_file_paths_resolve_against_the_config_directory(tmp_path):
    path = tmp_path / "etc" / "appliance.toml"
    path.parent.mkdir()
    path.write_text('[storage]\ndata_dir = "data"\n')
    from appliance.config import data_dir
    assert data_dir(load_file(path)) == tmp_path / "etc" / "data"
    path.write_text(f'[storage]\ndata_dir = "{tmp_path / "abs"}"\n')
    assert data_dir(load_file(path)) == tmp_path / "abs"
    from appliance.config import tls_path  # SE-08: /etc/appliance/tls on the box
    assert tls_path(load_file(path), "key") == tmp_path / "etc" / "tls" / "appliance.key"


def test_unreadable_and_malformed_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[storage_scp\nport = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_file(bad)


# --- atomic writes ---------------------------------------------------------------------------

ORIGINAL = '# installer notes\n[storage_scp]\nport = 4100  # firewall rule 17\n'


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name != "appliance.toml")


def test_write_document_replaces_the_file_keeping_comments_and_mode(tmp_path):
    path = tmp_path / "appliance.toml"
    path.write_text(ORIGINAL)
    path.chmod(0o640)
    document = tomlkit.parse(path.read_text())
    document["storage_scp"]["ae_title"] = "ARCHIVE"
    config = write_document(path, document)
    assert config.storage_scp.ae_title == "ARCHIVE"
    assert load_file(path).storage_scp == config.storage_scp
    text = path.read_text()
    assert "# installer notes" in text and "# firewall rule 17" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert _leftovers(tmp_path) == []


def test_write_document_creates_a_world_readable_file(tmp_path):
    path = tmp_path / "appliance.toml"
    write_document(path, {"storage_scp": {"port": 4100}})
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert load_file(path).storage_scp.port == 4100


@pytest.mark.parametrize("document, key", [
    ({"storage_scp": {"ae_title": "EX_QUERY_SCP"}}, "storage_scp.ae_title"),
    ({"storage_scp": {"port": 0}}, "storage_scp.port"),
    ({"surprise": 1}, "surprise"),
])
def test_write_document_refuses_invalid_documents_leaving_the_file_unchanged(tmp_path, document, key):
    path = tmp_path / "appliance.toml"
    path.write_text(ORIGINAL)
    before = os.stat(path)
    with pytest.raises(ConfigError) as caught:
        write_document(path, document)
    assert caught.value.key == key
    assert path.read_text() == ORIGINAL
    assert os.stat(path).st_ino == before.st_ino
    assert _leftovers(tmp_path) == []


def test_write_document_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "appliance.toml"
    path.write_text(ORIGINAL)

    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        write_document(path, {"storage_scp": {"port": 4200}})
    assert path.read_text() == ORIGINAL
    assert _leftovers(tmp_path) == []
