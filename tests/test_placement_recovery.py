"""Start-up recovery of interrupted placements and replacements (ST-06, ST-18), on a real directory.

A crash is simulated by stopping the protocol between two of its steps; `recover` is then
given the index's answer for each path, exactly as the daemon asks the index at start-up.
"""

from pathlib import Path

import pytest

from appliance.store.files import StorageArea


def received(area: StorageArea, content: bytes = b"dataset") -> Path:
    path = area.spool / "tmp-received.dcm"  # the name pynetdicom's temporary file would have
    path.write_bytes(content)
    return path


def store_files(area: StorageArea) -> list[Path]:
    return [p for p in area.store.rglob("*.dcm")]


@pytest.mark.parametrize("committed", [True, False])
def test_interrupted_placement_kept_only_if_indexed(tmp_path, committed):
    area = StorageArea(tmp_path)
    placement = area.place(received(area))  # crash after placing, around the index commit
    indexed = {placement.relative} if committed else set()

    assert area.recover(lambda relative: relative in indexed) == ((1, 0) if committed else (0, 1))

    assert store_files(area) == ([placement.store_path] if committed else [])
    assert list(area.spool.iterdir()) == []


@pytest.mark.parametrize("committed", [True, False])
def test_interrupted_replacement_removes_old_file_only_if_row_replaced(tmp_path, committed):
    area = StorageArea(tmp_path)
    old = area.place(received(area, b"old"))
    old.commit()
    new = area.place(received(area, b"new"))
    area.retire(old.relative)  # crash before the replaced file is removed
    indexed = {new.relative} if committed else {old.relative}

    area.recover(lambda relative: relative in indexed)

    expected = {new.store_path} if committed else {old.store_path}
    assert set(store_files(area)) == expected
    assert list(area.spool.iterdir()) == []


def test_partial_receive_files_are_removed(tmp_path):
    area = StorageArea(tmp_path)
    received(area)

    assert area.recover(lambda relative: False) == (0, 1)
    assert list(area.spool.iterdir()) == []
