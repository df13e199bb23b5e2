"""Sentinel-1 GRD/RTC: group per-polarisation GeoTIFFs into acquisitions, read them on a
grid in dB with nodata masked (any CRS, or GCP-only georeferencing). The patch layouts
(BigEarthNet, SEN12MS) describe their files as an ``S1Acquisition`` and read them with the same
``read_s1`` (SEN12MS keeps VV and VH as bands 1 and 2 of one file: ``S1Acquisition.band``).
Every file of an acquisition is checked and opened when it is described (``handles.open_raster``);
non-finite values are invalid pixels. ``find_s1`` skips (and reports) an acquisition that cannot
be used while others remain."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from rasterio.enums import Resampling

from mmdomain import DataError

from .bands import S1_DB_RANGE, S1_DEFAULT_MEAN, S1_POLARISATIONS
from .grid import Bounds, Grid, source_bounds
from .handles import open_raster, read_band, read_on_grid, warped
from .raster_limits import RasterDataError, RasterLimits
from .timeparse import time_from

_POL = re.compile(r"(?<![A-Za-z])(vv|vh)(?![A-Za-z])", re.IGNORECASE)
UNITS = ("db", "linear")


@dataclass
class S1Acquisition:
    key: str
    files: dict[str, Path]  # "VV"/"VH" -> file
    units: str  # "db" or "linear" (of the files; reads always return dB)
    time: datetime | None
    crs: object
    bounds: Bounds  # in ``crs``
    nodata: float | None
    band: dict[str, int] = field(default_factory=dict)  # 1-based band of each polarisation in its file (default 1)
    root: Path | None = None  # the data root its files are opened inside
    limits: RasterLimits | None = None  # the ceilings they are opened within (None: DEFAULT_LIMITS)

    @property
    def polarisations(self) -> tuple[str, ...]:
        return tuple(p for p in S1_POLARISATIONS if p in self.files)


def polarisation_of(path: Path) -> str | None:
    m = _POL.search(path.stem.replace("-", "_"))
    return m.group(1).upper() if m else None


def _units(tags: dict[str, str], declared: str | None, path: Path, root: Path | None = None,
           limits: RasterLimits | None = None) -> str:
    for key in ("UNITS", "units", "UNIT", "unit", "BACKSCATTER_UNITS"):
        if key in tags:
            v = tags[key].strip().lower()
            if v in ("db", "decibel", "decibels"):
                return "db"
            if v in ("linear", "power", "intensity", "amplitude^2", "gamma0", "sigma0"):
                return "linear"
    if declared is not None:
        if declared.lower() not in UNITS:
            raise DataError(f"s1_units must be one of {UNITS}, got {declared!r}")
        return declared.lower()
    src = open_raster(path, root, limits)  # no declaration anywhere: decide from the values (dB backscatter is mostly < 0)
    ov = read_band(src, 1, path, out_shape=(1, min(src.height, 64), min(src.width, 64)), masked=True).astype("float64")
    vals = ov.compressed()
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        raise DataError(f"{path}: no valid pixel to tell dB from linear; declare s1_units='db' or 'linear'")
    return "db" if np.median(vals) < 0 else "linear"


def open_s1(files, *, units: str | None = None, time: datetime | None = None,
            band: dict[str, int] | None = None, root: str | Path | None = None,
            limits: RasterLimits | None = None) -> S1Acquisition:
    """One acquisition from its per-polarisation files (VV and/or VH): a list (the polarisation from
    each name) or ``{"VV": file, "VH": file}``; ``band`` gives each polarisation's band (default 1).
    Each file is opened (checked) now, inside ``root`` and within ``limits`` (``raster_limits``)."""
    pols: dict[str, Path] = {}
    if isinstance(files, dict):
        pols = {str(p).upper(): Path(f) for p, f in files.items()}
        if not set(pols) <= set(S1_POLARISATIONS):
            raise DataError(f"S1 polarisations are {S1_POLARISATIONS}, got {sorted(pols)}")
    for f in [] if isinstance(files, dict) else map(Path, files):
        p = polarisation_of(f)
        if p is None:
            raise DataError(f"{f}: cannot tell the polarisation (expected VV or VH in the file name)")
        pols[p] = f
    if not pols:
        raise DataError("an S1 acquisition needs at least one VV or VH file")
    if units is not None and str(units).lower() not in UNITS:
        raise DataError(f"s1_units must be one of {UNITS}, got {units!r}")
    for p, f in pols.items():
        src = open_raster(f, root, limits)
        b = (band or {}).get(p, 1)
        if not 1 <= b <= src.count:
            raise RasterDataError(f, f"has {src.count} band(s), band {b} ({p}) is needed", "bands")
    first = pols.get("VV") or pols["VH"]
    src = open_raster(first, root, limits)
    tags = src.tags()
    bounds, crs = source_bounds(src)
    key = _POL.sub("POL", first.stem)
    return S1Acquisition(key, pols, _units(tags, units, first, root, limits), time or time_from(tags, first.name), crs, bounds,
                         src.nodata, dict(band or {}), None if root is None else Path(root), limits)


def find_s1(root: Path, *, units: str | None = None, limits: RasterLimits | None = None,
            skipped: list[DataError] | None = None) -> list[S1Acquisition]:
    """Every acquisition under ``root``: VV/VH GeoTIFFs grouped by their name minus the polarisation,
    each opened inside ``root``. With ``skipped`` (a list), an acquisition that cannot be used is
    appended to it and left out while others remain; when none can be used, or without
    ``skipped``, its error is raised."""
    groups: dict[tuple[Path, str], list[Path]] = {}
    for f in sorted(root.rglob("*")):
        if f.suffix.lower() in (".tif", ".tiff") and polarisation_of(f) is not None:
            groups.setdefault((f.parent, _POL.sub("POL", f.stem)), []).append(f)
    out, errors = [], []
    for _, v in sorted(groups.items()):
        try:
            out.append(open_s1(v, units=units, root=root, limits=limits))
        except DataError as exc:
            if skipped is None:
                raise
            errors.append(exc)
    if errors and not out:
        raise errors[0]
    if skipped is not None:
        skipped.extend(errors)
    return out


def to_db(x: np.ndarray) -> np.ndarray:
    """Linear power -> dB (values <= 0 clamp to the floor of the dB range)."""
    return (10.0 * np.log10(np.maximum(x, 10 ** (S1_DB_RANGE[0] / 10)))).astype(np.float32)


def _read_pol(acq: S1Acquisition, pol: str, grid: Grid, window) -> np.ndarray:
    """One polarisation on ``grid`` as stored (dB or linear), NaN where invalid; straight from the
    file when its pixels are the grid's (``read_on_grid``: the values the warp gives), else warped."""
    f, band = acq.files[pol], acq.band.get(pol, 1)
    x = read_on_grid(f, band, grid, window, acq.root, acq.limits)
    if x is None:
        vrt = warped(f, grid, resampling=Resampling.nearest if acq.units == "db" else Resampling.bilinear,
                     src_nodata=acq.nodata, nodata=np.nan, dtype="float32", root=acq.root, limits=acq.limits)
        return read_band(vrt, band, f, window)
    x = x.astype(np.float32)
    if acq.nodata is not None:
        x[x == np.float32(acq.nodata)] = np.nan
    return x


