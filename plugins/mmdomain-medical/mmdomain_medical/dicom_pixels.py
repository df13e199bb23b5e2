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
- Nothing is decoded that the header does not bound (``check_pixel_budget``): Rows x Columns,
  Number of Frames and the decoded size against ``mmdomain.limits.DICOM_*`` (a 7 KB file that
  declares 65535 x 65535 made the RLE decoder allocate 8.6 GB, and abort the process where that
  failed). Compressed pixel data is checked before any native decoder sees it
  (``check_encapsulated``): its items, each RLE frame's header (segment count and offsets, and
  whether its segments can hold the frame at RLE's best ratio of 64:1), and each JPEG / JPEG-LS /
  JPEG 2000 codestream's own frame size, which must be the header's (the decoders allocate
  what the codestream says). These checks, not a decoder in a child process: the decoders here
  fail cleanly on lying data (a fuzz of pylibjpeg-rle found ValueError only); what aborted was an
  allocation sized from a lying header, and these bound it, for a few microseconds a file.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_color_lut, get_decoder, pixel_array
from pydicom.uid import UID, JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes

from mmdomain import limits

from .dicom_header import IMPLICIT_VR_LITTLE_ENDIAN, RLE_LOSSLESS, pixel_options
from .dicom_parse import PIXEL_DATA, quiet_validation
from .errors import MedicalDataError, is_interrupt, library_failure
from .facts import NATIVE_LITTLE_ENDIAN

try:  # pylibjpeg-rle: pydicom's own first choice for RLE Lossless (a declared dependency)
    from rle.utils import decode_frame as _rle_decode_frame
except ImportError:  # pragma: no cover - without it RLE goes through pydicom's decoder
    _rle_decode_frame = None

_ENCAPSULATED = b"OB\0\0\xff\xff\xff\xff"  # the VR and undefined length of encapsulated PixelData
_ITEM, _SEQUENCE_END = 0xE000, 0xE0DD  # (FFFE,E000) item, (FFFE,E0DD) sequence delimitation
_MAX_FRAGMENTS = 1 << 20
_RLE_RATIO = 64  # an RLE segment decodes at most 64 bytes a byte (a 2-byte replicate run gives 128)
_HEADER_SCAN = 1 << 16  # bytes of a codestream read for its frame header
_JPEG_FAMILY = frozenset(str(u) for u in (*JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes))
_J2K_FAMILY = frozenset(str(u) for u in JPEG2000TransferSyntaxes)
CHECKED_SYNTAXES = frozenset({RLE_LOSSLESS, *_JPEG_FAMILY, *_J2K_FAMILY})  # encapsulated: their headers are checked
# JPEG start-of-frame markers: SOF0-3, 5-7, 9-11, 13-15 and JPEG-LS's SOF55
_SOF = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7})
_J2K_START, _JP2_SIGNATURE = b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K_MAX_TILES = 65_535  # Isot is 16 bits


# -- sizes the header declares, checked before anything is decoded ---------------------------------

def declared_frames(path: Path, f: dict[str, Any]) -> int:
    frames = f["NumberOfFrames"]
    if frames is not None and frames < 0:
        raise MedicalDataError(path, f"Number of Frames is negative ({frames})")
    return frames or 1


def check_pixel_budget(path: Path, f: dict[str, Any], present: int | None = None) -> None:
    """Refuse, before anything is decoded or allocated, an image whose header declares more than
    ``mmdomain.limits`` allows: Rows x Columns (``DICOM_FRAME_PIXELS``), Number of Frames
    (``DICOM_FRAMES``), the decoded image as float32 (``DICOM_DECODED_BYTES``); and, where
    ``present`` (the bytes of uncompressed pixel data in the file) is known, more bytes than it has."""
    rows, cols = f["Rows"] or 0, f["Columns"] or 0
    samples, bits = f["SamplesPerPixel"] or 1, f["BitsAllocated"] or 0
    frames = declared_frames(path, f)
    if samples not in (1, 3, 4):
        raise MedicalDataError(path, f"Samples per Pixel is {samples}; 1, 3 or 4 are read")
    if not (bits == 1 or (bits % 8 == 0 and 8 <= bits <= 64)):
        raise MedicalDataError(path, f"Bits Allocated is {bits}; 1 or a multiple of 8 up to 64 are read")
    pixels = rows * cols
    if pixels > limits.DICOM_FRAME_PIXELS:
        raise MedicalDataError(path, f"Rows x Columns = {rows} x {cols} ({pixels:,} pixels a frame) is over the "
                                     f"ceiling of {limits.DICOM_FRAME_PIXELS:,} (mmdomain.limits.DICOM_FRAME_PIXELS)")
    if frames > limits.DICOM_FRAMES:
        raise MedicalDataError(path, f"Number of Frames = {frames:,} is over the ceiling of {limits.DICOM_FRAMES:,} "
                                     "(mmdomain.limits.DICOM_FRAMES)")
    values = pixels * samples * frames
    if values * 4 > limits.DICOM_DECODED_BYTES:
        raise MedicalDataError(path, f"the image decodes to {values * 4:,} bytes as float32 ({rows} x {cols} x "
                                     f"{samples} x {frames} frames), over the ceiling of "
                                     f"{limits.DICOM_DECODED_BYTES:,} (mmdomain.limits.DICOM_DECODED_BYTES)")
    needed = (values * bits + 7) // 8
    if present is not None and present < needed:
        raise MedicalDataError(path, f"pixel data is shorter ({present} bytes) than its header says ({needed} bytes)")


