"""`service-tool conformance` through the installed console script: the statement's tables say what
the configuration file sets (AE-02, AE-03, AE-08, AE-16, PC-01..PC-04, PC-11, AS-04/05/08, CF-*,
SE-02/03), in Markdown and in HTML alike, and an invalid file gets no statement (TL-04)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from appliance.codes import uids
from helpers import tool as run

STORAGE_SCP_CLASSES = "SOP Classes for STORAGE-SCP AE"
STORAGE_SCU_CLASSES = "SOP Classes for STORAGE-SCU AE"
SCP_CONTEXTS = "Accepted Presentation Contexts for STORAGE-SCP AE"
SCU_CONTEXTS = "Proposed Presentation Contexts for STORAGE-SCU AE"
PARAMETERS = "Configuration Parameters"
REMOTE_AES = "Remote AE Table"


def statement(tmp_path: Path, toml: str, fmt: str = "markdown") -> str:
    path = tmp_path / "appliance.toml"
    path.write_text(toml)
    result = run("--config", str(path), "conformance", "--format", fmt)
    assert result.returncode == 0, result.stderr
    return result.stdout


def markdown_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Caption -> rows as {header: cell}, read back from the "Table: caption" line and the pipe
    table after it, with Markdown's backslash escapes undone."""
    def cells(line: str) -> list[str]:
        return [re.sub(r"\\(.)", r"\1", cell).strip() for cell in re.findall(r"((?:\\.|[^|\\])*)\|", line[1:])]

    tables = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Table: "):
            header = cells(lines[i + 2])
            body = []
            for row in lines[i + 4:]:
                if not row.startswith("|"):
                    break
                body.append(dict(zip(header, cells(row), strict=True)))
            tables[re.sub(r"\\(.)", r"\1", line[len("Table: "):])] = body
    return tables


def html_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """The same from the HTML page, parsed as XML: a page that is not well-formed fails here."""
    root = ET.fromstring(text.split("\n", 1)[1])  # after <!DOCTYPE html>
    assert root.tag == "html" and root.find("head/title") is not None and root.find("body") is not None
    tables = {}
    for table in root.iter("table"):
        header = ["".join(th.itertext()) for th in table.iter("th")]
        tables["".join(table.find("caption").itertext())] = [
            dict(zip(header, ["".join(td.itertext()) for td in tr.iter("td")], strict=True))
            for tr in table.find("tbody").iter("tr")]
    return tables


def column(rows: list[dict[str, str]], name: str) -> list[str]:
    return [row[name] for row in rows]


def parameters(tables) -> dict[str, str]:
    return {row["Configuration Key"]: row["Value"] for row in tables[PARAMETERS]}


def test_default_sop_classes(tmp_path):
    tables = markdown_tables(statement(tmp_path, ""))
    assert set(column(tables[STORAGE_SCP_CLASSES], "SOP Class UID")) == {
        uids.VERIFICATION, uids.STORAGE_COMMITMENT_PUSH, *uids.DEFAULT_STORAGE_CLASSES}
    assert set(column(tables[STORAGE_SCU_CLASSES], "SOP Class UID")) == {uids.VERIFICATION,
                                                                        *uids.DEFAULT_STORAGE_CLASSES}
    assert set(column(tables[SCP_CONTEXTS], "SOP Class UID")) == {
        uids.VERIFICATION, uids.STORAGE_COMMITMENT_PUSH, *uids.DEFAULT_STORAGE_CLASSES}
    assert set(column(tables[SCU_CONTEXTS], "SOP Class UID")) == {uids.VERIFICATION, *uids.DEFAULT_STORAGE_CLASSES}
    ct = [row["Transfer Syntax UID"] for row in tables[SCP_CONTEXTS] if row["SOP Class UID"] == uids.CT]
    assert ct == [uids.EXPLICIT_LE, uids.IMPLICIT_LE]  # PC-02: no JPEG Baseline for CT


def test_reduced_sop_classes_are_exactly_the_configured_ones(tmp_path):
    """AE-16, PC-11: each AE's tables follow its own list; the US counterpart USr is not proposed
    because storage_scu.sop_classes does not list it."""
    tables = markdown_tables(statement(tmp_path, f"""
[storage_scp]
sop_classes = ["{uids.CT}", "{uids.MR}"]
[storage_scu]
sop_classes = ["{uids.US}", "{uids.SC}"]
"""))
    assert set(column(tables[STORAGE_SCP_CLASSES], "SOP Class UID")) == {
        uids.VERIFICATION, uids.STORAGE_COMMITMENT_PUSH, uids.CT, uids.MR}
    assert set(column(tables[SCP_CONTEXTS], "SOP Class UID")) == {
        uids.VERIFICATION, uids.STORAGE_COMMITMENT_PUSH, uids.CT, uids.MR}
    assert set(column(tables[STORAGE_SCU_CLASSES], "SOP Class UID")) == {uids.VERIFICATION, uids.US, uids.SC}
    assert set(column(tables[SCU_CONTEXTS], "SOP Class UID")) == {uids.VERIFICATION, uids.US, uids.SC}
    transfer = {row["SOP Class UID"]: (row["User of Service (SCU)"], row["Provider of Service (SCP)"])
                for row in tables["Network Services"] if row["Service"] == "Transfer"}
    assert transfer == {uids.CT: ("No", "Yes"), uids.MR: ("No", "Yes"), uids.US: ("Yes", "No"),
                        uids.SC: ("Yes", "No")}


