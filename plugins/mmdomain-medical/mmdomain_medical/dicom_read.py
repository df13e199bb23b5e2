"""Read one DICOM file into a float32 array (channel first) and a PHI-free meta dict, and into
the tensors the models take (``image_tensor``, ``volume_tensor``).

- The file is read once into memory. Its header is then read by the first reader that
  accepts it: the fast walk over the bytes (``header_walk``), then pydicom's parse of the same
  bytes (``stop_before_pixels``), then pydicom's tolerant, deferred parse of the file (no
  preamble or file meta, big endian, deflated, float pixel data). A header read earlier is
  taken instead: a ``DicomHeader`` record from the index (``header=``, used while the file is
  unchanged), or a pydicom Dataset (``ds=``, whose pixels are read from the file offset).
- Pixels come from ``dicom_pixels``, from the bytes in memory. When the facts came without a
  Dataset and the image needs one, pydicom parses the same bytes: the walk's facts for an
  image its fast paths do not cover (palette, YBR, colour RLE, bit-packed, an RLE stream
  pylibjpeg-rle refuses), and any record for a palette image or a LUT sequence.
- Intensities come from ``intensity``: the Modality LUT is always applied, a window only when
  asked, and ``normalise`` maps to [0, 1].
- Hostile files are refused before they cost anything: only a regular file within
  ``limits.DICOM_FILE_BYTES`` is read (never a FIFO or a device), a deflated one only if it
  inflates within ``limits.DICOM_INFLATED_BYTES`` (``dicom_parse``), and no pixel is decoded
  before the declared sizes pass ``dicom_pixels.check_pixel_budget`` and compressed pixel data
  passes ``dicom_pixels.check_encapsulated``.
- Nothing identifying leaves. ``meta`` is built from a whitelist of acquisition attributes
  (``dicom_header.safe_meta``), and the study is named by a keyed pseudonym of its UID. Any
  failure, a decoder's included, is a ``MedicalDataError`` that names the file (by pseudonym
  inside a dataset: ``errors.shown``) and the reason without quoting header values. That
  includes an Image Pixel integer that is present but not a number, e.g. Number of Frames.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from .deid import DEFAULT_KEY
from .dicom_header import DicomHeader, header_facts, safe_meta
from .dicom_parse import PIXEL_DATA, check_deflated_bytes, pixel_offset, quiet_validation, read_header, read_regular
from .dicom_pixels import (CHECKED_SYNTAXES, check_encapsulated, check_pixel_budget, decoded, encapsulated_value,
                           fast_pixels, native_from_bytes, native_from_file)
from .errors import MedicalDataError, is_interrupt, library_failure, shown
from .facts import SR_SOP_CLASSES
from .header_walk import walk_header
from .intensity import modality_image, normalise


# implicit, explicit, deflated explicit VR little endian, explicit VR big endian
_UNENCAPSULATED = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99",
                             "1.2.840.10008.1.2.2"})


@dataclass
class DicomImage:
    array: np.ndarray  # modality units (after rescale), channel first; float32, or the stored ints if no rescale
    meta: dict[str, Any] = field(default_factory=dict)  # whitelisted, PHI-free
    photometric: str = "MONOCHROME2"
    window: tuple[float, float] | None = None  # (centre, width) applied or to apply

    @property
    def axes(self) -> str:
        return "CFHW" if self.array.ndim == 4 else "CHW"


@dataclass
class _Header:
    """What the reader knows of the file: its facts, the PixelData offset in ``data`` (-1 when
    unknown), the file's bytes (None on the deferred route), and how the facts were read."""

    facts: dict[str, Any]
    pos: int = -1
    data: bytes | None = None
    ds: Dataset | None = None  # pydicom's parse, when there was one
    options: dict[str, Any] | None = None  # pydicom's decoder options, from an index record
    walked: bool = False


def _file_bytes(path: Path) -> bytes:
    """The file's bytes: a regular file within the ceilings, a deflated one within its inflated size."""
    data = read_regular(path)
    check_deflated_bytes(path, data)
    return data