# -- compressed pixel data, checked before a native decoder sees it -----------------------------------

def fragments(path: Path, buf: bytes, start: int) -> list[tuple[int, int]]:
    """``(offset, length)`` of each fragment of the encapsulated pixel data whose Basic Offset
    Table item starts at ``start`` in ``buf`` (the table itself not included); a last item cut
    short by the end of the file is clipped to what is there."""
    unpack, end, pos = struct.unpack_from, len(buf), start
    items: list[tuple[int, int]] = []
    while pos + 8 <= end:
        group, element, length = unpack("<HHL", buf, pos)
        if group != 0xFFFE or element not in (_ITEM, _SEQUENCE_END):
            if not items:
                raise MedicalDataError(path, "encapsulated pixel data does not start with an item")
            break  # what follows the fragments (pydicom reads the same)
        if element == _SEQUENCE_END:
            break
        if length == 0xFFFFFFFF:
            raise MedicalDataError(path, "encapsulated pixel data has an item of undefined length")
        pos += 8
        items.append((pos, min(length, end - pos)))
        if len(items) > _MAX_FRAGMENTS:
            raise MedicalDataError(path, f"encapsulated pixel data has more than {_MAX_FRAGMENTS:,} fragments")
        pos += length
    if not items:
        raise MedicalDataError(path, "encapsulated pixel data has no items")
    return items[1:]


def check_encapsulated(path: Path, f: dict[str, Any], buf: bytes, start: int) -> None:
    """Refuse compressed pixel data a native decoder must not be handed: items that do not parse,
    RLE frames whose header lies (``_check_rle``), JPEG-family codestreams whose own frame size is
    not the header's (``_check_codestreams``). ``buf[start:]`` is the encapsulated value, from its
    Basic Offset Table item."""
    ts = f["TransferSyntaxUID"]
    frags = fragments(path, buf, start)
    if ts == RLE_LOSSLESS:
        _check_rle(path, f, buf, frags)
    elif ts in _JPEG_FAMILY or ts in _J2K_FAMILY:
        _check_codestreams(path, f, buf, frags, ts in _J2K_FAMILY)