def read_s1(acq: S1Acquisition, grid: Grid, window=None, *, fill: str = "median") -> tuple[np.ndarray, np.ndarray]:
    """Backscatter in dB ``float32 [2, h, w]`` (VV, VH) on ``grid`` and a validity mask ``bool [h, w]``.

    Nodata, pixels outside the footprint and non-finite values are invalid; they are filled
    (``fill="median"``: the median of the valid pixels of that channel; ``"nan"``: NaN) so no
    -9999 ever reaches a tensor. Values are clipped to ``S1_DB_RANGE``. Linear files are
    interpolated in linear power, dB files are never interpolated in dB (nearest). A missing
    polarisation is filled with its declared mean (``S1_DEFAULT_MEAN``).
    """
    chans, valid = [], None
    for p in S1_POLARISATIONS:
        if p not in acq.files:
            h = window.height if window is not None else grid.height
            w = window.width if window is not None else grid.width
            chans.append(np.full((h, w), S1_DEFAULT_MEAN[S1_POLARISATIONS.index(p)], np.float32))
            continue
        x = _read_pol(acq, p, grid, window)
        ok = np.isfinite(x)
        if acq.units == "linear":
            ok &= x > 0
            x = to_db(np.where(ok, x, 1.0))
        chans.append(x)
        valid = ok if valid is None else valid & ok
    if valid is None:
        raise DataError(f"S1 acquisition {acq.key}: no VV or VH file")
    db = np.clip(np.stack(chans), *S1_DB_RANGE)
    for c in range(db.shape[0]):
        if fill == "nan":
            db[c][~valid] = np.nan
        else:
            v = db[c][valid]
            db[c][~valid] = float(np.median(v)) if v.size else 0.0
    return db.astype(np.float32), valid
