"""What STORAGE-SCU proposes and which context it sends each instance on, against the real
daemon: the context modes (PC-08, PC-09), the configured class set (PC-11), JPEG Baseline
never decompressed (PC-12) and the retired/current US conversion (SU-09)."""

from __future__ import annotations

import pytest
from pynetdicom.presentation import build_context

import datasets
import scu
from destinations import Destination, move, move_contexts, move_identifier
from helpers import free_port
from query_archive import uid

US_STUDY = uid("S50")
US_RETIRED_UID, US_UID, JPEG_UID = uid("S50.1.1"), uid("S50.1.2"), uid("S50.1.3")


def us_archive(make_appliance, tmp_path, storage_scu: dict | None = None):
    """An appliance whose study S50 holds a retired-class US image, a current-class one and a
    JPEG Baseline one; DEST in its remote AE table. Returns (appliance, DEST port)."""
    port = free_port()
    app = make_appliance({"remote_aes": [{"ae_title": "DEST", "host": "127.0.0.1", "port": port}],
                          "storage_scu": storage_scu or {}})
    images = [(US_RETIRED_UID, datasets.US_RETIRED, datasets.ELE), (US_UID, datasets.US, datasets.ILE),
              (JPEG_UID, datasets.US, datasets.JPEG_BASELINE)]
    with scu.association(app.storage_port, app.storage_title) as assoc:
        for n, (sop_instance, sop_class, syntax) in enumerate(images, start=1):
            ds = datasets.image(sop_class=sop_class, transfer_syntax=syntax, study_uid=US_STUDY,
                                series_uid=uid("S50.1"), sop_instance_uid=sop_instance, InstanceNumber=str(n))
            assert scu.send_file(assoc, datasets.write(ds, tmp_path / f"{n}.dcm")) == 0
    return app, port


def move_study(app) -> list:
    with scu.association(app.qr_port, "EX_QUERY_SCP", move_contexts()) as assoc:
        return move(assoc, move_identifier("STUDY", StudyInstanceUID=US_STUDY), "DEST")


@pytest.fixture
def destination():
    made = []

    def make(port: int, *contexts) -> Destination:
        made.append(Destination("DEST", port, contexts=list(contexts) or None))
        return made[-1]

    yield make
    for d in made:
        d.stop()


def test_single_mode_proposes_every_class_and_syntax_separately(make_appliance, destination, tmp_path):
    """PC-08, PC-10, SU-09: both US classes (each the other's counterpart), each with JPEG
    Baseline, Explicit and Implicit VR in contexts of their own."""
    app, port = us_archive(make_appliance, tmp_path)
    dest = destination(port)
    assert move_study(app)[-1].status == 0x0000
    (proposed,) = dest.proposals
    syntaxes = [datasets.JPEG_BASELINE, datasets.ELE, datasets.ILE]
    assert sorted(proposed) == sorted((c, [ts]) for c in (datasets.US_RETIRED, datasets.US) for ts in syntaxes)
    assert [(a.sop_instance, a.sop_class, a.transfer_syntax) for a in dest.arrivals] == [
        (US_RETIRED_UID, datasets.US_RETIRED, datasets.ELE), (US_UID, datasets.US, datasets.ILE),
        (JPEG_UID, datasets.US, datasets.JPEG_BASELINE)]


def test_multiple_mode_proposes_one_context_per_class(make_appliance, destination, tmp_path):
    """PC-09: one context per class carrying all its syntaxes, the stored ones first (a US
    counterpart carries those of the class it stands in for). The destination then picks one
    syntax per class: this one (pynetdicom) its own first, Implicit VR, so the Explicit VR
    image is converted (PC-12) and the JPEG image cannot go: the trade-off of this mode."""
    app, port = us_archive(make_appliance, tmp_path, {"context_mode": "multiple"})
    dest = destination(port)
    responses = move_study(app)
    (proposed,) = dest.proposals
    assert sorted(proposed) == sorted([
        (datasets.US_RETIRED, [datasets.ELE, datasets.ILE, datasets.JPEG_BASELINE]),
        (datasets.US, [datasets.ELE, datasets.ILE, datasets.JPEG_BASELINE]),
    ])
    assert [(a.sop_instance, a.transfer_syntax) for a in dest.arrivals] == [
        (US_RETIRED_UID, datasets.ILE), (US_UID, datasets.ILE)]
    assert (responses[-1].status, responses[-1].failed_uids) == (0xA702, [JPEG_UID])


