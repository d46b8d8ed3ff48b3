"""ST-25, D-19: an identical re-send is the object already stored, not a duplicate.

A modality that lost a C-STORE-RSP sends the same data set again, maybe under another calling
AE title: answered 0000, one index row, one file, "already stored" in the service log naming
the instance it equals. A data set one element different is a duplicate in the seed's sense
and goes through ST-17 (new UID) or ST-18 (replace). Every test runs under both
duplicate_policy values, against the real daemon, sending with pynetdicom or DCMTK storescu.
"""

from __future__ import annotations

import copy
import os
import re
import shutil

import pytest

import datasets
import scu
from datasets import CT
from helpers import Appliance, dcmtk, wait_for

pytestmark = pytest.mark.index_backends  # C-STORE on SQLite and on PostgreSQL (IX-01)

SUCCESS = 0x0000


@pytest.fixture(scope="module", params=["new_uid", "replace"])
def app(request, tmp_path_factory, new_index_url):
    app = Appliance(tmp_path_factory.mktemp(f"duplicates-{request.param}"),
                    {"storage_scp": {"duplicate_policy": request.param}}, index_url=new_index_url()).start()
    app.policy = request.param
    yield app
    assert app.stop() == 0, app.log()


def send(app, path, sender: str = "pynetdicom", calling: str = "MODALITY") -> None:
    """C-STORE the file on an association of its own; it must be answered 0000."""
    if sender == "pynetdicom":
        with scu.association(app.storage_port, calling=calling) as assoc:
            assert scu.send_file(assoc, path) == SUCCESS
    else:
        result = dcmtk("storescu", "-v", "-aet", calling, "-aec", app.storage_title, "127.0.0.1",
                       str(app.storage_port), str(path))
        output = result.stdout + result.stderr
        assert result.returncode == 0 and "Received Store Response (Success)" in output, output


def rows(app, uid: str) -> list[tuple[str, str, str]]:
    """(indexed UID, path, calling AE) of every instance sent with this SOP Instance UID."""
    return app.index_rows("SELECT sop_instance_uid, path, calling_ae FROM instance WHERE file_sop_instance_uid = ? "
                          "ORDER BY id", uid)


def already_stored(app, uid: str, equals: str) -> None:
    """The service log's line for a re-send answered as already stored."""
    indexed = "" if equals == uid else rf" \(indexed as {re.escape(equals)}\)"
    app.wait_log(rf"C-STORE {re.escape(uid)}{indexed} class {re.escape(CT)} status 0x0000: already stored: "
                 rf"the same data set as indexed instance {re.escape(equals)}\n")


@pytest.mark.parametrize("sender", ["pynetdicom", "storescu"])
def test_an_identical_resend_is_answered_0000_and_not_stored_again(app, tmp_path, sender):
    """ST-25: the same data set under another calling AE title (so another File Meta): 0000,
    the first copy's row and file stay, the second file is gone, the log says so."""
    ds = datasets.image(CT)
    sent = datasets.write(ds, tmp_path / "sent.dcm")
    before = set(app.stored_files())
    send(app, sent, sender, calling="MODALITY")
    send(app, sent, sender, calling="RETRY")

    already_stored(app, ds.SOPInstanceUID, ds.SOPInstanceUID)
    [(indexed, path, calling)] = rows(app, ds.SOPInstanceUID)
    assert (indexed, calling) == (ds.SOPInstanceUID, "MODALITY")
    assert set(app.stored_files()) - before == {app.data_dir / "store" / path}
    assert datasets.dataset_bytes(app.data_dir / "store" / path) == datasets.dataset_bytes(sent)


