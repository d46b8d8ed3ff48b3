"""Start-up recovery of what a stopped or killed process left in the spool (ST-06, ST-18), on a
real directory and a real index.

A crash is simulated by stopping the protocol of store/files.py between two of its steps;
`Archive.recover` then decides every spool name as the daemon does before it listens.
"""

import datetime
from pathlib import Path

import pytest

import datasets
from appliance.config.model import StorageSCP
from appliance.store import coercion
from appliance.store.db import Index
from appliance.store.files import StorageArea
from appliance.store.header import read_header
from appliance.store.ingest import Archive, StoreRequest, file_meta
from appliance.store.models import Instance, Patient, Series, Study


@pytest.fixture
def archive(tmp_path):
    index = Index(tmp_path / "index.sqlite")
    yield Archive(StorageSCP(), index, StorageArea(tmp_path), reserve_bytes=0)  # not started: recovery first
    index.close()


def received(archive: Archive, tmp_path: Path, name: str = "i"):
    """A data set received into a file made ahead, up to (not including) the flush and commit."""
    ds = datasets.image()
    source = datasets.write(ds, tmp_path / f"{name}.dcm")
    request = StoreRequest(str(ds.SOPClassUID), str(ds.SOPInstanceUID), datasets.ELE, False, "TEST_SCU")
    incoming = archive.area.incoming()
    incoming.write(file_meta(request))
    incoming.write(datasets.dataset_bytes(source))
    return incoming, request


def index(archive: Archive, incoming, request) -> None:
    """The index row of `incoming`, committed (what the index writer does)."""
    header = read_header(incoming.store_path, request.implicit_vr)
    values = coercion.index_values(header, archive.policy.default_values, archive.policy.exam_types)
    with archive.index.write():
        archive.index_instance(values, request, incoming.relative, incoming.size,
                               datetime.datetime.now(datetime.timezone.utc))


def spool(archive: Archive) -> list[Path]:
    return sorted(archive.area.spool.iterdir())


def store_files(archive: Archive) -> list[Path]:
    return sorted(p for p in archive.area.store.rglob("*.dcm"))


def test_files_made_ahead_and_never_used_go_without_a_word(archive, caplog):
    archive.area.incoming()  # made, then the process died
    assert archive.recover() == (0, 0)
    assert spool(archive) == [] and store_files(archive) == []
    assert "recovery" not in caplog.text


@pytest.mark.parametrize("committed", [True, False])
def test_a_received_instance_is_kept_only_if_indexed(archive, tmp_path, committed):
    incoming, request = received(archive, tmp_path)
    incoming.sync()
    if committed:
        index(archive, incoming, request)  # crash after the commit, before the spool name went

    assert archive.recover() == ((1, 0) if committed else (0, 1))

    assert store_files(archive) == ([incoming.store_path] if committed else [])
    assert spool(archive) == []
    assert Instance.select().count() == (1 if committed else 0)


def test_an_indexed_instance_whose_data_did_not_reach_the_disk_goes_with_its_rows(archive, tmp_path):
    """The commit and the file's flush overlap: after a power cut the row may be there while the
    file is short. Never acknowledged, so it goes, and the series, study and patient it alone
    made go with it; an older instance of another study stays."""
    kept, kept_request = received(archive, tmp_path, "kept")
    index(archive, kept, kept_request)
    kept.done()
    incoming, request = received(archive, tmp_path, "cut")
    index(archive, incoming, request)
    with open(incoming.store_path, "r+b") as f:  # what reached the disk: the first half
        f.truncate(incoming.size // 2)

    assert archive.recover() == (0, 1)

    assert store_files(archive) == [kept.store_path] and spool(archive) == []
    assert [row.sop_instance_uid for row in Instance.select()] == [kept_request.sop_instance_uid]
    assert (Series.select().count(), Study.select().count(), Patient.select().count()) == (1, 1, 1)


@pytest.mark.parametrize("committed", [True, False])
def test_interrupted_replacement_removes_the_old_file_only_if_its_row_was_replaced(archive, tmp_path, committed):
    old, request = received(archive, tmp_path, "old")
    index(archive, old, request)
    old.done()
    new, _ = received(archive, tmp_path, "new")
    new.sync()
    archive.area.retire(old.relative)  # journaled before the commit; crash around it
    if committed:
        Instance.update(path=new.relative, size=new.size).where(Instance.path == old.relative).execute()

    archive.recover()

    assert store_files(archive) == [new.store_path if committed else old.store_path]
    assert spool(archive) == []


def test_other_names_in_the_spool_are_removed(archive):
    (archive.area.spool / "tmp-received.dcm").write_bytes(b"a partial file of an older release")
    assert archive.recover() == (0, 0)
    assert spool(archive) == []