def test_configured_titles_ports_and_timeouts_appear(tmp_path):
    tables = markdown_tables(statement(tmp_path, """
[storage_scp]
ae_title = "ARCHIVE_IN"
port = 11112
idle_timeout = 1200
max_pdu_size = 16384
[query_retrieve_scp]
ae_title = "ARCHIVE_QR"
port = 11113
idle_timeout = 45.5
max_associations = 3
association_limit = "per_calling_ae"
[storage_scu]
ae_title = "ARCHIVE_QR"
dimse_timeout = 90
[timeouts]
artim = 12
"""))
    assert {row["Application Entity"]: (row["AE Title"], row["TCP Port"])
            for row in tables["Application Entity Configuration"]} == {
        "STORAGE-SCP": ("ARCHIVE_IN", "11112"), "QUERY-RETRIEVE-SCP": ("ARCHIVE_QR", "11113"),
        "STORAGE-SCU": ("ARCHIVE_QR", "none (ephemeral source port)")}  # AE-05: QR and SCU may share
    values = parameters(tables)
    assert values["storage_scp.idle_timeout"] == "1200 s (20 min)"
    assert values["query_retrieve_scp.idle_timeout"] == "45.5 s"
    assert values["storage_scu.dimse_timeout"] == "90 s"
    assert values["timeouts.artim"] == "12 s"
    assert values["storage_scp.max_pdu_size"] == "16384 bytes"
    assert values["query_retrieve_scp.max_associations, query_retrieve_scp.association_limit"] == \
        "3 per calling AE title (configurable)"
    called = [row["When"] for row in tables["Association Rejection Reasons for STORAGE-SCP AE"]
              if row["Reason/Diagnosis"] == "7 called-AE-title-not-recognized"]
    assert called == ["The Called AE Title is not ARCHIVE_IN."]


@pytest.mark.parametrize("syntaxes", [
    [uids.EXPLICIT_LE, uids.IMPLICIT_LE, uids.JPEG_BASELINE],
    [uids.IMPLICIT_LE, uids.JPEG_BASELINE],
    list(uids.SCP_TS_PREFERENCE),
])
def test_transfer_syntaxes_follow_the_configured_order(tmp_path, syntaxes):
    """PC-03/PC-04: the preference table and each class's accepted contexts keep the file's order;
    JPEG Baseline only for storage_scp.jpeg_sop_classes (PC-02)."""
    listed = ", ".join(f'"{ts}"' for ts in syntaxes)
    tables = markdown_tables(statement(tmp_path, f"""
[storage_scp]
transfer_syntaxes = [{listed}]
jpeg_sop_classes = ["{uids.SC}"]
"""))
    assert column(tables["Transfer Syntax Preference for STORAGE-SCP AE"], "Transfer Syntax UID") == syntaxes
    accepted = tables[SCP_CONTEXTS]
    assert [r["Transfer Syntax UID"] for r in accepted if r["SOP Class UID"] == uids.SC] == syntaxes
    assert [r["Transfer Syntax UID"] for r in accepted if r["SOP Class UID"] == uids.US] == \
        [ts for ts in syntaxes if ts != uids.JPEG_BASELINE]


def test_remote_ae_table_with_what_each_may_do(tmp_path):
    """AE-08, TL-02: address and flags per remote AE; `store` turns STORAGE-SCP's calling-AE
    allow-list on (AS-05), QUERY-RETRIEVE-SCP's list is its own (AS-14); the service tool's own
    C-ECHO passes the lists (SE-02, issue 22 item 3)."""
    text = statement(tmp_path, """
[query_retrieve_scp]
accepted_addresses = ["10.0.0.0/8", "2001:db8::/32"]
[[remote_aes]]
ae_title = "PACS"
host = "pacs.example"
port = 104
store = true
[[remote_aes]]
ae_title = "VIEWER"
host = "2001:db8::30"
port = 11112
move_destination = false
commitment = false
""")
    tables = markdown_tables(text)
    assert ("One request passes both allow-lists whatever they hold: the diagnostic C-ECHO of the product's own "
            "service tool (service-tool echo --local), which calls as SERVICE_TOOL from the machine itself") in text
    assert list(tables[REMOTE_AES][0]) == ["AE Title", "Host", "TCP Port", "C-MOVE Destination",
                                           "Receives Commitment Results", "Admitted by STORAGE-SCP",
                                           "Admitted by QUERY-RETRIEVE-SCP"]
    assert [list(row.values()) for row in tables[REMOTE_AES]] == [
        ["PACS", "pacs.example", "104", "Yes", "Yes", "Yes", "Yes"],
        ["VIEWER", "2001:db8::30", "11112", "No", "No", "No", "Yes"],
    ]
    security = {row["Application Entity"]: row for row in tables["Association Level Security"]}
    assert security["STORAGE-SCP"]["Admitted Calling AE Titles"] == "PACS"
    assert security["QUERY-RETRIEVE-SCP"]["Admitted Calling AE Titles"] == "any"
    assert security["QUERY-RETRIEVE-SCP"]["Admitted IP Addresses"] == "10.0.0.0/8, 2001:db8::/32"
    reasons = {name: column(tables[f"Association Rejection Reasons for {name} AE"], "Reason/Diagnosis")
               for name in ("STORAGE-SCP", "QUERY-RETRIEVE-SCP")}
    assert "3 calling-AE-title-not-recognized" in reasons["STORAGE-SCP"]
    assert "3 calling-AE-title-not-recognized" not in reasons["QUERY-RETRIEVE-SCP"]