def test_retired_us_goes_as_current_us_when_only_that_is_accepted(make_appliance, destination, tmp_path):
    """SU-09: the class UID changes in the command and the data set, the instance UID does not;
    every other element keeps its bytes."""
    app, port = us_archive(make_appliance, tmp_path)
    dest = destination(port, build_context(datasets.US, [datasets.ELE, datasets.ILE, datasets.JPEG_BASELINE]))
    assert move_study(app)[-1].status == 0x0000
    first = dest.arrivals[0]
    assert (first.sop_instance, first.sop_class) == (US_RETIRED_UID, datasets.US)
    sent = datasets.read_dataset(first.data, implicit_vr=first.transfer_syntax == datasets.ILE)
    (path,) = datasets.stored_paths(app, US_RETIRED_UID)
    stored = datasets.read_dataset(datasets.dataset_bytes(path), implicit_vr=False)
    assert [t for t in stored.keys() if stored.get_item(t).value != sent.get_item(t).value] == [0x00080016]
    assert sent.SOPClassUID == datasets.US and sent.SOPInstanceUID == US_RETIRED_UID
    app.wait_log(rf"C-STORE {US_RETIRED_UID} status 0x0000; sent as class {datasets.US} \(SU-09\); "
                 r"index values applied: SOPClassUID")


def test_without_us_conversion_the_retired_class_fails(make_appliance, destination, tmp_path):
    app, port = us_archive(make_appliance, tmp_path, {"us_conversion": False})
    dest = destination(port, build_context(datasets.US, [datasets.ELE, datasets.ILE, datasets.JPEG_BASELINE]))
    responses = move_study(app)
    assert (responses[-1].status, responses[-1].failed_uids) == (0xA702, [US_RETIRED_UID, US_UID, JPEG_UID])
    assert dest.arrivals == []
    app.wait_log(rf"the destination accepted no presentation context for class {datasets.US_RETIRED} in "
                 rf"[\d.]+ or a lossless alternative \({US_RETIRED_UID}\)")


def test_jpeg_is_never_decompressed(make_appliance, destination, tmp_path):
    """PC-12 (SU-12 off): a JPEG Baseline instance with no JPEG context accepted fails the move."""
    app, port = us_archive(make_appliance, tmp_path)
    dest = destination(port, *(build_context(c, [datasets.ELE, datasets.ILE]) for c in (datasets.US_RETIRED, datasets.US)))
    responses = move_study(app)
    assert (responses[-1].status, responses[-1].counts, responses[-1].failed_uids) == (
        0xA702, (None, 2, 1, 0), [JPEG_UID])
    assert len(dest.arrivals) == 2


def test_classes_left_out_of_the_configured_set_are_not_proposed(make_appliance, destination, tmp_path):
    """PC-11: storage_scu.sop_classes without US: nothing to propose, the move fails (A702)."""
    app, port = us_archive(make_appliance, tmp_path, {"sop_classes": [datasets.CT]})
    dest = destination(port)
    responses = move_study(app)
    assert responses[-1].status == 0xA702 and dest.proposals == []
    app.wait_log(r"no association: STORAGE-SCU may send none of the SOP classes to be moved \(storage_scu.sop_classes\)")


def test_a_class_accepted_in_jpeg_is_sent_back_in_jpeg(make_appliance, destination, tmp_path):
    """PC-02 made configurable: CT added to storage_scp.jpeg_sop_classes is stored in JPEG
    Baseline, so STORAGE-SCU must propose JPEG Baseline for CT too (PC-12), or the study could
    never be retrieved."""
    port = free_port()
    app = make_appliance({"remote_aes": [{"ae_title": "DEST", "host": "127.0.0.1", "port": port}],
                          "storage_scp": {"jpeg_sop_classes": [datasets.CT, datasets.US]}})
    ds = datasets.image(sop_class=datasets.CT, transfer_syntax=datasets.JPEG_BASELINE, study_uid=US_STUDY,
                        series_uid=uid("S50.1"), sop_instance_uid=JPEG_UID)
    with scu.association(app.storage_port, app.storage_title, [build_context(datasets.CT, [datasets.JPEG_BASELINE])]) \
            as assoc:
        assert scu.send_file(assoc, datasets.write(ds, tmp_path / "ct.dcm")) == 0
    dest = destination(port)
    assert move_study(app)[-1].status == 0x0000
    assert (datasets.CT, [datasets.JPEG_BASELINE]) in dest.proposals[0]
    assert [(a.sop_class, a.transfer_syntax) for a in dest.arrivals] == [(datasets.CT, datasets.JPEG_BASELINE)]