def _read_in_memory(path: Path, data: bytes) -> tuple[Dataset, int] | None:
    """(header, offset of the PixelData element or -1), parsed by pydicom from ``data``; None
    when the file needs the tolerant, deferred route (``pixel_offset``)."""
    bio = io.BytesIO(data)
    try:
        with quiet_validation():
            ds = pydicom.dcmread(bio, stop_before_pixels=True)
    except InvalidDicomError:
        return None
    except Exception as exc:  # noqa: BLE001
        raise library_failure(path, "DICOM header parse", exc) from None
    pos = bio.tell()
    offset = pixel_offset(ds, data[pos:pos + 4], pos)
    return None if offset is None else (ds, offset)


def _facts(path: Path, ds: Dataset) -> dict[str, Any]:
    try:
        return header_facts(ds)
    except Exception as exc:  # noqa: BLE001
        raise library_failure(path, "DICOM header parse", exc) from None


def _pydicom(path: Path, data: bytes | None) -> _Header:
    """pydicom's parse: of the bytes in memory, else the tolerant, deferred parse of the file."""
    parsed = _read_in_memory(path, data) if data is not None else None
    if parsed is None:  # pixels are then read from the file offset, or by pydicom
        ds = read_header(path)
        return _Header(_facts(path, ds), ds=ds)
    ds, pos = parsed
    return _Header(_facts(path, ds), pos, data, ds)


def _header(path: Path, ds: Dataset | None, header: DicomHeader | None) -> _Header:
    """The file's header: the caller's, else read by the readers in order (the walk, pydicom)."""
    if ds is not None:
        return _Header(_facts(path, ds), ds=ds)
    data = _file_bytes(path)
    if header is not None and header.describes(data, path.stat().st_mtime_ns):
        return _Header(header.facts, header.pixel_offset, data, options=header.pixel_options)
    walked = walk_header(data)
    if walked is not None:
        return _Header(walked[0], walked[1], data, walked=True)
    return _pydicom(path, data)


def _check(path: Path, f: dict[str, Any], pos: int, burned_in: str) -> None:
    """Refuse, naming the file, what the reader does not turn into an image."""
    if f["invalid"]:
        raise MedicalDataError(path, f"{', '.join(f['invalid'])}: not a valid number")
    if (f["BurnedInAnnotation"] or "").upper() == "YES":
        if burned_in == "refuse":
            raise MedicalDataError(path, "BurnedInAnnotation is YES: the pixels may show identifying text; "
                                         "refused (pass burned_in='warn' to accept)")
        warnings.warn(f"{shown(path)}: BurnedInAnnotation is YES; pixels may show identifying text", stacklevel=3)
    if f["SOPClassUID"] in SR_SOP_CLASSES:
        raise MedicalDataError(path, "a structured report (SR) has no image; read it with mmdomain_medical.sr")
    if not f["PixelData"] and pos < 0:
        if not f["FloatPixelData"] and not f["DoubleFloatPixelData"]:
            raise MedicalDataError(path, "no pixel data in this DICOM file")
    for kw in ("Rows", "Columns"):
        if not f[kw]:
            raise MedicalDataError(path, f"{kw} is missing or zero")
    check_pixel_budget(path, f)


def _check_compressed(path: Path, h: _Header) -> None:
    """Compressed pixel data is checked before any decoder sees it (``check_encapsulated``): in the
    bytes in memory, else (a header parsed by pydicom, pixels deferred) in the file's."""
    ts = h.facts["TransferSyntaxUID"]
    if ts in _UNENCAPSULATED:
        return
    if ts not in CHECKED_SYNTAXES:
        with quiet_validation():  # pydicom warns, quoting it, about a malformed UID
            try:
                encapsulated = UID(ts).is_encapsulated
            except Exception:  # noqa: BLE001 - not a transfer syntax pydicom knows: its decoders refuse it
                encapsulated = False
        if not encapsulated:
            return
    if h.data is not None and h.pos >= 0:
        start = encapsulated_value(h.data, h.pos)
        if start is None:
            raise MedicalDataError(path, "a compressed transfer syntax, but the pixel data is not encapsulated")
        check_encapsulated(path, h.facts, h.data, start)
        return
    elem = h.ds.get_item(PIXEL_DATA, keep_deferred=True) if h.ds is not None and PIXEL_DATA in h.ds else None
    value, tell = getattr(elem, "value", None), getattr(elem, "value_tell", None)
    if isinstance(value, (bytes, bytearray)):
        check_encapsulated(path, h.facts, bytes(value), 0)
    elif tell is not None:
        check_encapsulated(path, h.facts, read_regular(path), tell)
    else:
        raise MedicalDataError(path, "compressed pixel data that cannot be checked before decoding")


