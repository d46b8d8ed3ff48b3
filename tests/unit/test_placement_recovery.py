"""Start-up recovery of what a stopped or killed process left in the spool (ST-06, ST-18,
ST-25, ST-26), on a real directory and a real index.

A crash is simulated by stopping the protocol of store/files.py between two of its steps;
`Archive.recover` then decides every spool name as the daemon does before it listens.
"""

import datetime
import os
from pathlib import Path

import pytest

import datasets
from appliance.config.model import StorageSCP
from appliance.store import coercion
from appliance.store.db import open_index
from appliance.store.files import StorageArea
from appliance.store.header import read_header
from appliance.store.ingest import Archive, StoreRequest, file_meta
from appliance.store.models import Instance


pytestmark = pytest.mark.index_backends  # recovery decides from the index, on either backend (IX-01)


@pytest.fixture
def archive(tmp_path, new_index_url):
    index = open_index(new_index_url(), tmp_path)
    yield Archive(StorageSCP(), index, StorageArea(tmp_path), reserve_bytes=0)  # not started: recovery first
    index.close()


def received(archive: Archive, tmp_path: Path, name: str = "i", ds=None, **kwargs):
    """A data set (`ds`, else a new image) received into a file made ahead, up to (not
    including) its seal."""
    ds = ds or datasets.image(**kwargs)
    source = datasets.write(ds, tmp_path / f"{name}.dcm")
    request = StoreRequest(str(ds.SOPClassUID), str(ds.SOPInstanceUID), datasets.ELE, False, "TEST_SCU")
    incoming = archive.area.incoming()
    incoming.write(file_meta(request))
    incoming.write(datasets.dataset_bytes(source))
    return incoming, request


def sealed(archive: Archive, tmp_path: Path, name: str = "i", ds=None, **kwargs):
    incoming, request = received(archive, tmp_path, name, ds, **kwargs)
    incoming.seal(1_700_000_000_000_000_000)
    incoming.sync()
    incoming.close()
    return incoming, request


def index(archive: Archive, incoming, request) -> None:
    """The index row of `incoming`, committed (what the C-STORE pipeline does after the seal)."""
    header = read_header(incoming.store_path, request.implicit_vr)
    values = coercion.index_values(header, archive.policy.default_values, archive.policy.exam_types)
    with archive.index.write():
        archive.index_instance(values, request, incoming.relative, incoming.size,
                               datetime.datetime.now(datetime.timezone.utc))


def spool(archive: Archive) -> list[Path]:
    return sorted(archive.area.spool.iterdir())


def store_files(archive: Archive) -> list[Path]:
    return sorted(archive.area.store.rglob("*.dcm"))


def test_files_made_ahead_and_never_used_go_without_a_word(archive, caplog):
    archive.area.incoming()  # made, then the process died
    assert archive.recover() == (0, 0)
    assert spool(archive) == [] and store_files(archive) == []
    assert "recovery" not in caplog.text


def test_a_partial_receive_goes(archive, tmp_path):
    """Received but never sealed (the data set was incomplete, or refused): never acknowledged."""
    received(archive, tmp_path)
    assert archive.recover() == (0, 1)
    assert spool(archive) == [] and store_files(archive) == []


def test_an_indexed_instance_stays(archive, tmp_path):
    """Killed after the commit, before the flusher let the spool name go."""
    incoming, request = sealed(archive, tmp_path)
    index(archive, incoming, request)
    assert archive.recover() == (1, 0)
    assert store_files(archive) == [incoming.store_path] and spool(archive) == []


def test_a_sealed_instance_whose_row_was_lost_is_indexed_again(archive, tmp_path):
    """A power cut took the index's unflushed log: the sealed file is the journal. Indexed again
    as the C-STORE indexed it: its calling AE from the File Meta, its received time from the seal,
    and an ST-17 duplicate's new UID from its file's name."""
    first, first_request = sealed(archive, tmp_path, "first", sop_instance_uid="1.2.3.99")
    index(archive, first, first_request)
    first.finish()
    again, _ = sealed(archive, tmp_path, "again", sop_instance_uid="1.2.3.99")  # a duplicate (ST-17)

    assert archive.recover() == (1, 0)

    assert spool(archive) == []
    row = Instance.get(Instance.path == again.relative)
    assert (row.file_sop_instance_uid, row.sop_instance_uid) == ("1.2.3.99", f"2.25.{int(again.name, 16)}")
    assert row.calling_ae == "TEST_SCU"
    assert row.received_at == datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=datetime.timezone.utc)


