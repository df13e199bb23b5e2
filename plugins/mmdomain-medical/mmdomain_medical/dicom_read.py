"""Read one DICOM file into a float32 array (channel first) and a PHI-free meta dict.

- The file is read once into memory. For the common case, a file in Explicit VR Little
  Endian (uncompressed) or RLE Lossless, a minimal walk over the top-level elements
  (``_walk_header``) finds the ~30 attributes the reader uses and the PixelData offset
  without building a pydicom Dataset (~0.15 ms a file here against ~0.8 ms for pydicom's
  parse, which dominated the read). Uncompressed pixels are then viewed in place with
  ``np.frombuffer`` (no copy); RLE greyscale frames go straight to pylibjpeg-rle, the
  decoder pydicom itself picks first. Sequences are skipped (undefined-length ones by
  walking their items). The walk declines, and pydicom parses the same bytes
  (``stop_before_pixels``), anything else: no preamble, another transfer syntax, another
  undefined length before the pixels, an unknown VR, a value needing pydicom's
  conversion (non-ASCII or multi-valued text), Modality / VOI LUT sequences; and an image
  the fast paths do not cover (palette, YBR, colour RLE, bit-packed) or an RLE stream
  pylibjpeg-rle refuses. The walk's findings are tested against pydicom's on its corpus.
- After pydicom's parse, the attributes are converted once from its raw elements
  (``header_facts``; ``Dataset.get`` costs ~25 us apiece); compressed pixels are decoded
  from the bytes in memory by pydicom 3's decoder for the syntax, with the options pydicom
  derives from the header (``as_pixel_options``), i.e. what ``pixel_array(file)`` does
  after its own parse, without parsing the file a second time. Anything unusual (no file
  meta, big endian, deflated, float pixel data, a decode that fails) takes pydicom's
  whole-file route. A header handed in by the caller (``ds=``, parsed with ``defer_size``)
  reads the pixels straight from the file offset instead.
- Unused high bits (Bits Stored < Bits Allocated) are cleared / sign-extended as pydicom
  does, but only when some pixel actually has them set (a min/max check, no copy).
- pydicom's reading validation is silenced only while this module reads (its warnings
  quote header values, i.e. PHI): ``pydicom.config`` is set and restored around each
  call, never changed for other users at import.
- Modality LUT (rescale slope/intercept or LUT sequence) is always applied; VOI LUT /
  window only when asked (``window="auto"`` uses the header's, or a preset name, or
  ``(centre, width)``).
- ``normalise`` maps to [0, 1] with bright = dense for both MONOCHROME1 and 2.
- Axes: ``CHW`` (one frame) or ``CFHW`` (multi-frame: frames are the depth axis).
- Nothing identifying leaves: ``meta`` is built from a whitelist of acquisition
  attributes; the study is named by a keyed pseudonym of its UID. Any failure is a
  ``MedicalDataError`` naming the file and the reason, never quoting header values (an
  Image Pixel integer that is present but not a number, e.g. Number of Frames, included).
"""

from __future__ import annotations

import io
import struct
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pydicom
import pydicom.config
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from .deid import DEFAULT_KEY, pseudonym
from .errors import MedicalDataError, library_failure
from .facts import NATIVE_LITTLE_ENDIAN, SR_SOP_CLASSES, WINDOW_PRESETS

try:  # pylibjpeg-rle: pydicom's own first choice for RLE Lossless (a declared dependency)
    from rle.utils import decode_frame as _rle_decode_frame
except ImportError:  # pragma: no cover - without it RLE goes through pydicom's decoder
    _rle_decode_frame = None


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

PIXEL_DATA = 0x7FE00010
_DEFER = 2048  # bytes: larger values (pixel data, big LUTs) are read only if used
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"