def test_an_empty_remote_ae_table_is_said_so(tmp_path):
    text = statement(tmp_path, "")
    assert REMOTE_AES not in markdown_tables(text)
    assert "The remote AE table is empty: every C-MOVE is answered A801" in text


def test_html_is_a_well_formed_page_with_the_same_tables(tmp_path):
    # A title with characters that mean something in Markdown and HTML: both must escape them.
    toml = """
[storage_scp]
sop_classes = ["1.2.840.10008.5.1.4.1.1.2"]
[[remote_aes]]
ae_title = "A<B&C|D*_E_"
host = "10.0.0.9"
port = 104
"""
    markdown = markdown_tables(statement(tmp_path, toml))
    html = html_tables(statement(tmp_path, toml, "html"))
    assert html == markdown
    assert column(html[REMOTE_AES], "AE Title") == ["A<B&C|D*_E_"]
    assert set(column(html[STORAGE_SCP_CLASSES], "SOP Class UID")) == {
        uids.VERIFICATION, uids.STORAGE_COMMITMENT_PUSH, uids.CT}


def test_output_file_is_replaced_with_the_statement(tmp_path):
    config, out = tmp_path / "appliance.toml", tmp_path / "statement.html"
    config.write_text('[storage_scp]\nae_title = "ARCHIVE"\n')
    out.write_text("old statement")
    result = run("--config", str(config), "conformance", "--format", "html", "--output", str(out))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert out.read_text() == statement(tmp_path, config.read_text(), "html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["appliance.toml", "statement.html"]  # no temporary left


def test_unwritable_output_exits_2(tmp_path):
    config = tmp_path / "appliance.toml"
    config.write_text("")
    result = run("--config", str(config), "conformance", "--output", str(tmp_path / "missing" / "statement.md"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"cannot write {tmp_path / 'missing' / 'statement.md'}: ")


@pytest.mark.parametrize("text, key", [
    ('[storage_scp]\ntransfer_syntaxes = ["1.2.840.10008.1.2.1"]\n', "storage_scp.transfer_syntaxes"),  # PC-04
    ('[storage_scu]\nsop_classes = ["1.2.840.10008.5.1.4.1.1.02"]\n', "storage_scu.sop_classes"),
    ('[storage_scp]\nae_title = "EX_STORE_SCU"\n', "storage_scp.ae_title"),  # AE-06
])
def test_invalid_configuration_exits_1_naming_the_key(tmp_path, text, key):
    config, out = tmp_path / "appliance.toml", tmp_path / "statement.md"
    config.write_text(text)
    result = run("--config", str(config), "conformance", "--output", str(out))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith(f"configuration invalid: {key}: ")
    assert not out.exists()


def test_help():
    result = run("conformance", "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: service-tool conformance")
    assert "--format {markdown,html}" in result.stdout and "--output FILE" in result.stdout


def test_each_table_of_statuses_returned_says_that_a_refusal_says_why(tmp_path):
    """UL-05: after the tables of the statuses the SCPs return (C-STORE, N-ACTION, C-FIND,
    C-MOVE) the statement says that failures and warnings carry an Error Comment; not after the
    tables of statuses the service reads (N-EVENT-REPORT, STORAGE-SCU's C-STORE)."""
    text = statement(tmp_path, "")
    after = dict(re.findall(r"^Table: (.*)\n\n(?:\|.*\n)+\n(?=(.*)$)", text, re.M))  # caption: what follows
    says = "Every failure and warning response carries an Error Comment (0000,0902) with the reason the service log"
    assert {caption for caption, paragraph in after.items() if paragraph.startswith(says)} == {
        "STORAGE-SCP C-STORE Response Status Return Reasons", "STORAGE-SCP N-ACTION Response Status Return Reasons",
        "QUERY-RETRIEVE-SCP C-FIND Response Status Return Behaviour",
        "QUERY-RETRIEVE-SCP C-MOVE Response Status Return Behaviour"}
