"""Synthetic DICOM instances for tests and benchmarks (no patient data, deterministic shapes)."""

from __future__ import annotations

import os
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import generate_uid

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
CR = "1.2.840.10008.5.1.4.1.1.1"
SC = "1.2.840.10008.5.1.4.1.1.7"
US = "1.2.840.10008.5.1.4.1.1.6.1"
US_RETIRED = "1.2.840.10008.5.1.4.1.1.6"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
US_MULTIFRAME_RETIRED = "1.2.840.10008.5.1.4.1.1.3"
ALL_STORAGE = (US_RETIRED, US, US_MULTIFRAME_RETIRED, US_MULTIFRAME, CR, CT, MR, SC)
JPEG_CLASSES = (US_RETIRED, US, US_MULTIFRAME_RETIRED, US_MULTIFRAME, SC)

VERIFICATION = "1.2.840.10008.1.1"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
ILE = "1.2.840.10008.1.2"
ELE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"

# A valid 8x8 grey baseline JPEG (one frame), so JPEG-B instances carry real codestreams.
_JPEG_8x8 = bytes.fromhex(
    "ffd8ffdb004300080606070605080707070909080a0c140d0c0b0b0c1912130f141d1a1f1e1d1a1c1c20242e27"
    "20222c231c1c2837292c30313434341f27393d38323c2e333432ffc0000b080008000801011100ffc4001f0000"
    "010501010101010100000000000000000102030405060708090a0bffc400b5100002010303020403050504040000"
    "017d01020300041105122131410613516107227114328191a1082342b1c11552d1f02433627282090a161718191a"
    "25262728292a3435363738393a434445464748494a535455565758595a636465666768696a737475767778797a83"
    "8485868788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4"
    "d5d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9faffda0008010100003f00fbd3ffd9")


def image(
    sop_class: str = CT,
    transfer_syntax: str = ELE,
    rows: int = 64,
    columns: int = 64,
    frames: int = 1,
    bits: int = 16,
    patient_name: str = "Doe^Jane",
    patient_id: str = "PID-1",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    charset: str | None = None,
    **elements,
) -> Dataset:
    """An image instance with the identifiers, display values and a private tag."""
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "ACC1"
    ds.Modality = {CT: "CT", MR: "MR", CR: "CR", SC: "OT"}.get(sop_class, "US")
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = "1"
    ds.InstanceNumber = "1"
    ds.add_new(0x00090010, "LO", "APPLIANCE TEST")  # private creator + element: must survive (ST-03)
    ds.add_new(0x00091001, "LO", "private payload")
    jpeg = transfer_syntax == JPEG_BASELINE
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows = 8 if jpeg else rows
    ds.Columns = 8 if jpeg else columns
    ds.BitsAllocated = 8 if jpeg else bits
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsAllocated - 1
    ds.PixelRepresentation = 0
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    if jpeg:
        ds.PixelData = encapsulate([_JPEG_8x8] * frames)
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = os.urandom(ds.Rows * ds.Columns * (ds.BitsAllocated // 8) * frames)
        ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = transfer_syntax
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta = meta
    return ds


def write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a Part 10 file (everything after the File Meta Information)."""
    data = Path(path).read_bytes()
    assert data[128:132] == b"DICM"
    group_length = int.from_bytes(data[140:144], "little")
    return data[144 + group_length:]


def read_dataset(data: bytes, implicit_vr: bool) -> Dataset:
    """A data set from its encoded bytes (no file meta), e.g. as a destination received it."""
    from io import BytesIO
    from pydicom.filereader import read_dataset as pydicom_read_dataset
    return pydicom_read_dataset(BytesIO(data), is_implicit_VR=implicit_vr, is_little_endian=True)


# --- crafted files and sending them as they are ---------------------------------------------

def part10(path: Path, body: bytes, sop_class: str, sop_instance_uid: str, transfer_syntax: str) -> Path:
    """A Part 10 file whose File Meta says what the C-STORE-RQ will say (pynetdicom's chunked
    send takes the request's UIDs and context from it) and whose dataset is `body` byte for
    byte: for garbage, truncations and datasets that disagree with their request."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax
    buffer = DicomBytesIO()
    write_file_meta_info(buffer, meta, enforce_standard=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + buffer.getvalue() + body)
    return path


def stored_paths(app, sop_instance_uid: str) -> list[Path]:
    """Files the appliance's index holds for instances sent with this SOP Instance UID."""
    rows = app.index_rows("SELECT path FROM instance WHERE file_sop_instance_uid = ? ORDER BY id",
                          sop_instance_uid)
    return [app.data_dir / "store" / path for (path,) in rows]