def _check_rle(path: Path, f: dict[str, Any], buf: bytes, frags: list[tuple[int, int]]) -> None:
    frames = declared_frames(path, f)
    if frames == 1:  # a single frame may span fragments: its header is at the start of the first
        spans = [(frags[0][0], sum(n for _, n in frags))] if frags else []
    else:
        if len(frags) != frames:
            raise MedicalDataError(path, f"RLE pixel data holds {len(frags)} fragments for {frames} frames (RLE "
                                         "Lossless keeps each frame in one fragment)")
        spans = frags
    if not spans:
        raise MedicalDataError(path, "RLE pixel data has no fragments")
    expected = (f["SamplesPerPixel"] or 1) * (((f["BitsAllocated"] or 0) + 7) // 8)
    pixels = (f["Rows"] or 0) * (f["Columns"] or 0)
    for i, (at, length) in enumerate(spans):
        if length < 64 or at + 64 > len(buf):
            raise MedicalDataError(path, f"RLE frame {i} is shorter than its 64-byte header")
        count, *offsets = struct.unpack_from("<16L", buf, at)
        if count != expected:
            raise MedicalDataError(path, f"RLE frame {i} has {count} segments; the header's samples and bits "
                                         f"need {expected}")
        offsets = offsets[:count]
        ends = offsets[1:] + [length]
        if offsets[0] != 64 or any(b <= a for a, b in zip(offsets, ends)):
            raise MedicalDataError(path, f"RLE frame {i} has segment offsets out of order or past its "
                                         f"{length} bytes")
        shortest = min(b - a for a, b in zip(offsets, ends))
        if pixels > _RLE_RATIO * shortest:
            raise MedicalDataError(path, f"RLE frame {i} cannot hold {pixels:,} pixels a segment: its shortest "
                                         f"segment has {shortest} bytes (RLE decodes at most {_RLE_RATIO} bytes a "
                                         "byte)")


def _codestream_head(buf: bytes, frags: list[tuple[int, int]], i: int) -> bytes:
    """The first bytes of the codestream that starts at fragment ``i`` (across fragments)."""
    parts, size = [], 0
    for at, length in frags[i:]:
        parts.append(buf[at:at + min(length, _HEADER_SCAN - size)])
        size += len(parts[-1])
        if size >= _HEADER_SCAN:
            break
    return b"".join(parts)


def jpeg_frame_size(head: bytes) -> tuple[int, int, int] | None:
    """``(rows, columns, components)`` from a JPEG / JPEG-LS start-of-frame marker, or None when
    the header has none within ``head``."""
    pos, end = 2, len(head)
    while pos + 4 <= end:
        if head[pos] != 0xFF:
            return None
        marker = head[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # no length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        length = struct.unpack_from(">H", head, pos + 2)[0]
        if marker in _SOF:
            if pos + 10 > end:
                return None
            rows, cols, comps = struct.unpack_from(">HHB", head, pos + 5)
            return rows, cols, comps
        pos += 2 + length
    return None


def j2k_frame_size(head: bytes) -> tuple[int, int, int, int] | None:
    """``(rows, columns, components, tiles)`` from a JPEG 2000 codestream's SIZ marker (in a JP2
    wrapper too), or None."""
    at = head.find(_J2K_START)
    if at < 0 or at + 42 > len(head):
        return None
    x, y, x0, y0, xt, yt, xt0, yt0 = struct.unpack_from(">8L", head, at + 8)
    comps = struct.unpack_from(">H", head, at + 40)[0]
    if x <= x0 or y <= y0 or not xt or not yt or xt0 > x0 or yt0 > y0:
        return None  # an image or tiling the standard does not allow
    tiles = -(-(x - xt0) // xt) * -(-(y - yt0) // yt)
    return y - y0, x - x0, comps, tiles


def _check_codestreams(path: Path, f: dict[str, Any], buf: bytes, frags: list[tuple[int, int]], j2k: bool) -> None:
    rows, cols, samples = f["Rows"] or 0, f["Columns"] or 0, f["SamplesPerPixel"] or 1
    found = 0
    for i, (at, _) in enumerate(frags):
        lead = buf[at:at + 12]
        if j2k and (lead.startswith(_J2K_START) or lead.startswith(_JP2_SIGNATURE)):
            size = j2k_frame_size(_codestream_head(buf, frags, i))
            what = "JPEG 2000"
        elif not j2k and lead.startswith(b"\xff\xd8"):
            size = jpeg_frame_size(_codestream_head(buf, frags, i))
            what = "JPEG"
        else:
            continue
        if size is None:
            raise MedicalDataError(path, f"{what} codestream of fragment {i} has no readable frame header")
        found += 1
        got_rows, got_cols, comps = size[:3]
        if (got_rows and got_rows != rows) or got_cols != cols or comps != samples:
            raise MedicalDataError(path, f"{what} codestream of fragment {i} is {got_rows} x {got_cols} with {comps} "
                                         f"components; the header says {rows} x {cols} with {samples}: refused "
                                         "before decoding")
        if j2k and size[3] > _J2K_MAX_TILES:
            raise MedicalDataError(path, f"JPEG 2000 codestream of fragment {i} has {size[3]:,} tiles; at most "
                                         f"{_J2K_MAX_TILES:,}")
    if not found:
        raise MedicalDataError(path, "no JPEG codestream in the pixel data")


def encapsulated_value(data: bytes, pos: int) -> int | None:
    """Where the encapsulated value (its Basic Offset Table item) starts, for the PixelData
    element at ``pos`` in ``data`` (undefined length; VR OB, or OW / UN as some writers put it,
    or implicit); None when it is not encapsulated there."""
    if data[pos + 4:pos + 6] in (b"OB", b"OW", b"UN") and data[pos + 6:pos + 12] == b"\0\0\xff\xff\xff\xff":
        return pos + 12
    return pos + 8 if data[pos + 4:pos + 8] == b"\xff\xff\xff\xff" else None


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
    except BaseException as exc:  # noqa: BLE001 - pydicom's decoders decide (and name the failure)
        if is_interrupt(exc):
            raise
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
                except BaseException as exc:  # noqa: BLE001 - any doubt: pydicom's whole-file route below decides
                    if is_interrupt(exc):
                        raise
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
    except BaseException as exc:  # noqa: BLE001 - a decoder's Rust panic is a BaseException too
        if is_interrupt(exc):
            raise
        raise library_failure(path, f"pixel decoding (transfer syntax {f['TransferSyntaxUID']})", exc) from None
    return arr
