"""Raster handles opened lazily, once per process, and the reads on a grid every reader shares.

A dataset handle inherited across ``fork`` (DataLoader workers) shares GDAL state with
its parent and broke reads; handles here are keyed by PID, so each worker opens its own.
At most ``MAX_OPEN_FILES`` files stay open per process (least recently used closed first).
``warped`` is a file's WarpedVRT onto a grid; ``read_on_grid`` skips the warp where the file's
pixels already are the grid's; ``read_band`` reads a band of either.

Every file is checked before GDAL opens it, on each open in each process (``raster_limits``):
a regular file (no FIFO, no device) inside its data root, its declared strips / tiles / boxes
inside the bytes present, its dimensions within the ``RasterLimits``. The readers pass the data
root and limits of the product (``S2Product.root`` / ``.limits``, ``S1Acquisition``'s) to every
call, so a DataLoader worker re-opening a file checks it as the dataset did. Whatever rasterio /
GDAL raises while opening or reading is a ``RasterDataError`` naming the file.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from mmdomain import DataError

from .raster_limits import (DEFAULT_LIMITS, RasterDataError, RasterLimits, check_declared_bytes, check_dimensions,
                            check_file, check_sidecars, gdal_errors)

#: Files a process keeps open at once; past that, the least recently used one is closed with its VRTs
#: (a patch dataset such as BigEarthNet reads ~14 new files per sample).
MAX_OPEN_FILES = 128

# pid -> {file: {handle key: handle}}, least recently used file first
_cache: dict[int, OrderedDict[str, dict[tuple, Any]]] = {}
_lock = threading.Lock()


def _files() -> OrderedDict[str, dict[tuple, Any]]:
    pid = os.getpid()
    files = _cache.get(pid)
    if files is None:
        with _lock:
            for other in [p for p in _cache if p != pid]:
                _cache.pop(other)  # the parent's handles: never touched here, never closed here
            files = _cache.setdefault(pid, OrderedDict())
    return files


def _get(path: str | Path, key: tuple) -> Any:
    files = _files()
    group = files.get(str(path))
    if group is None:
        return None
    files.move_to_end(str(path))
    return group.get(key)


def _put(path: str | Path, key: tuple, handle: Any) -> None:
    files = _files()
    files.setdefault(str(path), {})[key] = handle
    files.move_to_end(str(path))
    while len(files) > MAX_OPEN_FILES:
        _close(files.popitem(last=False)[1])


def _close(group: dict[tuple, Any]) -> None:
    """Close one file's handles: VRTs onto grids, then GCP VRTs (the sources of some), then the file."""
    for key in sorted(group, key=lambda k: ("vrt", "gcp", "src").index(k[0])):
        try:
            group[key].close()
        except Exception:  # noqa: BLE001 - best effort
            pass


@atexit.register
def close_all() -> None:
    """Close this process's handles while GDAL is still alive (left to interpreter shutdown, their
    destructors raised inside sys.excepthook); also for tests and long-lived notebooks."""
    for group in _cache.pop(os.getpid(), OrderedDict()).values():
        _close(group)


def open_raster(path: str | Path, root: str | Path | None = None, limits: RasterLimits | None = None):
    """The process's handle on ``path`` (opened on first use, after ``check_file`` / declared bytes
    / dimensions: see the module docstring); ``RasterDataError`` when it must not or cannot be read.
    ``root``: the data root the file must resolve inside (None: no containment check); ``limits``:
    the ceilings (default ``DEFAULT_LIMITS``)."""
    src = _get(path, ("src",))
    if src is None:
        limits = limits or DEFAULT_LIMITS
        real = check_file(path, root, what="raster")
        check_sidecars(real, root)
        with gdal_errors(path, "file structure"):
            check_declared_bytes(real, path)
        try:
            src = rasterio.open(real)
        except Exception as exc:  # noqa: BLE001 - GDAL's reasons are varied; say which file
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise RasterDataError(path, f"not a readable raster ({first})") from None
        try:
            check_dimensions(src, path, limits)
        except DataError:
            src.close()
            raise
        _put(path, ("src",), src)
    return src


def read_band(handle, band: int, path: str | Path, window=None, **kwargs) -> np.ndarray:
    """``handle.read(band, window=window, **kwargs)`` (a file or a VRT of ``path``); a GDAL failure
    (a truncated or corrupt block) is a ``RasterDataError`` naming ``path`` and the band."""
    with gdal_errors(path, f"band {band}"):
        return handle.read(band, window=window, **kwargs)


def source_crs(src) -> Any:
    """The CRS of ``src`` or of its GCPs; DataError when it has neither."""
    if src.crs is not None:
        return src.crs
    gcps, gcp_crs = src.gcps
    if gcps and gcp_crs is not None:
        return gcp_crs
    raise DataError(f"{src.name}: has no CRS and no ground control points; it cannot be placed on a grid "
                    "(georeference it, e.g. `gdal_edit.py -a_srs EPSG:... -a_ullr ...`)")


