"""Read one DICOM file into a float32 array (channel first) and a PHI-free meta dict.

- The file is read once into memory and its header parsed by pydicom up to PixelData
  (``stop_before_pixels``); uncompressed little-endian pixels are then viewed in place
  with ``np.frombuffer`` (no copy), and every compressed syntax is decoded from the same
  bytes by pydicom 3's ``pixels.pixel_array`` (pylibjpeg / openjpeg / RLE plugins).
  A header handed in by the caller (``ds=``, parsed with ``defer_size``) reads the
  pixels straight from the file offset instead.
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
  ``MedicalDataError`` naming the file and the reason, never quoting header values.
"""

from __future__ import annotations

import io
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.config
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from .deid import DEFAULT_KEY, pseudonym
from .errors import MedicalDataError, library_failure
from .facts import NATIVE_LITTLE_ENDIAN, SR_SOP_CLASSES, WINDOW_PRESETS


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


def _read_in_memory(path: Path) -> tuple[Dataset, bytes, int] | None:
    """(header, file bytes, offset of the PixelData element or -1), parsed once from memory;
    None when the file needs the tolerant path (no preamble / file meta)."""
    if not path.is_file():
        raise MedicalDataError(path, "is a folder, not a file" if path.is_dir() else "no such file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MedicalDataError(path, f"unreadable ({type(exc).__name__})") from None
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


def _native_from_bytes(ds: Dataset, data: bytes, pos: int, path: Path) -> np.ndarray | None:
    """Uncompressed little-endian pixels viewed in ``data`` (no copy), or None if not eligible."""
    ts = _tsyntax(ds)
    if ts not in NATIVE_LITTLE_ENDIAN:
        return None
    implicit = ts == "1.2.840.10008.1.2"
    if implicit:
        length, offset = int.from_bytes(data[pos + 4:pos + 8], "little"), pos + 8
    else:
        if data[pos + 4:pos + 6] not in (b"OB", b"OW"):
            return None
        length, offset = int.from_bytes(data[pos + 8:pos + 12], "little"), pos + 12
    if length == 0xFFFFFFFF:
        return None
    return _native_array(ds, path, length, lambda dtype, count: np.frombuffer(data, dtype, count, offset)
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
    return str(ts) if ts else "1.2.840.10008.1.2"


def _float_list(value: Any) -> list[float] | None:
    if value is None or value == "":
        return None
    try:
        return [float(v) for v in (value if isinstance(value, (list, tuple)) or hasattr(value, "__iter__")
                                   and not isinstance(value, (str, bytes)) else [value])]
    except (TypeError, ValueError):
        return None


def safe_meta(ds: Dataset, key: str = DEFAULT_KEY) -> dict[str, Any]:
    """Acquisition facts only (no names, IDs, dates, UIDs); the study by keyed pseudonym."""
    g = ds.get
    meta: dict[str, Any] = {
        "modality": str(g("Modality", "") or ""),
        "manufacturer": str(g("Manufacturer", "") or ""),
        "photometric": str(g("PhotometricInterpretation", "") or ""),
        "transfer_syntax": _tsyntax(ds),
        "sop_class": str(g("SOPClassUID", "") or ""),
        "rows": int(g("Rows", 0) or 0),
        "columns": int(g("Columns", 0) or 0),
        "frames": int(g("NumberOfFrames", 1) or 1),
        "bits_stored": int(g("BitsStored", 0) or 0),
        "view_position": str(g("ViewPosition", "") or ""),
        "body_part": str(g("BodyPartExamined", "") or ""),
    }
    spacing = _float_list(g("PixelSpacing", None)) or _float_list(g("ImagerPixelSpacing", None))
    if spacing:
        meta["pixel_spacing"] = spacing
    for kw, name in (("ImageOrientationPatient", "orientation"), ("ImagePositionPatient", "position")):
        v = _float_list(g(kw, None))
        if v:
            meta[name] = v
    thickness = _float_list(g("SliceThickness", None))
    if thickness:
        meta["slice_thickness"] = thickness[0]
    if "StudyInstanceUID" in ds:
        meta["study_key"] = pseudonym(str(ds.StudyInstanceUID), key, "st-")
    if "SeriesInstanceUID" in ds:
        meta["series_key"] = pseudonym(str(ds.SeriesInstanceUID), key, "se-")
    return meta


def _fast_native(ds: Dataset, path: Path) -> np.ndarray | None:
    """Read uncompressed little-endian pixel data straight from the file, or None if not eligible."""
    if _tsyntax(ds) not in NATIVE_LITTLE_ENDIAN:
        return None
    raw = ds.get_item(PIXEL_DATA, keep_deferred=True) if PIXEL_DATA in ds else None
    if raw is None or getattr(raw, "value", None) is not None or getattr(raw, "value_tell", None) is None:
        return None
    return _native_array(ds, path, raw.length,
                         lambda dtype, count: np.fromfile(path, dtype=dtype, count=count, offset=raw.value_tell))


def _native_array(ds: Dataset, path: Path, length: int, read) -> np.ndarray | None:
    bits, samples = int(ds.get("BitsAllocated", 0) or 0), int(ds.get("SamplesPerPixel", 1) or 1)
    if bits not in (8, 16, 32) or samples not in (1, 3) or (samples == 3 and int(ds.get("PlanarConfiguration", 0) or 0)):
        return None
    if str(ds.get("PhotometricInterpretation", "")) not in ("MONOCHROME1", "MONOCHROME2", "RGB"):
        return None
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        return None
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    rows, cols, frames = int(ds.Rows), int(ds.Columns), int(ds.get("NumberOfFrames", 1) or 1)
    count = rows * cols * frames * samples
    if length < count * dtype.itemsize:
        raise MedicalDataError(path, f"pixel data is shorter ({length} bytes) than its header says "
                                     f"({count * dtype.itemsize} bytes)")
    arr = read(dtype, count)
    if arr.size != count:
        raise MedicalDataError(path, "pixel data is truncated")
    stored = int(ds.get("BitsStored", bits) or bits)
    if stored < bits:  # clear unused high bits (and sign-extend signed values)
        if signed:
            shift = bits - stored
            arr = (arr << shift) >> shift
        else:
            arr = arr & np.array((1 << stored) - 1, dtype=dtype)
    shape = (frames, rows, cols, samples) if frames > 1 else (rows, cols, samples)
    return arr.reshape(shape) if samples > 1 else arr.reshape(shape[:-1])


def _decoded(ds: Dataset, path: Path, data: bytes | None = None) -> np.ndarray:
    from pydicom.pixels import apply_color_lut, pixel_array

    try:
        with quiet_validation():
            # from the bytes already in memory: pydicom decodes frame by frame into one array
            if data is None:
                arr = ds.pixel_array
            else:
                try:
                    arr = pixel_array(io.BytesIO(data))
                except Exception:  # noqa: BLE001 - some odd files decode only via the Dataset route
                    arr = pydicom.dcmread(io.BytesIO(data)).pixel_array
            if str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
                arr = apply_color_lut(arr, ds)
    except MedicalDataError:
        raise
    except Exception as exc:  # noqa: BLE001
        ts = _tsyntax(ds)
        raise library_failure(path, f"pixel decoding (transfer syntax {ts})", exc) from None
    return arr


def _modality_lut(ds: Dataset, arr: np.ndarray) -> np.ndarray:
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        return apply_modality_lut(arr, ds).astype(np.float32, copy=False)
    slope = _float_list(ds.get("RescaleSlope", None))
    intercept = _float_list(ds.get("RescaleIntercept", None))
    s = slope[0] if slope else 1.0
    b = intercept[0] if intercept else 0.0
    if s != 1.0 or b != 0.0:
        return arr.astype(np.float32) * np.float32(s) + np.float32(b)
    return arr  # identity LUT: keep the integer array (normalise converts in one pass)


def header_window(ds: Dataset) -> tuple[float, float] | None:
    c, w = _float_list(ds.get("WindowCenter", None)), _float_list(ds.get("WindowWidth", None))
    if c and w and w[0] > 0:
        return c[0], w[0]
    return None


def resolve_window(ds: Dataset, window: Any) -> tuple[float, float] | str | None:
    if window is None or window is False:
        return None
    if window == "auto":
        if "VOILUTSequence" in ds:
            return "voi_lut"
        return header_window(ds)
    if isinstance(window, str):
        if window not in WINDOW_PRESETS:
            raise MedicalDataError(None, f"unknown window preset {window!r}; known: {sorted(WINDOW_PRESETS)}")
        return WINDOW_PRESETS[window]
    c, w = window
    return float(c), float(w)


def read_dicom(path: str | Path, *, window: Any = None, key: str = DEFAULT_KEY, burned_in: str = "refuse",
               ds: Dataset | None = None) -> DicomImage:
    """Decode ``path`` into a ``DicomImage`` (modality units, channel first, PHI-free meta)."""
    path = Path(path)
    data, pos = None, -1
    if ds is None:
        parsed = _read_in_memory(path)
        if parsed is None:
            ds = read_header(path)
        else:
            ds, data, pos = parsed
    if str(ds.get("BurnedInAnnotation", "") or "").upper() == "YES":
        if burned_in == "refuse":
            raise MedicalDataError(path, "BurnedInAnnotation is YES: the pixels may show identifying text; "
                                         "refused (pass burned_in='warn' to accept)")
        warnings.warn(f"{path}: BurnedInAnnotation is YES; pixels may show identifying text", stacklevel=2)
    if str(ds.get("SOPClassUID", "")) in SR_SOP_CLASSES:
        raise MedicalDataError(path, "a structured report (SR) has no image; read it with mmdomain_medical.sr")
    if PIXEL_DATA not in ds and pos < 0:
        if "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            raise MedicalDataError(path, "no pixel data in this DICOM file")
    for kw in ("Rows", "Columns"):
        if not ds.get(kw):
            raise MedicalDataError(path, f"{kw} is missing or zero")
    try:
        arr = _fast_native(ds, path) if data is None else _native_from_bytes(ds, data, pos, path) if pos >= 0 else None
    except MedicalDataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise library_failure(path, "reading pixel data", exc) from None
    if arr is None:
        arr = _decoded(ds, path, data)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    color = arr.ndim == (4 if frames > 1 else 3)
    try:
        if color:
            out = arr.astype(np.float32, copy=False)
            out = np.moveaxis(out, -1, 0)  # C first: (3,H,W) or (3,F,H,W)
        else:
            out = _modality_lut(ds, arr)[None]  # (1,H,W) or (1,F,H,W)
            win = resolve_window(ds, window)
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
    meta = safe_meta(ds, key)
    return DicomImage(np.ascontiguousarray(out), meta, photometric, window if not color else None)


def normalise(img: DicomImage) -> np.ndarray:
    """[0, 1] float32: windowed if a window is set, else min-max; MONOCHROME1 inverted."""
    x = img.array
    if img.window is not None and img.photometric.startswith("MONOCHROME"):
        c, w = img.window
        lo = c - w / 2.0
        x = np.clip((x - np.float32(lo)) * np.float32(1.0 / w), 0.0, 1.0)
        if img.photometric == "MONOCHROME1":
            x = 1.0 - x
        return x.astype(np.float32, copy=False)
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
