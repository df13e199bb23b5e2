"""Intensities of a decoded DICOM image: LUTs, windows, normalisation.

- The Modality LUT (rescale slope / intercept, or a Modality LUT Sequence through pydicom) is
  always applied; an identity rescale keeps the stored integers (``normalise`` converts them
  in one pass).
- A VOI window only when asked: ``window="auto"`` takes the header's (its VOI LUT Sequence
  through pydicom, else Window Center / Width), a preset name (``facts.WINDOW_PRESETS``), or
  ``(centre, width)``.
- ``normalise`` maps to [0, 1] float32 with bright = dense for both MONOCHROME1 and 2:
  windowed when a window is set, else min-max.
- Axes are channel first: ``CHW`` for one frame, ``CFHW`` for multi-frame (the frames are the
  depth axis).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from .errors import MedicalDataError
from .facts import WINDOW_PRESETS

if TYPE_CHECKING:  # for the annotation only: dicom_read imports this module
    from .dicom_read import DicomImage

Window = tuple[float, float]


def modality_image(arr: np.ndarray, f: dict[str, Any], window: Any,
                   ds: Dataset | None) -> tuple[np.ndarray, Window | None]:
    """Decoded pixels (rows, columns[, samples], frames first) as a channel-first array in
    modality units, and the window to apply (None for colour). ``ds`` is needed only for a
    Modality or VOI LUT Sequence."""
    frames = f["NumberOfFrames"] or 1
    if arr.ndim == (4 if frames > 1 else 3):  # colour, C first: (3,H,W) or (3,F,H,W) in one pass
        return np.ascontiguousarray(np.moveaxis(arr, -1, 0), dtype=np.float32), None
    out = modality_lut(arr, f, ds)[None]  # (1,H,W) or (1,F,H,W)
    win = resolve_window(f, window)
    if win == "voi_lut":
        out = apply_voi_lut(out[0], ds).astype(np.float32, copy=False)[None]
        lo, hi = float(out.min()), float(out.max())
        win = (lo + (hi - lo) / 2, max(hi - lo, 1e-6))
    if frames > 1 and out.ndim == 3:  # a 1-frame "multi-frame" decoded as (H,W)
        out = out[:, None]
    return out, win


def modality_lut(arr: np.ndarray, f: dict[str, Any], ds: Dataset | None) -> np.ndarray:
    if f["ModalityLUTSequence"]:
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


def _header_window(f: dict[str, Any]) -> Window | None:
    c, w = f["WindowCenter"], f["WindowWidth"]
    if c and w and w[0] > 0:
        return c[0], w[0]
    return None


def resolve_window(f: dict[str, Any], window: Any) -> Window | str | None:
    """``(centre, width)``, ``"voi_lut"`` (the header's VOI LUT Sequence), or None (no window)."""
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