@dataclass
class DicomImage:
    array: np.ndarray  # modality units (after rescale), channel first; float32, or the stored ints if no rescale
    meta: dict[str, Any] = field(default_factory=dict)  # whitelisted, PHI-free
    photometric: str = "MONOCHROME2"
    window: tuple[float, float] | None = None  # (centre, width) applied or to apply

    @property
    def axes(self) -> str:
        return "CFHW" if self.array.ndim == 4 else "CHW"


def read_header(path: str | Path, *, stop_before_pixels: bool = False) -> Dataset:
    """Parse the header (pixel data deferred); a clear error for anything that is not DICOM."""
    path = Path(path)
    if not path.is_file():
        raise MedicalDataError(path, "is a folder, not a file" if path.is_dir() else "no such file")
    try:
        with quiet_validation():
            return _read_header(path, stop_before_pixels)
    except MedicalDataError:
        raise
    except Exception as exc:  # noqa: BLE001 - every library failure becomes our error, without its text
        raise library_failure(path, "DICOM header parse", exc) from None


def _read_header(path: Path, stop_before_pixels: bool) -> Dataset:
    try:
        ds = pydicom.dcmread(path, defer_size=_DEFER, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        # no preamble/meta: some real files are like that; accept only if it parses as DICOM
        # (not deferred: a deferred value is re-read later without force, which fails)
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
        if "SOPClassUID" not in ds and PIXEL_DATA not in ds and "Modality" not in ds:
            raise MedicalDataError(path, "not a DICOM file (no preamble, no DICOM attributes)") from None
        _infer_transfer_syntax(ds)
    return ds


_STREAM_SYNTAXES = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})  # big endian, deflated
_PIXEL_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian


def _file_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        if not path.is_file():
            raise MedicalDataError(path, "is a folder, not a file" if path.is_dir() else "no such file") from None
        raise MedicalDataError(path, f"unreadable ({type(exc).__name__})") from None


def _read_in_memory(path: Path, data: bytes | None = None) -> tuple[Dataset, bytes, int] | None:
    """(header, file bytes, offset of the PixelData element or -1), parsed by pydicom from memory;
    None when the file needs the tolerant path (no preamble / file meta)."""
    if data is None:
        data = _file_bytes(path)
    bio = io.BytesIO(data)
    try:
        with quiet_validation():
            ds = pydicom.dcmread(bio, stop_before_pixels=True)
    except InvalidDicomError:
        return None
    except Exception as exc:  # noqa: BLE001
        raise library_failure(path, "DICOM header parse", exc) from None
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta or str(meta.TransferSyntaxUID) in _STREAM_SYNTAXES:
        return None  # no file meta, big endian or deflated: the general (deferred) path
    pos = bio.tell()
    if data[pos:pos + 2] == b"\xe0\x7f" and data[pos:pos + 4] != _PIXEL_TAG:
        return None  # float / double float pixel data: the general path
    return ds, data, pos if data[pos:pos + 4] == _PIXEL_TAG else -1


# -- the header attributes the reader uses, converted once per file ----------------------------------

_US, _IS, _DS, _TEXT, _PRESENT = "US", "IS", "DS", "TEXT", "PRESENT"
_KINDS: dict[str, tuple[str, ...]] = {
    _US: ("SamplesPerPixel", "PlanarConfiguration", "Rows", "Columns", "BitsAllocated", "BitsStored",
          "PixelRepresentation"),
    _IS: ("NumberOfFrames",),
    _DS: ("SliceThickness", "ImagerPixelSpacing", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
          "WindowCenter", "WindowWidth", "RescaleIntercept", "RescaleSlope"),
    _TEXT: ("SOPClassUID", "Modality", "Manufacturer", "BodyPartExamined", "ViewPosition", "StudyInstanceUID",
            "SeriesInstanceUID", "PhotometricInterpretation", "BurnedInAnnotation"),
    _PRESENT: ("ModalityLUTSequence", "VOILUTSequence", "FloatPixelData", "DoubleFloatPixelData", "PixelData"),
}
_WANTED: dict[int, tuple[str, str]] = {int(tag_for_keyword(kw)): (kw, kind) for kind, kws in _KINDS.items()
                                       for kw in kws}
