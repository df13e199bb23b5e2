"""A CT/MR series (a folder of single-frame slices) -> one volume ``[1, D, H, W]``,
slices ordered by ImagePositionPatient projected on the slice normal (InstanceNumber
when positions are missing); z spacing from the positions. Only regular files are slices
(FIFOs, devices, sockets are passed over); a header pydicom cannot convert is the plugin's
error naming the slice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .deid import DEFAULT_KEY
from .dicom_parse import quiet_validation, read_header
from .dicom_read import DicomImage, read_dicom
from .errors import MedicalDataError, library_failure
from .facts import DICOM_SUFFIXES


def slice_files(folder: Path) -> list[Path]:
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and (p.suffix.lower() in DICOM_SUFFIXES or not p.suffix)]
    if not files:
        raise MedicalDataError(folder, "no DICOM slices in this folder")
    return files


def _order_key(ds) -> tuple[float, float]:
    iop, ipp = ds.get("ImageOrientationPatient", None), ds.get("ImagePositionPatient", None)
    inst = float(ds.get("InstanceNumber", 0) or 0)
    if iop is not None and ipp is not None and len(iop) == 6 and len(ipp) == 3:
        normal = np.cross(np.array(iop[:3], float), np.array(iop[3:], float))
        return float(np.dot(normal, np.array(ipp, float))), inst
    return inst, inst


def load_series(folder: str | Path, *, window: Any = None, key: str = DEFAULT_KEY,
                burned_in: str = "refuse") -> DicomImage:
    folder = Path(folder)
    if not folder.is_dir():
        raise MedicalDataError(folder, "a series must be a folder of slices")
    headers, keys, series = [], {}, set()
    for p in slice_files(folder):
        ds = read_header(p)
        try:
            with quiet_validation():
                series.add(str(ds.get("SeriesInstanceUID", "")))
                keys[p] = _order_key(ds)
        except Exception as exc:  # noqa: BLE001 - e.g. NotImplementedError for an unknown VR
            raise library_failure(p, "DICOM header parse", exc) from None
        headers.append((p, ds))
    if len(series) > 1:
        raise MedicalDataError(folder, f"holds {len(series)} series; give one series per folder")
    headers.sort(key=lambda pd: keys[pd[0]])
    slices = [read_dicom(p, window=window, key=key, burned_in=burned_in, ds=ds) for p, ds in headers]
    shapes = {s.array.shape for s in slices}
    if len(shapes) != 1:
        raise MedicalDataError(folder, f"slices differ in shape {sorted(shapes)}")
    if slices[0].array.ndim != 3 or slices[0].array.shape[0] != 1:
        raise MedicalDataError(folder, "a series must be single-frame greyscale slices")
    volume = np.stack([s.array[0] for s in slices])[None]  # [1, D, H, W]
    meta = dict(slices[0].meta)
    meta["frames"] = len(slices)
    zs = [keys[p][0] for p, _ in headers]
    if len(zs) > 1:
        steps = np.diff(zs)
        meta["slice_spacing"] = float(np.median(steps))
        if np.ptp(steps) > 0.01 * max(abs(float(np.median(steps))), 1e-6):
            meta["irregular_spacing"] = True
    meta.pop("position", None)
    return DicomImage(volume.astype(np.float32, copy=False), meta, slices[0].photometric, slices[0].window)
