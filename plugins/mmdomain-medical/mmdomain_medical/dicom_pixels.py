"""Pixel data out of a DICOM file, given its header facts (``dicom_header``).

- Uncompressed little-endian pixels are viewed in place in the file's bytes with
  ``np.frombuffer``, without a copy (``native_from_bytes``), or read straight from the file
  offset of a deferred header (``native_from_file``).
- RLE Lossless greyscale frames go straight to pylibjpeg-rle, the decoder pydicom itself picks
  first (``rle_greyscale``).
- Other compressed pixels are decoded from the bytes already in memory by pydicom 3's decoder
  for the syntax, with the options pydicom derives from the header (``pixel_options``). That
  is what ``pixel_array(file)`` does after its own parse, without parsing the file a second
  time. Anything unusual (a decode that fails, no file meta, big endian, deflated, float
  pixel data) takes pydicom's whole-file route (``decoded``); palette colour goes through
  pydicom's LUT.
- Unused high bits (Bits Stored < Bits Allocated) are cleared or sign-extended as pydicom
  does, but only when some pixel actually has them set (a min/max check, no copy).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_color_lut, get_decoder, pixel_array
from pydicom.uid import UID

from .dicom_header import IMPLICIT_VR_LITTLE_ENDIAN, RLE_LOSSLESS, pixel_options
from .dicom_parse import PIXEL_DATA, quiet_validation
from .errors import MedicalDataError, library_failure
from .facts import NATIVE_LITTLE_ENDIAN

try:  # pylibjpeg-rle: pydicom's own first choice for RLE Lossless (a declared dependency)
    from rle.utils import decode_frame as _rle_decode_frame
except ImportError:  # pragma: no cover - without it RLE goes through pydicom's decoder
    _rle_decode_frame = None

_ENCAPSULATED = b"OB\0\0\xff\xff\xff\xff"  # the VR and undefined length of encapsulated PixelData


def pixel_dtype(f: dict[str, Any]) -> np.dtype:
    return np.dtype(f"<{'i' if f['PixelRepresentation'] == 1 else 'u'}{f['BitsAllocated'] // 8}")


def native_from_bytes(f: dict[str, Any], data: bytes, pos: int, path: Path) -> np.ndarray | None:
    """Uncompressed little-endian pixels viewed in ``data`` (no copy), or None if not eligible."""
    ts = f["TransferSyntaxUID"]
    if ts not in NATIVE_LITTLE_ENDIAN:
        return None
    if ts == IMPLICIT_VR_LITTLE_ENDIAN:
        length, offset = int.from_bytes(data[pos + 4:pos + 8], "little"), pos + 8
    else:
        if data[pos + 4:pos + 6] not in (b"OB", b"OW"):
            return None
        length, offset = int.from_bytes(data[pos + 8:pos + 12], "little"), pos + 12
    if length == 0xFFFFFFFF:
        return None
    return _native_array(f, path, length, lambda dtype, count: np.frombuffer(data, dtype, count, offset)
                         if offset + count * dtype.itemsize <= len(data) else np.empty(0, dtype))


def native_from_file(ds: Dataset, path: Path, f: dict[str, Any]) -> np.ndarray | None:
    """Uncompressed little-endian pixel data read straight from the file offset of a deferred
    header, or None if not eligible."""
    if f["TransferSyntaxUID"] not in NATIVE_LITTLE_ENDIAN:
        return None
    raw = ds.get_item(PIXEL_DATA, keep_deferred=True) if PIXEL_DATA in ds else None
    if raw is None or getattr(raw, "value", None) is not None or getattr(raw, "value_tell", None) is None:
        return None
    return _native_array(f, path, raw.length,
                         lambda dtype, count: np.fromfile(path, dtype=dtype, count=count, offset=raw.value_tell))


def _native_array(f: dict[str, Any], path: Path, length: int,
                  read: Callable[[np.dtype, int], np.ndarray]) -> np.ndarray | None:
    bits, samples = f["BitsAllocated"] or 0, f["SamplesPerPixel"] or 1
    if bits not in (8, 16, 32) or samples not in (1, 3) or (samples == 3 and f["PlanarConfiguration"]):
        return None
    if f["PhotometricInterpretation"] not in ("MONOCHROME1", "MONOCHROME2", "RGB"):
        return None
    if f["FloatPixelData"] or f["DoubleFloatPixelData"]:
        return None
    dtype = pixel_dtype(f)
    rows, cols, frames = f["Rows"], f["Columns"], f["NumberOfFrames"] or 1
    count = rows * cols * frames * samples
    if length < count * dtype.itemsize:
        raise MedicalDataError(path, f"pixel data is shorter ({length} bytes) than its header says "
                                     f"({count * dtype.itemsize} bytes)")
    arr = read(dtype, count)
    if arr.size != count:
        raise MedicalDataError(path, "pixel data is truncated")
    arr = clear_unused_bits(arr, bits, f["BitsStored"] or bits)
    shape = (frames, rows, cols, samples) if frames > 1 else (rows, cols, samples)
    return arr.reshape(shape) if samples > 1 else arr.reshape(shape[:-1])


def clear_unused_bits(arr: np.ndarray, bits: int, stored: int) -> np.ndarray:
    """Clear the unused high bits (sign-extend signed values), as pydicom's ``correct_unused_bits``;
    a no-op, without a copy, when no pixel has any of them set (the usual case)."""
    if not 0 < stored < bits or arr.size == 0:
        return arr
    if arr.dtype.kind == "i":
        limit = 1 << (stored - 1)
        if -limit <= int(arr.min()) and int(arr.max()) < limit:
            return arr
        shift = bits - stored
        if arr.flags.writeable:
            np.left_shift(arr, shift, out=arr)
            np.right_shift(arr, shift, out=arr)
            return arr
        return (arr << shift) >> shift
    if int(arr.max()) >> stored == 0:
        return arr
    mask = np.array((1 << stored) - 1, dtype=arr.dtype)
    if arr.flags.writeable:
        return np.bitwise_and(arr, mask, out=arr)
    return arr & mask


def rle_greyscale(f: dict[str, Any], fp: io.BytesIO) -> np.ndarray | None:
    """RLE Lossless greyscale frames decoded by pylibjpeg-rle straight from the fragments;
    None when not eligible (colour, odd bit depths, no pylibjpeg-rle)."""
    bits, rows, cols = f["BitsAllocated"] or 0, f["Rows"], f["Columns"]
    if (_rle_decode_frame is None or bits not in (8, 16, 32) or (f["SamplesPerPixel"] or 1) != 1
            or f["PhotometricInterpretation"] not in ("MONOCHROME1", "MONOCHROME2")):
        return None
    frames, dtype, pixels = f["NumberOfFrames"] or 1, pixel_dtype(f), rows * cols
    out = None
    for i, src in enumerate(generate_frames(fp, number_of_frames=frames)):
        if i == frames:
            break
        # a bytearray: the array on it is writeable, so the bit correction below needs no copy
        frame = np.frombuffer(_rle_decode_frame(src, pixels, bits, "<"), dtype)
        if frame.size != pixels:
            raise ValueError("RLE frame of the wrong size")
        if frames == 1:
            out = frame
        else:
            if out is None:
                out = np.empty((frames, pixels), dtype)
            out[i] = frame
    if out is None or (frames > 1 and i + 1 < frames):
        raise ValueError("fewer RLE frames than Number of Frames")
    out = clear_unused_bits(out, bits, f["BitsStored"] or bits)
    return out.reshape((frames, rows, cols) if frames > 1 else (rows, cols))


def _fragments(data: bytes, pos: int) -> io.BytesIO | None:
    """The encapsulated PixelData value at ``pos`` (from its Basic Offset Table item), or None."""
    if data[pos + 4:pos + 12] != _ENCAPSULATED:
        return None
    fp = io.BytesIO(data)
    fp.seek(pos + 12)
    return fp


def fast_pixels(f: dict[str, Any], data: bytes, pos: int, path: Path) -> np.ndarray | None:
    """The pixels pydicom is not needed for, from ``data`` (native, RLE greyscale), or None
    (any other image, an RLE stream pylibjpeg-rle refuses)."""
    if pos < 0:
        return None
    if f["TransferSyntaxUID"] != RLE_LOSSLESS:
        return native_from_bytes(f, data, pos, path)
    fp = _fragments(data, pos)
    if fp is None:
        return None
    try:
        return rle_greyscale(f, fp)
    except Exception:  # noqa: BLE001 - pydicom's decoders decide (and name the failure)
        return None


def _encapsulated(f: dict[str, Any], data: bytes, pos: int, ds: Dataset | None,
                  options: dict[str, Any] | None) -> np.ndarray | None:
    """Compressed pixels decoded from the file's bytes as ``pixel_array(file)`` would: the same
    decoder, options (``options``, else derived from ``ds``) and processing (RGB conversion, bit
    and sign corrections); None if not eligible (not encapsulated, no options)."""
    ts = UID(f["TransferSyntaxUID"])
    fp = _fragments(data, pos) if ts.is_encapsulated else None
    if fp is None:
        return None
    if ts == RLE_LOSSLESS:
        arr = rle_greyscale(f, fp)
        if arr is not None:
            return arr
        fp.seek(pos + 12)
    if options is None:
        if ds is None:
            return None
        options = pixel_options(ds, f)
    return get_decoder(ts).as_array(fp, validate=True, **options)[0]


def decoded(path: Path, f: dict[str, Any], data: bytes | None, pos: int, ds: Dataset | None,
            options: dict[str, Any] | None = None) -> np.ndarray:
    """pydicom's decoders: from the bytes in memory with the header's options (``options``, else
    derived from ``ds``), else pydicom's whole-file route; palette colour through its LUT."""
    try:
        with quiet_validation():
            arr = None
            if data is not None and pos >= 0:
                try:  # from the bytes already in memory and the header already parsed
                    arr = _encapsulated(f, data, pos, ds, options)
                except Exception:  # noqa: BLE001 - any doubt: pydicom's whole-file route below decides
                    arr = None
            if arr is None and data is not None:
                try:
                    arr = pixel_array(io.BytesIO(data))
                except Exception:  # noqa: BLE001 - some odd files decode only via the Dataset route
                    arr = pydicom.dcmread(io.BytesIO(data)).pixel_array
            elif arr is None:
                arr = ds.pixel_array
            if f["PhotometricInterpretation"] == "PALETTE COLOR":
                arr = apply_color_lut(arr, ds)
    except MedicalDataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise library_failure(path, f"pixel decoding (transfer syntax {f['TransferSyntaxUID']})", exc) from None
    return arr