_EMPTY: dict[str, Any] = {kw: False if kind == _PRESENT else None for kind, kws in _KINDS.items() for kw in kws}
_TEXT_VRS = (None, "CS", "LO", "SH", "UI")  # None: implicit VR (the dictionary's, one of these)
_DS_CHARS = b"0123456789+-.eE \\"
_SLOW, _INVALID = object(), object()


def _raw_value(kind: str, vr: str | None, value: bytes, little_endian: bool = True) -> Any:
    """An element's value converted straight from its bytes, or ``_SLOW`` when pydicom should
    convert it (another VR than the dictionary's, non-ASCII or multi-valued text, odd numbers)."""
    if vr not in (_TEXT_VRS if kind == _TEXT else (None, kind)):
        return _SLOW
    if kind == _US:
        if len(value) == 2:
            return int.from_bytes(value, "little" if little_endian else "big")
        return None if not value else _SLOW
    if not value.isascii():
        return _SLOW
    try:
        if kind == _DS:
            if value.translate(None, _DS_CHARS):
                return _SLOW
            text = value.decode().strip()
            return [float(v) for v in text.split("\\")] if text else None
        if kind == _IS:
            text = value.decode().strip(" \0")
            return int(text) if text.lstrip("+-").isdigit() else None if not text else _SLOW
    except ValueError:
        return _SLOW
    if b"\\" in value or b"\x1b" in value:
        return _SLOW  # multi-valued text, an escape sequence (ISO 2022): pydicom's rules
    return value.decode().rstrip(" \0")


def _slow_value(kind: str, ds: Dataset, tag: int) -> Any:
    """pydicom's own conversion; never raises: a DS or text value it cannot convert counts as
    missing, a US / IS one (an Image Pixel attribute) is ``_INVALID``."""
    try:
        with quiet_validation():
            value = ds[tag].value
    except Exception:  # noqa: BLE001
        value = _INVALID
    if kind == _DS:
        return None if value is _INVALID else _float_list(value)
    if kind == _TEXT:
        return None if value is _INVALID else str(value) if value is not None and value != "" else ""
    try:  # US / IS
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return _INVALID


def header_facts(ds: Dataset) -> dict[str, Any]:
    """The attributes the reader uses, by keyword, as plain values: ints, lists of floats (DS),
    strings, each None when missing; presence flags (sequences, pixel data);
    ``TransferSyntaxUID``; and ``invalid``, the keywords of integers that are present but not
    numbers (counted as missing here). One pass over the header's raw elements."""
    facts = dict(_EMPTY)
    invalid = []
    for tag, elem in ds.items():
        want = _WANTED.get(tag)
        if want is None:
            continue
        kw, kind = want
        if kind == _PRESENT:
            facts[kw] = True
            continue
        value = _SLOW  # converted already or deferred: pydicom's value
        if type(elem) is RawDataElement and elem.value is not None:
            value = _raw_value(kind, elem.VR, elem.value, elem.is_little_endian)
        if value is _SLOW:
            value = _slow_value(kind, ds, tag)
            if value is _INVALID:
                invalid.append(kw)
                value = None
        facts[kw] = value
    facts["TransferSyntaxUID"] = _tsyntax(ds)
    facts["invalid"] = invalid
    return facts


# Every VR of PS3.5 6.2, and those with a 4-byte length in Explicit VR (PS3.5 7.1.2)
_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US "
                 b"UT UV".split())
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_WALK_SYNTAXES = frozenset({"1.2.840.10008.1.2.1", RLE_LOSSLESS})  # Explicit VR Little Endian, RLE Lossless
_TRANSFER_SYNTAX_TAG = 0x00020010
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, PIXEL_DATA})  # Float, Double Float, Pixel Data


_ITEM, _ITEM_END, _SEQUENCE_END = 0xE000, 0xE00D, 0xE0DD  # (FFFE,eeee) delimitation tags
_MAX_DEPTH = 16