def test_one_element_different_is_a_duplicate_and_each_version_resent_is_not(app, tmp_path):
    """D-19: one element different (Instance Number) goes through ST-17 or ST-18; then each
    version sent again is compared with every instance sent with its UID, the one ST-17
    renamed included: already stored, unless ST-18 replaced that version (then it replaces
    again)."""
    first = datasets.image(CT, InstanceNumber="1")
    second = copy.deepcopy(first)
    second.InstanceNumber = "2"
    uid = first.SOPInstanceUID
    first_file = datasets.write(first, tmp_path / "first.dcm")
    second_file = datasets.write(second, tmp_path / "second.dcm")
    send(app, first_file)
    send(app, second_file)

    if app.policy == "new_uid":  # ST-17: both kept, the second under a new UID
        (kept, first_path, _), (renamed, second_path, _) = rows(app, uid)
        assert kept == uid and re.fullmatch(r"2\.25\.\d+", renamed)
        app.wait_log(rf"C-STORE {re.escape(uid)} \(indexed as {re.escape(renamed)}\) .*status 0x0000: stored")
        send(app, second_file, calling="RETRY")
        already_stored(app, uid, renamed)
        send(app, first_file, calling="RETRY")
        already_stored(app, uid, uid)
        assert [(row[0], row[1]) for row in rows(app, uid)] == [(kept, first_path), (renamed, second_path)]
    else:  # ST-18: the second replaced the first
        [(indexed, path, _)] = rows(app, uid)
        assert indexed == uid
        assert datasets.dataset_bytes(app.data_dir / "store" / path) == datasets.dataset_bytes(second_file)
        send(app, second_file, calling="RETRY")
        already_stored(app, uid, uid)
        assert [row[1] for row in rows(app, uid)] == [path]
        send(app, first_file, calling="RETRY")  # the replaced version is content the index no longer has
        app.wait_log(rf"C-STORE {re.escape(uid)} .*status 0x0000: stored; replaced the earlier instance")
        [(_, path, _)] = rows(app, uid)
        assert datasets.dataset_bytes(app.data_dir / "store" / path) == datasets.dataset_bytes(first_file)
    # Exactly the files the index names hold this UID: the re-sends left none behind.
    stored = {app.data_dir / "store" / row[1] for row in rows(app, uid)}
    wait_for(lambda: {p for p in app.stored_files() if datasets.dataset_bytes(p) in
                      (datasets.dataset_bytes(first_file), datasets.dataset_bytes(second_file))} == stored,
             "only the indexed files to hold the sent data sets")


def test_kill_9_right_after_an_identical_resend_leaves_one_copy(app, tmp_path):
    """ST-25 with ST-06: killed as soon as the re-send is answered (the first copy's row may
    not even be flushed yet), the restarted service holds one row and one file."""
    ds = datasets.image(CT)
    sent = datasets.write(ds, tmp_path / "sent.dcm")
    with scu.association(app.storage_port) as assoc:
        assert scu.send_file(assoc, sent) == SUCCESS
        assert scu.send_file(assoc, sent) == SUCCESS
        app.kill()
    app.start()

    [(indexed, path, _)] = rows(app, ds.SOPInstanceUID)
    assert indexed == ds.SOPInstanceUID
    holding = [p for p in app.stored_files() if datasets.dataset_bytes(p) == datasets.dataset_bytes(sent)]
    assert holding == [app.data_dir / "store" / path]


def test_recovery_removes_an_identical_resend_killed_before_its_file_went(app, tmp_path):
    """ST-25, crash safety: the state of a process killed between deciding "already stored"
    and removing the received file is a sealed file in store/ and spool/ that the index does
    not name. Start-up recovery indexes it again through the same decision and removes it."""
    ds = datasets.image(CT)
    sent = datasets.write(ds, tmp_path / "sent.dcm")
    send(app, sent)
    [(_, path, _)] = rows(app, ds.SOPInstanceUID)
    app.stored_files()  # its spool name gone: stored for good
    assert app.stop() == 0, app.log()
    name = "ef" + os.urandom(15).hex()
    resent = app.data_dir / "store" / "ef" / f"{name}.dcm"
    shutil.copyfile(app.data_dir / "store" / path, resent)  # sealed, as every stored file is
    os.link(resent, app.data_dir / "spool" / f"{name}.dcm")

    app.start()

    app.wait_log(rf"recovery: removed {name} \(SOP Instance UID {re.escape(ds.SOPInstanceUID)}\): already stored: "
                 rf"the same data set as indexed instance {re.escape(ds.SOPInstanceUID)}")
    assert not resent.exists() and not (app.data_dir / "spool" / f"{name}.dcm").exists()
    assert [row[1] for row in rows(app, ds.SOPInstanceUID)] == [path]
