"""pydicom's parse of a DICOM header: quiet, tolerant, and telling where the pixels start.

- ``read_header`` parses the whole header with values over 2 KB deferred (pixel data, big
  LUTs are read only if used); ``parse_header`` stops before the pixels and gives the offset
  of the PixelData element in the file too (``pixel_offset`` says when that offset is usable).
- A file without preamble or file meta is accepted when it parses as DICOM; its transfer
  syntax is inferred from how it was actually encoded.
- pydicom's reading validation is silenced only while we read (``quiet_validation``): its
  warnings quote header values, i.e. PHI. ``pydicom.config`` is set and restored around each
  read, never changed for other users at import.
- Any failure is a ``MedicalDataError`` naming the file and the reason (the library's exception
  type, never its message).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pydicom
import pydicom.config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from .errors import MedicalDataError, library_failure

PIXEL_DATA = 0x7FE00010
PIXEL_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
_DEFER = 2048  # bytes: larger values (pixel data, big LUTs) are read only if used
_STREAM_SYNTAXES = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})  # big endian, deflated


@contextmanager
def quiet_validation():
    """pydicom's reading-validation warnings quote header values (PHI): keep them out of logs,
    for the duration of our own reads only (restored afterwards; not thread-safe, like pydicom's
    own settings object)."""
    settings = pydicom.config.settings
    before = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        settings.reading_validation_mode = before


def not_a_file(path: Path) -> MedicalDataError:
    """The error for a path that is not a readable file's."""
    return MedicalDataError(path, "is a folder, not a file" if path.is_dir() else "no such file")


def read_header(path: str | Path, *, stop_before_pixels: bool = False) -> Dataset:
    """Parse the header (pixel data deferred); a clear error for anything that is not DICOM."""
    return _parse(Path(path), stop_before_pixels)[0]


def parse_header(path: str | Path) -> tuple[Dataset, int]:
    """The header up to the pixels, and the offset of the PixelData element in the file (-1 when
    unknown: no pixel data, or a file whose pixels need pydicom's general route)."""
    return _parse(Path(path), True)


def _parse(path: Path, stop_before_pixels: bool) -> tuple[Dataset, int]:
    if not path.is_file():
        raise not_a_file(path)
    try:
        with quiet_validation(), path.open("rb") as fp:
            return _parse_file(path, fp, stop_before_pixels)
    except MedicalDataError:
        raise
    except Exception as exc:  # noqa: BLE001 - every library failure becomes our error, without its text
        raise library_failure(path, "DICOM header parse", exc) from None


def _parse_file(path: Path, fp: BinaryIO, stop_before_pixels: bool) -> tuple[Dataset, int]:
    try:
        ds = pydicom.dcmread(fp, defer_size=_DEFER, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        # no preamble/meta: some real files are like that; accept only if it parses as DICOM
        # (not deferred: a deferred value is re-read later without force, which fails)
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
        if "SOPClassUID" not in ds and PIXEL_DATA not in ds and "Modality" not in ds:
            raise MedicalDataError(path, "not a DICOM file (no preamble, no DICOM attributes)") from None
        _infer_transfer_syntax(ds)
        return ds, -1
    if not stop_before_pixels:
        return ds, -1
    pos = fp.tell()
    offset = pixel_offset(ds, fp.read(4), pos)
    return ds, -1 if offset is None else offset


def pixel_offset(ds: Dataset, head: bytes, pos: int) -> int | None:
    """Where a parse that stopped before the pixels left off: ``pos`` when ``head`` (the bytes
    there) is the PixelData tag, -1 when the header has no pixel data; None when the pixels need
    pydicom's general route: no file meta, big endian or deflated (whose offsets are not the
    file's), float pixel data."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta or str(meta.TransferSyntaxUID) in _STREAM_SYNTAXES:
        return None
    if head[:2] == b"\xe0\x7f" and head[:4] != PIXEL_TAG:
        return None
    return pos if head[:4] == PIXEL_TAG else -1


def _infer_transfer_syntax(ds: Dataset) -> None:
    """A file without file meta: name the syntax it was actually encoded in."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                              ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
