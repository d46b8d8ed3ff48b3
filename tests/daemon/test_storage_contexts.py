"""STORAGE-SCP presentation contexts and storage over every accepted context (F.4.2.3.4.1.2).

DCMTK storescu stores all 8 default SOP classes in ILE, ELE and (US, SC) JPEG Baseline, and
the stored dataset bytes equal the sent ones (ST-01..ST-04); pynetdicom as SCU checks the
per-context negotiation results (PC-01..PC-03, PC-06, D-10).
"""

from __future__ import annotations

import pytest
from pydicom.filereader import read_file_meta_info
from pynetdicom.presentation import build_context

import datasets
import scu
from datasets import (ALL_STORAGE, CR, CT, ELE, ILE, JPEG_BASELINE, JPEG_CLASSES, MR, SC, US,
                      US_MULTIFRAME, US_MULTIFRAME_RETIRED, US_RETIRED, VERIFICATION)
from helpers import Appliance, dcmtk

EXPLICIT_BE = "1.2.840.10008.1.2.2"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
QR_CLASSES = {  # PC-06
    "PR-FIND": "1.2.840.10008.5.1.4.1.2.1.1", "PR-MOVE": "1.2.840.10008.5.1.4.1.2.1.2",
    "SR-FIND": "1.2.840.10008.5.1.4.1.2.2.1", "SR-MOVE": "1.2.840.10008.5.1.4.1.2.2.2",
}
NM_RETIRED = "1.2.840.10008.5.1.4.1.1.5"  # D-11: not accepted by default
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
MULTIFRAME = (US_MULTIFRAME, US_MULTIFRAME_RETIRED)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    app = Appliance(tmp_path_factory.mktemp("contexts")).start()
    yield app
    assert app.stop() == 0, app.log()


# --- DCMTK storescu over every accepted (SOP class, TS) ----------------------------------

@pytest.mark.parametrize("transfer_syntax, option, sop_classes", [
    (ILE, "-xi", ALL_STORAGE),
    (ELE, "-xe", ALL_STORAGE),
    (JPEG_BASELINE, "-xy", JPEG_CLASSES),
], ids=["ILE", "ELE", "JPEG-B"])
def test_storescu_stores_every_class_bit_identical(app, tmp_path, transfer_syntax, option, sop_classes):
    """ST-01..ST-04, PC-01/PC-02: one storescu association carries one instance per SOP class;
    each is kept as a Part 10 file in the TS it was sent in, with exactly the sent dataset
    bytes (the private element of datasets.image included)."""
    sent = {}
    for n, sop_class in enumerate(sop_classes):
        ds = datasets.image(sop_class, transfer_syntax, frames=2 if sop_class in MULTIFRAME else 1)
        sent[ds.SOPInstanceUID] = datasets.write(ds, tmp_path / f"{n}.dcm")
    result = dcmtk("storescu", "-R", option, "-aec", app.storage_title, "127.0.0.1",
                   str(app.storage_port), *map(str, sent.values()))
    assert result.returncode == 0, result.stdout + result.stderr
    for uid, path in sent.items():
        [stored] = datasets.stored_paths(app, uid)
        assert read_file_meta_info(stored).TransferSyntaxUID == transfer_syntax
        assert datasets.dataset_bytes(stored) == datasets.dataset_bytes(path)
        assert b"private payload" in datasets.dataset_bytes(stored)
    rows = app.index_rows("SELECT DISTINCT transfer_syntax_uid FROM instance WHERE file_sop_instance_uid IN (%s)"
                          % ",".join("?" * len(sent)), *sent)
    assert rows == [(transfer_syntax,)]


# --- negotiation matrix with pynetdicom ------------------------------------------------------