def test_a_sealed_file_cut_short_goes(archive, tmp_path):
    """The seal names the size the file had: a file the power cut shortened is not indexed."""
    incoming, _ = sealed(archive, tmp_path)
    os.truncate(incoming.store_path, incoming.size // 2)
    assert archive.recover() == (0, 1)
    assert spool(archive) == [] and store_files(archive) == []


@pytest.mark.parametrize("committed", [True, False])
def test_interrupted_replacement_removes_the_old_file_only_if_its_row_was_replaced(archive, tmp_path, committed):
    archive.policy = StorageSCP(duplicate_policy="replace")
    old, request = sealed(archive, tmp_path, "old", sop_instance_uid="1.2.3.98")
    index(archive, old, request)
    old.finish()
    new, request = sealed(archive, tmp_path, "new", sop_instance_uid="1.2.3.98")
    if committed:  # its row flushed, the old file retired; killed before the flusher removed it
        index(archive, new, request)
        archive.area.retire(old.relative)

    archive.recover()  # not committed: the new file is sealed, indexed again, and replaces the old

    assert store_files(archive) == [new.store_path]
    assert spool(archive) == []
    assert [row.path for row in Instance.select()] == [new.relative]


def test_a_sealed_identical_resend_goes_as_its_c_store_decided(archive, tmp_path, caplog):
    """ST-25: killed after deciding that a re-send is already stored and before its file went,
    the sealed file is decided again the same way: removed, the first copy indexed alone."""
    ds = datasets.image(sop_instance_uid="1.2.3.97")
    first, request = sealed(archive, tmp_path, "first", ds)
    index(archive, first, request)
    first.finish()
    resent, _ = sealed(archive, tmp_path, "resent", ds)

    assert archive.recover() == (0, 0)

    assert store_files(archive) == [first.store_path] and spool(archive) == []
    assert [row.path for row in Instance.select()] == [first.relative]
    assert (f"recovery: removed {resent.name} (SOP Instance UID 1.2.3.97): already stored: the same data set as "
            "indexed instance 1.2.3.97") in caplog.text


@pytest.mark.parametrize("policy", ["refuse", "keep"])
def test_a_sealed_hierarchy_conflict_is_decided_by_the_policy(archive, tmp_path, policy):
    """ST-26: a process killed between refusing an instance whose series belongs to another
    study and removing its sealed file: recovery refuses it again ("refuse") or, had the policy
    been "keep", the C-STORE kept it and so does recovery."""
    archive.policy = StorageSCP(hierarchy_conflict=policy)
    first, request = sealed(archive, tmp_path, "first", study_uid="1.2.3.1", series_uid="1.2.3.1.1")
    index(archive, first, request)
    first.finish()
    other, _ = sealed(archive, tmp_path, "other", study_uid="1.2.3.2", series_uid="1.2.3.1.1")

    archive.recover()

    kept = [first] if policy == "refuse" else [first, other]
    assert store_files(archive) == sorted(f.store_path for f in kept) and spool(archive) == []
    assert sorted(row.path for row in Instance.select()) == sorted(f.relative for f in kept)


def test_other_names_in_the_spool_are_removed(archive):
    (archive.area.spool / "tmp-received.dcm").write_bytes(b"a partial file of an older release")
    assert archive.recover() == (0, 0)
    assert spool(archive) == []


def stored(archive: Archive, tmp_path: Path, count: int) -> list:
    """`count` instances stored for good (file sealed, row committed, spool name gone)."""
    made = []
    for n in range(count):
        incoming, request = sealed(archive, tmp_path, f"s{n}", study_uid="1.2.3.7", series_uid="1.2.3.7.1")
        index(archive, incoming, request)
        incoming.finish()
        made.append(incoming)
    return made


@pytest.mark.parametrize("committed", [True, False])
def test_interrupted_deletion_finishes_or_undoes_each_instance_as_its_row_says(archive, tmp_path, committed):
    """MG-02: killed after a deletion journaled its files (.old spool names): where the rows'
    removal was committed the files go, else they stay, and their spool names go either way."""
    instances = stored(archive, tmp_path, 3)
    archive.area.retire_all([i.relative for i in instances])
    if committed:
        with archive.index.write():
            Instance.delete().execute()

    assert archive.recover() == (0, 0)

    assert spool(archive) == []
    assert store_files(archive) == ([] if committed else sorted(i.store_path for i in instances))
    assert Instance.select().count() == (0 if committed else 3)


def test_a_deleted_instance_whose_spool_name_was_left_goes_quietly(archive, tmp_path, caplog):
    """MG-02: an instance deleted before the flusher took its spool name away (stored moments
    before): its row and store name are gone, the spool name goes without a warning."""
    incoming, request = sealed(archive, tmp_path)
    index(archive, incoming, request)
    (deleted,) = archive.area.retire_all([incoming.relative])
    with archive.index.write():
        Instance.delete().execute()
    archive.area.remove_retired([deleted])

    assert archive.recover() == (0, 0)

    assert spool(archive) == [] and store_files(archive) == []
    assert "unacknowledged" not in caplog.text