def gcp_transform(src, tolerance_px: float = 0.05):
    """The affine transform the GCPs of ``src`` describe, or None when they bend more than
    ``tolerance_px`` source pixels away from any affine (then GDAL's GCP transformer is needed)."""
    gcps, _ = src.gcps
    if len(gcps) < 3:
        return None
    pix = np.array([[g.col, g.row, 1.0] for g in gcps])
    xy = np.array([[g.x, g.y] for g in gcps])
    if not (np.isfinite(pix).all() and np.isfinite(xy).all()):
        return None
    coef, *_ = np.linalg.lstsq(pix, xy, rcond=None)
    (a, d), (b, e), (c, f) = coef
    if abs(a * e - b * d) < 1e-30:
        return None
    resid = np.abs(pix @ coef - xy)
    px = np.array([np.hypot(a, d), np.hypot(b, e)])  # pixel size along x and y
    if resid.size and (resid / px).max() > tolerance_px:
        return None
    return Affine(a, b, c, d, e, f)


def warped(path: str | Path, grid, *, resampling, nodata: float | None = None, src_nodata: float | None = None,
           dtype: str = "float32", root: str | Path | None = None, limits: RasterLimits | None = None):
    """A WarpedVRT of ``path`` onto ``grid`` (cached per process); reads are windows of the grid.
    ``root`` / ``limits``: as ``open_raster``'s, if the file is not open yet."""
    key = ("vrt", grid.key(), int(resampling), nodata, src_nodata, dtype)
    vrt = _get(path, key)
    if vrt is None:
        src = open_raster(path, root, limits)
        crs = source_crs(src)
        kw: dict[str, Any] = {}
        base = src
        if src.crs is None:
            # GCP-only (e.g. S1 GRD): rasterio's WarpedVRT ignores GCPs when the output grid is given
            # (it warps from the identity pixel transform). GCPs that describe an affine become the
            # source transform; otherwise GDAL's GCP transformer warps onto the grid's CRS first
            # (nearest, near the source resolution) and that VRT is then resampled onto the grid.
            fitted = gcp_transform(src)
            if fitted is not None:
                kw.update(src_crs=crs, src_transform=fitted)
            else:
                base = _gcp_vrt(path, src, grid.crs, src_nodata)
        if src_nodata is not None:
            kw["src_nodata"] = src_nodata
        if nodata is not None:
            kw["nodata"] = nodata
        try:
            vrt = WarpedVRT(base, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                            resampling=resampling, dtype=dtype, **kw)
        except Exception as exc:  # noqa: BLE001 - GDAL's reasons are varied; say which file
            raise DataError(f"{path}: cannot be warped onto {grid.describe()} ({exc})") from None
        _put(path, key, vrt)
    return vrt


def read_on_grid(path: str | Path, band: int, grid, window=None, root: str | Path | None = None,
                 limits: RasterLimits | None = None) -> np.ndarray | None:
    """Band ``band`` of ``path`` read straight from the file when its pixels already are pixels of
    ``grid`` (same CRS and resolution, whole-pixel offset) and the window lies inside it: the
    same values a warp onto the grid gives, without the warper or its resampling margin (which
    makes GDAL decode neighbouring blocks). None when not aligned: then warp (``warped``)."""
    src = open_raster(path, root, limits)
    if src.crs is None or src.crs != grid.crs:
        return None
    t = src.transform
    if t.b or t.d or abs(t.a - grid.res) > 1e-9 * grid.res or abs(-t.e - grid.res) > 1e-9 * grid.res:
        return None
    dx, dy = (grid.bounds[0] - t.c) / grid.res, (t.f - grid.bounds[3]) / grid.res
    if abs(dx - round(dx)) > 1e-6 or abs(dy - round(dy)) > 1e-6:
        return None
    if window is None:
        col, row, w, h = 0, 0, grid.width, grid.height
    else:
        col, row, w, h = int(window.col_off), int(window.row_off), int(window.width), int(window.height)
    col, row = col + round(dx), row + round(dy)
    if col < 0 or row < 0 or col + w > src.width or row + h > src.height:
        return None
    return read_band(src, band, path, Window(col, row, w, h))


def _gcp_vrt(path, src, crs, src_nodata):
    key = ("gcp", CRS.from_user_input(crs).to_string(), src_nodata)
    vrt = _get(path, key)
    if vrt is None:
        kw: dict[str, Any] = {"nodata": np.nan if src_nodata is None else src_nodata}
        if src_nodata is not None:
            kw["src_nodata"] = src_nodata
        try:
            vrt = WarpedVRT(src, crs=crs, resampling=Resampling.nearest, dtype="float32", **kw)
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{path}: its ground control points cannot be used ({exc})") from None
        _put(path, key, vrt)
    return vrt
