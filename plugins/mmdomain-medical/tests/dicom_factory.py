"""Write small real DICOM files for the tests (pydicom, no mocks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT = "1.2.840.10008.5.1.4.1.1.2"


def ct_header(transfer_syntax: str, *, seed: str, instance: list[str], name: str = "Testperson^Quentin",
              patient_id: str = "7654321") -> Dataset:
    """File meta and the identifying header of a CT image (no pixel attributes): the SOP instance UID
    from ``instance``, study and series UIDs from ``seed``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=instance)
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CT, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[seed, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[seed, "series"])
    ds.Modality, ds.PatientName, ds.PatientID = "CT", name, patient_id
    return ds


def write(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
          signed: bool = False, frames: int | None = None, seed: str = "x", **attrs) -> Path:
    ds = ct_header(ExplicitVRLittleEndian, seed=seed, instance=[seed, str(path.name)])
    color = pixels.ndim == (4 if frames else 3)
    ds.SamplesPerPixel = 3 if color else 1
    if color:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    shape = pixels.shape[1:3] if frames else pixels.shape[:2]
    ds.Rows, ds.Columns = shape
    if frames:
        ds.NumberOfFrames = frames
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored = bits, bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