ACCEPT, ABSTRACT_NOT_SUPPORTED, TS_NOT_SUPPORTED = 0, 3, 4
CASES = [
    # PC-01: every default class with each uncompressed TS alone is accepted as proposed
    *[(f"{c}-ILE", c, [ILE], ACCEPT, ILE) for c in ALL_STORAGE],
    *[(f"{c}-ELE", c, [ELE], ACCEPT, ELE) for c in ALL_STORAGE],
    # PC-02: JPEG Baseline alone: US classes and SC accept, CR/CT/MR refuse the TS
    *[(f"{c}-JPEG", c, [JPEG_BASELINE], ACCEPT, JPEG_BASELINE) for c in JPEG_CLASSES],
    *[(f"{c}-JPEG", c, [JPEG_BASELINE], TS_NOT_SUPPORTED, None) for c in (CR, CT, MR)],
    # PC-01: TSs outside the matrix -> 4; abstract syntaxes outside it -> 3
    ("CT-big-endian", CT, [EXPLICIT_BE], TS_NOT_SUPPORTED, None),
    ("CT-jpeg-lossless", CT, [JPEG_LOSSLESS_SV1], TS_NOT_SUPPORTED, None),
    ("US-jpeg2000", US, [JPEG_2000], TS_NOT_SUPPORTED, None),
    ("unknown-class", "1.2.3.4.5.6.7", [ILE], ABSTRACT_NOT_SUPPORTED, None),
    ("NM-retired", NM_RETIRED, [ILE], ABSTRACT_NOT_SUPPORTED, None),
    ("enhanced-CT", ENHANCED_CT, [ELE, ILE], ABSTRACT_NOT_SUPPORTED, None),
    # PC-03: one TS accepted, by the SCP's preference JPEG-B > ELE > ILE, whatever the order
    ("CT-ILE,ELE", CT, [ILE, ELE], ACCEPT, ELE),
    ("CT-ELE,ILE", CT, [ELE, ILE], ACCEPT, ELE),
    ("US-ILE,ELE,JPEG", US, [ILE, ELE, JPEG_BASELINE], ACCEPT, JPEG_BASELINE),
    ("SC-ILE,ELE,JPEG", SC, [ILE, ELE, JPEG_BASELINE], ACCEPT, JPEG_BASELINE),
    ("USr-ELE,JPEG", US_RETIRED, [ELE, JPEG_BASELINE], ACCEPT, JPEG_BASELINE),
    ("CT-ILE,ELE,JPEG", CT, [ILE, ELE, JPEG_BASELINE], ACCEPT, ELE),
    ("MR-JPEG,ILE", MR, [JPEG_BASELINE, ILE], ACCEPT, ILE),
    # D-10: Verification with ILE and with ELE
    ("VER-ILE", VERIFICATION, [ILE], ACCEPT, ILE),
    ("VER-ELE", VERIFICATION, [ELE], ACCEPT, ELE),
    ("VER-ILE,ELE", VERIFICATION, [ILE, ELE], ACCEPT, ELE),
    # PC-06: Q/R SOP classes are QUERY-RETRIEVE-SCP's, not STORAGE-SCP's
    *[(name, uid, [ILE], ABSTRACT_NOT_SUPPORTED, None) for name, uid in QR_CLASSES.items()],
]


@pytest.mark.parametrize("abstract_syntax, proposed, result, accepted_ts",
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_context_negotiation(app, abstract_syntax, proposed, result, accepted_ts):
    """PC-01..PC-03, PC-06, D-10: the result of one proposed context. A CT/ELE context rides
    along so the association is accepted whatever happens to the context under test."""
    anchor = build_context(CT, [ELE])
    with scu.association(app.storage_port, contexts=[anchor, build_context(abstract_syntax, proposed)]) as assoc:
        contexts = {cx.context_id: cx for cx in assoc.accepted_contexts + assoc.rejected_contexts}
        assert contexts[1].result == ACCEPT
        tested = contexts[3]
        assert tested.abstract_syntax == abstract_syntax
        assert tested.result == result
        if result == ACCEPT:
            assert tested.transfer_syntax == [accepted_ts]
            assert tested in assoc.accepted_contexts
        else:
            assert tested in assoc.rejected_contexts