def _skip_sequence(data: bytes, pos: int, depth: int = 0) -> int | None:
    """The offset just past an undefined-length sequence whose items start at ``pos`` (past its
    Sequence Delimitation Item), walking the items' elements; None when anything is unexpected."""
    unpack, end = struct.unpack_from, len(data)
    while depth < _MAX_DEPTH and pos + 8 <= end:
        group, element, length = unpack("<HHL", data, pos)
        pos += 8
        if group != 0xFFFE:
            return None
        if element == _SEQUENCE_END:
            return pos
        if element != _ITEM:
            return None
        if length != 0xFFFFFFFF:  # a defined-length item
            pos += length
            continue
        while True:  # an undefined-length item: its elements, to the Item Delimitation Item
            if pos + 8 > end:
                return None
            group, element, vr = unpack("<HH2s", data, pos)
            if group == 0xFFFE:
                if element != _ITEM_END:
                    return None
                pos += 8
                break
            if vr in _LONG_VRS:
                length, pos = unpack("<L", data, pos + 8)[0] if pos + 12 <= end else -1, pos + 12
            elif vr in _VRS:
                length, pos = unpack("<H", data, pos + 6)[0], pos + 8
            else:
                return None
            if length == 0xFFFFFFFF and vr == b"SQ":
                skipped = _skip_sequence(data, pos, depth + 1)
                if skipped is None:
                    return None
                pos = skipped
            elif 0 <= length != 0xFFFFFFFF:
                pos += length
            else:  # an undefined-length UN / OB inside an item, or a cut-off header: pydicom
                return None
    return None


def _walk_header(data: bytes) -> tuple[dict[str, Any], int] | None:
    """``(facts, offset of the PixelData element or -1)`` from a minimal walk over the top-level
    elements of a file in Explicit VR Little Endian (native or RLE), the File Meta included: the
    same facts as ``header_facts(pydicom.dcmread(...))``, without building a Dataset (a few us
    per element against pydicom's ~15). None, so that pydicom parses the file, for anything else:
    no preamble, another transfer syntax, an unknown VR (e.g. implicit VR data under an explicit
    syntax), an undefined length other than a sequence's (whose items are walked to its end), a
    length past the end before the pixel data, a value needing pydicom's conversion, Modality or
    VOI LUT sequences (applied by pydicom)."""
    if len(data) < 140 or data[128:132] != b"DICM":
        return None
    unpack, end, pos, ts = struct.unpack_from, len(data), 132, None
    found: dict[int, tuple[str, int, int]] = {}
    pixel_pos = -1
    while pos + 8 <= end:
        group, element, vr = unpack("<HH2s", data, pos)
        if vr in _LONG_VRS:
            if pos + 12 > end:
                return None
            length, start = unpack("<L", data, pos + 8)[0], pos + 12
        elif vr in _VRS:
            length, start = unpack("<H", data, pos + 6)[0], pos + 8
        else:
            return None
        tag = group << 16 | element
        if ts is None and group != 2:  # the first element after the File Meta: its syntax decides
            if _TRANSFER_SYNTAX_TAG not in found:
                return None
            _, at, n = found[_TRANSFER_SYNTAX_TAG]
            ts = data[at:at + n].decode("ascii", "replace").rstrip(" \0")
            if ts not in _WALK_SYNTAXES:
                return None
        if tag in _PIXEL_TAGS:
            found[tag] = (vr.decode(), start, 0)
            pixel_pos = pos if tag == PIXEL_DATA else -1
            break
        if length == 0xFFFFFFFF:
            pos = _skip_sequence(data, start) if vr == b"SQ" else None
            if pos is None:
                return None
            if tag in _WANTED:
                found[tag] = ("SQ", start, 0)
            continue
        if start + length > end:
            return None
        if tag in _WANTED or tag == _TRANSFER_SYNTAX_TAG:
            found[tag] = (vr.decode(), start, length)
        pos = start + length
    if ts is None:
        return None
    facts = dict(_EMPTY)
    for tag, (vr, start, length) in found.items():
        want = _WANTED.get(tag)
        if want is None:
            continue
        kw, kind = want
        if kind == _PRESENT:
            facts[kw] = True
            continue
        value = _raw_value(kind, vr, data[start:start + length])
        if value is _SLOW:
            return None
        facts[kw] = value
    if facts["ModalityLUTSequence"] or facts["VOILUTSequence"]:
        return None
    facts["TransferSyntaxUID"] = ts
    facts["invalid"] = []
    return facts, pixel_pos