def _needs_dataset(f: dict[str, Any]) -> bool:
    """Whether pydicom's Dataset must apply something to the pixels (a palette, a LUT sequence)."""
    return f["PhotometricInterpretation"] == "PALETTE COLOR" or f["ModalityLUTSequence"] or f["VOILUTSequence"]


def _pixels(path: Path, h: _Header) -> tuple[_Header, np.ndarray]:
    """The decoded pixels (and the header, parsed by pydicom now if the image needed it)."""
    arr = None
    try:
        _check_compressed(path, h)
        if h.ds is None and _needs_dataset(h.facts):
            h = _pydicom(path, h.data)
        if h.ds is None:
            arr = fast_pixels(h.facts, h.data, h.pos, path)
            if arr is None and h.walked:  # an image the walk's fast paths do not cover: pydicom parses the bytes
                h = _pydicom(path, h.data)
        if h.ds is not None:
            arr = (native_from_file(h.ds, path, h.facts) if h.data is None else
                   native_from_bytes(h.facts, h.data, h.pos, path) if h.pos >= 0 else None)
    except MedicalDataError:
        raise
    except BaseException as exc:  # noqa: BLE001 - a decoder's Rust panic is a BaseException too
        if is_interrupt(exc):
            raise
        raise library_failure(path, "reading pixel data", exc) from None
    if arr is None:
        arr = decoded(path, h.facts, h.data, h.pos, h.ds, h.options)
    return h, arr


def read_dicom(path: str | Path, *, window: Any = None, key: str = DEFAULT_KEY, burned_in: str = "refuse",
               ds: Dataset | None = None, header: DicomHeader | None = None) -> DicomImage:
    """Decode ``path`` into a ``DicomImage`` (modality units, channel first, PHI-free meta).

    ``header``: the file's ``DicomHeader`` record, read before (the index's); ``ds``: its header
    parsed by pydicom (``dicom_parse.read_header``). Either spares the reader a header read."""
    path = Path(path)
    h = _header(path, ds, header)
    _check(path, h.facts, h.pos, burned_in)
    h, arr = _pixels(path, h)
    f = h.facts
    try:
        out, window = modality_image(arr, f, window, h.ds)
    except MedicalDataError as exc:
        raise MedicalDataError(path, exc.reason) from None
    except BaseException as exc:  # noqa: BLE001
        if is_interrupt(exc):
            raise
        raise library_failure(path, "intensity transform", exc) from None
    return DicomImage(np.ascontiguousarray(out), safe_meta(f, key), f["PhotometricInterpretation"] or "MONOCHROME2",
                      window)


# -- DICOM to model tensors --------------------------------------------------------------------------

def image_tensor(path: str | Path, *, size: int, window: Any = None, key: str = DEFAULT_KEY,
                 burned_in: str = "refuse", header: DicomHeader | None = None) -> torch.Tensor:
    """Decode, normalise to [0, 1], take one greyscale frame, resize to ``[1, size, size]``."""
    x = normalise(read_dicom(path, window=window, key=key, burned_in=burned_in, header=header))
    if x.ndim == 4:  # CFHW: the middle frame
        x = x[:, x.shape[1] // 2]
    if x.shape[0] != 1:  # colour -> grey
        x = x.mean(0, keepdims=True)
    t = torch.from_numpy(np.ascontiguousarray(x))
    if tuple(t.shape[1:]) != (size, size):
        t = _resize(t, size)
    return t.float().contiguous()


def _resize(t: torch.Tensor, size: int) -> torch.Tensor:
    # MONAI is imported here, not at the top: its import takes ~10 s here, and the reader's other
    # users (the CLI's inspect, SR reports, series) never resize
    from monai.transforms import Resize

    t = Resize((size, size), mode="area")(t)
    return t.as_tensor() if hasattr(t, "as_tensor") else t


def volume_tensor(img: DicomImage) -> torch.Tensor:
    """A multi-frame image or a series (``series.load_series``) as ``[C, D, H, W]`` in [0, 1]
    (one frame: ``D`` = 1)."""
    x = normalise(img)
    return torch.from_numpy(x if x.ndim == 4 else x[:, None])