def _native_from_bytes(f: dict[str, Any], data: bytes, pos: int, path: Path) -> np.ndarray | None:
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


def _infer_transfer_syntax(ds: Dataset) -> None:
    """A file without file meta: name the syntax it was actually encoded in."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                              ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _tsyntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    return str(ts) if ts else IMPLICIT_VR_LITTLE_ENDIAN


def _float_list(value: Any) -> list[float] | None:
    if value is None or value == "":
        return None
    try:
        return [float(v) for v in (value if isinstance(value, (list, tuple)) or hasattr(value, "__iter__")
                                   and not isinstance(value, (str, bytes)) else [value])]
    except (TypeError, ValueError):
        return None


def safe_meta(ds: Dataset, key: str = DEFAULT_KEY, *, facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """Acquisition facts only (no names, IDs, dates, UIDs); the study by keyed pseudonym."""
    f = facts if facts is not None else header_facts(ds)
    meta: dict[str, Any] = {
        "modality": f["Modality"] or "",
        "manufacturer": f["Manufacturer"] or "",
        "photometric": f["PhotometricInterpretation"] or "",
        "transfer_syntax": f["TransferSyntaxUID"],
        "sop_class": f["SOPClassUID"] or "",
        "rows": f["Rows"] or 0,
        "columns": f["Columns"] or 0,
        "frames": f["NumberOfFrames"] or 1,
        "bits_stored": f["BitsStored"] or 0,
        "view_position": f["ViewPosition"] or "",
        "body_part": f["BodyPartExamined"] or "",
    }
    spacing = f["PixelSpacing"] or f["ImagerPixelSpacing"]
    if spacing:
        meta["pixel_spacing"] = spacing
    for kw, name in (("ImageOrientationPatient", "orientation"), ("ImagePositionPatient", "position")):
        if f[kw]:
            meta[name] = f[kw]
    if f["SliceThickness"]:
        meta["slice_thickness"] = f["SliceThickness"][0]
    if f["StudyInstanceUID"] is not None:
        meta["study_key"] = pseudonym(f["StudyInstanceUID"], key, "st-")
    if f["SeriesInstanceUID"] is not None:
        meta["series_key"] = pseudonym(f["SeriesInstanceUID"], key, "se-")
    return meta


def _fast_native(ds: Dataset, path: Path, facts: dict[str, Any] | None = None) -> np.ndarray | None:
    """Read uncompressed little-endian pixel data straight from the file, or None if not eligible."""
    f = facts if facts is not None else header_facts(ds)
    if f["TransferSyntaxUID"] not in NATIVE_LITTLE_ENDIAN:
        return None
    raw = ds.get_item(PIXEL_DATA, keep_deferred=True) if PIXEL_DATA in ds else None
    if raw is None or getattr(raw, "value", None) is not None or getattr(raw, "value_tell", None) is None:
        return None
    return _native_array(f, path, raw.length,
                         lambda dtype, count: np.fromfile(path, dtype=dtype, count=count, offset=raw.value_tell))


def _pixel_dtype(f: dict[str, Any]) -> np.dtype:
    return np.dtype(f"<{'i' if f['PixelRepresentation'] == 1 else 'u'}{f['BitsAllocated'] // 8}")


def _native_array(f: dict[str, Any], path: Path, length: int,
                  read: Callable[[np.dtype, int], np.ndarray]) -> np.ndarray | None:
    bits, samples = f["BitsAllocated"] or 0, f["SamplesPerPixel"] or 1
    if bits not in (8, 16, 32) or samples not in (1, 3) or (samples == 3 and f["PlanarConfiguration"]):
        return None
    if f["PhotometricInterpretation"] not in ("MONOCHROME1", "MONOCHROME2", "RGB"):
        return None
    if f["FloatPixelData"] or f["DoubleFloatPixelData"]:
        return None
    dtype = _pixel_dtype(f)
    rows, cols, frames = f["Rows"], f["Columns"], f["NumberOfFrames"] or 1
    count = rows * cols * frames * samples
    if length < count * dtype.itemsize:
        raise MedicalDataError(path, f"pixel data is shorter ({length} bytes) than its header says "
                                     f"({count * dtype.itemsize} bytes)")
    arr = read(dtype, count)
    if arr.size != count:
        raise MedicalDataError(path, "pixel data is truncated")
    arr = _clear_unused_bits(arr, bits, f["BitsStored"] or bits)
    shape = (frames, rows, cols, samples) if frames > 1 else (rows, cols, samples)
    return arr.reshape(shape) if samples > 1 else arr.reshape(shape[:-1])


def _clear_unused_bits(arr: np.ndarray, bits: int, stored: int) -> np.ndarray:
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


def _rle_greyscale(f: dict[str, Any], fp: io.BytesIO) -> np.ndarray | None:
    """RLE Lossless greyscale frames decoded by pylibjpeg-rle straight from the fragments;
    None when not eligible (colour, odd bit depths, no pylibjpeg-rle)."""
    from pydicom.encaps import generate_frames

    bits, rows, cols = f["BitsAllocated"] or 0, f["Rows"], f["Columns"]
    if (_rle_decode_frame is None or bits not in (8, 16, 32) or (f["SamplesPerPixel"] or 1) != 1
            or f["PhotometricInterpretation"] not in ("MONOCHROME1", "MONOCHROME2")):
        return None
    frames, dtype, pixels = f["NumberOfFrames"] or 1, _pixel_dtype(f), rows * cols
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
    out = _clear_unused_bits(out, bits, f["BitsStored"] or bits)
    return out.reshape((frames, rows, cols) if frames > 1 else (rows, cols))


def _encapsulated_from_bytes(ds: Dataset, f: dict[str, Any], data: bytes, pos: int) -> np.ndarray | None:
    """Compressed pixels decoded from the bytes the header was parsed from, or None if not
    eligible. What pydicom's ``pixel_array(file)`` does after its own header parse: the same
    decoder, options and processing (RGB conversion, bit and sign corrections)."""
    from pydicom.pixels import get_decoder
    from pydicom.pixels.utils import as_pixel_options
    from pydicom.uid import UID

    ts = UID(f["TransferSyntaxUID"])
    if not ts.is_encapsulated or data[pos + 4:pos + 12] != b"OB\0\0\xff\xff\xff\xff":
        return None
    fp = io.BytesIO(data)
    fp.seek(pos + 12)  # the start of the PixelData value (the Basic Offset Table item)
    if ts == RLE_LOSSLESS:
        arr = _rle_greyscale(f, fp)
        if arr is not None:
            return arr
        fp.seek(pos + 12)
    opts = as_pixel_options(ds, transfer_syntax_uid=ts, pixel_keyword="PixelData", pixel_vr="OB")
    return get_decoder(ts).as_array(fp, validate=True, **opts)[0]


def _walked_pixels(f: dict[str, Any], data: bytes, pos: int, path: Path) -> np.ndarray | None:
    """The pixels of a walked header (native or RLE greyscale) from ``data``, or None when
    pydicom must parse the file (any other image; an RLE stream pylibjpeg-rle refuses)."""
    if pos < 0:
        return None
    if f["TransferSyntaxUID"] != RLE_LOSSLESS:
        return _native_from_bytes(f, data, pos, path)
    if data[pos + 4:pos + 12] != b"OB\0\0\xff\xff\xff\xff":
        return None
    fp = io.BytesIO(data)
    fp.seek(pos + 12)
    try:
        return _rle_greyscale(f, fp)
    except Exception:  # noqa: BLE001 - pydicom's decoders decide (and name the failure)
        return None


def _decoded(ds: Dataset, path: Path, data: bytes | None = None, pos: int = -1,
             facts: dict[str, Any] | None = None) -> np.ndarray:
    from pydicom.pixels import apply_color_lut, pixel_array

    f = facts if facts is not None else header_facts(ds)
    try:
        with quiet_validation():
            arr = None
            if data is not None and pos >= 0:
                try:  # from the bytes already in memory and the header already parsed
                    arr = _encapsulated_from_bytes(ds, f, data, pos)
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


def _modality_lut(ds: Dataset, arr: np.ndarray, facts: dict[str, Any] | None = None) -> np.ndarray:
    f = facts if facts is not None else header_facts(ds)
    if f["ModalityLUTSequence"]:
        from pydicom.pixels import apply_modality_lut

        return apply_modality_lut(arr, ds).astype(np.float32, copy=False)
    s = f["RescaleSlope"][0] if f["RescaleSlope"] else 1.0
    b = f["RescaleIntercept"][0] if f["RescaleIntercept"] else 0.0
    if s != 1.0 or b != 0.0:
        out = arr.astype(np.float32)
        if s != 1.0:
            out *= np.float32(s)
        if b != 0.0:
            out += np.float32(b)
        return out
    return arr  # identity LUT: keep the integer array (normalise converts in one pass)


def _header_window(f: dict[str, Any]) -> tuple[float, float] | None:
    c, w = f["WindowCenter"], f["WindowWidth"]
    if c and w and w[0] > 0:
        return c[0], w[0]
    return None


def header_window(ds: Dataset) -> tuple[float, float] | None:
    return _header_window(header_facts(ds))


def _resolve_window(f: dict[str, Any], window: Any) -> tuple[float, float] | str | None:
    if window is None or window is False:
        return None
    if window == "auto":
        if f["VOILUTSequence"]:
            return "voi_lut"
        return _header_window(f)
    if isinstance(window, str):
        if window not in WINDOW_PRESETS:
            raise MedicalDataError(None, f"unknown window preset {window!r}; known: {sorted(WINDOW_PRESETS)}")
        return WINDOW_PRESETS[window]
    c, w = window
    return float(c), float(w)


def resolve_window(ds: Dataset, window: Any) -> tuple[float, float] | str | None:
    return _resolve_window(header_facts(ds), window)


def read_dicom(path: str | Path, *, window: Any = None, key: str = DEFAULT_KEY, burned_in: str = "refuse",
               ds: Dataset | None = None) -> DicomImage:
    """Decode ``path`` into a ``DicomImage`` (modality units, channel first, PHI-free meta)."""
    path = Path(path)
    data, pos, walked = None, -1, None
    if ds is None:
        data = _file_bytes(path)
        walked = _walk_header(data)
        if walked is None:
            parsed = _read_in_memory(path, data)
            if parsed is None:  # the tolerant, deferred path (pixels read from the file offset)
                ds, data = read_header(path), None
            else:
                ds, data, pos = parsed
    if walked is not None:
        f, pos = walked
    else:
        try:
            f = header_facts(ds)
        except Exception as exc:  # noqa: BLE001
            raise library_failure(path, "DICOM header parse", exc) from None
    if f["invalid"]:
        raise MedicalDataError(path, f"{', '.join(f['invalid'])}: not a valid number")
    if (f["BurnedInAnnotation"] or "").upper() == "YES":
        if burned_in == "refuse":
            raise MedicalDataError(path, "BurnedInAnnotation is YES: the pixels may show identifying text; "
                                         "refused (pass burned_in='warn' to accept)")
        warnings.warn(f"{path}: BurnedInAnnotation is YES; pixels may show identifying text", stacklevel=2)
    if f["SOPClassUID"] in SR_SOP_CLASSES:
        raise MedicalDataError(path, "a structured report (SR) has no image; read it with mmdomain_medical.sr")
    if not f["PixelData"] and pos < 0:
        if not f["FloatPixelData"] and not f["DoubleFloatPixelData"]:
            raise MedicalDataError(path, "no pixel data in this DICOM file")
    for kw in ("Rows", "Columns"):
        if not f[kw]:
            raise MedicalDataError(path, f"{kw} is missing or zero")
    try:
        if walked is not None:
            arr = _walked_pixels(f, data, pos, path)
            if arr is None:  # an image the walk does not cover: pydicom parses the same bytes
                parsed = _read_in_memory(path, data)
                if parsed is None:
                    ds, data, pos = read_header(path), None, -1
                else:
                    ds, data, pos = parsed
                f = header_facts(ds)
        if ds is not None:
            arr = (_fast_native(ds, path, f) if data is None else
                   _native_from_bytes(f, data, pos, path) if pos >= 0 else None)
    except MedicalDataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise library_failure(path, "reading pixel data", exc) from None
    if arr is None:
        arr = _decoded(ds, path, data, pos, f)
    photometric = f["PhotometricInterpretation"] or "MONOCHROME2"
    frames = f["NumberOfFrames"] or 1
    color = arr.ndim == (4 if frames > 1 else 3)
    try:
        if color:  # C first: (3,H,W) or (3,F,H,W), converted and laid out in one pass
            out = np.ascontiguousarray(np.moveaxis(arr, -1, 0), dtype=np.float32)
        else:
            out = _modality_lut(ds, arr, f)[None]  # (1,H,W) or (1,F,H,W)
            win = _resolve_window(f, window)
            if win == "voi_lut":
                from pydicom.pixels import apply_voi_lut

                out = apply_voi_lut(out[0], ds).astype(np.float32, copy=False)[None]
                win = (float(out.min()) + (float(out.max()) - float(out.min())) / 2, max(float(out.max()) - float(out.min()), 1e-6))
            window = win
    except MedicalDataError as exc:
        raise MedicalDataError(path, exc.reason) from None
    except Exception as exc:  # noqa: BLE001
        raise library_failure(path, "intensity transform", exc) from None
    if not color and frames > 1 and out.ndim == 3:  # a 1-frame "multi-frame" decoded as (H,W)
        out = out[:, None]
    meta = safe_meta(ds, key, facts=f)
    return DicomImage(np.ascontiguousarray(out), meta, photometric, window if not color else None)


def normalise(img: DicomImage) -> np.ndarray:
    """[0, 1] float32: windowed if a window is set, else min-max; MONOCHROME1 inverted."""
    x = img.array
    if img.window is not None and img.photometric.startswith("MONOCHROME"):
        c, w = img.window
        lo = c - w / 2.0
        y = x - np.float32(lo)  # the one new array; the rest in place
        y *= np.float32(1.0 / w)
        np.clip(y, 0.0, 1.0, out=y)
        if img.photometric == "MONOCHROME1":
            np.subtract(1.0, y, out=y)
        return y.astype(np.float32, copy=False)
    lo, hi = x.min(), x.max()  # on the stored dtype: cheaper than on float
    out = np.empty(x.shape, np.float32)
    if hi <= lo:
        out.fill(0.0)
        return out
    scale = np.float32(1.0 / (float(hi) - float(lo)))
    if img.photometric == "MONOCHROME1":  # inverted in the same pass
        np.subtract(np.float32(hi), x, out=out, dtype=np.float32)
    else:
        np.subtract(x, np.float32(lo), out=out, dtype=np.float32)
    out *= scale
    return out
