"""Small real rasters written with rasterio for the reader tests (helpers; the fixtures are in conftest.py)."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_points
from rasterio.warp import transform_bounds

UTM = "EPSG:32632"
X0, Y0, N = 300000.0, 5000000.0, 96  # S2: 96 x 96 px at 10 m
FEATURE = (X0 + 10 * 40 + 5, Y0 - 10 * 57 - 5)  # centre of S2 pixel (row 57, col 40)


def write(path, arr, crs, transform, nodata=None, tags=None, gcps=None, descriptions=None):
    arr = arr[None] if arr.ndim == 2 else arr
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kw = {"gcps": gcps} if gcps else {"transform": transform}
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0],
                       dtype=arr.dtype, crs=crs, nodata=nodata, **kw) as d:
        d.write(arr)
        if tags:
            d.update_tags(**tags)
        for i, t in enumerate(descriptions or []):
            d.set_band_description(i + 1, t)
    return path


def s2_stack(folder, when="20230601T103031", feature=True, offset_tag=True, scl=None):
    dn = np.full((12, N, N), 1500, np.uint16)  # reflectance 0.05 after the -1000 offset
    if feature:
        dn[:, 56:59, 39:42] = 9000
    tags = {"BOA_ADD_OFFSET": "-1000", "BOA_QUANTIFICATION_VALUE": "10000"} if offset_tag else None
    p = write(Path(folder) / f"S2B_MSIL2A_{when}_T32TMT.tif", dn, UTM, from_origin(X0, Y0, 10, 10), nodata=0,
              tags=tags)
    if scl is not None:
        write(Path(folder) / f"S2B_MSIL2A_{when}_T32TMT_SCL.tif", scl, UTM, from_origin(X0, Y0, 20, 20), nodata=0)
    return p


def s1_pair(folder, when="20230603T053000", res=0.00013, shift=(0.0, 0.0), units="dB", nodata=-9999.0,
            feature=True, linear=False, gcps=False, crs="EPSG:4326"):
    w, s, e, n = transform_bounds(UTM, "EPSG:4326", X0, Y0 - 10 * N, X0 + 10 * N, Y0)
    w, e, s, n = w + shift[0], e + shift[0], s + shift[1], n + shift[1]
    cols, rows = int(np.ceil((e - w) / res)), int(np.ceil((n - s) / res))
    (flon,), (flat,) = warp_points(UTM, "EPSG:4326", [FEATURE[0]], [FEATURE[1]])
    out = []
    for pol, base in (("VV", -20.0), ("VH", -26.0)):
        db = np.full((rows, cols), base, np.float32)
        if feature:
            r, c = int((n - flat) / res), int((flon - w) / res)
            db[r - 1:r + 2, c - 1:c + 2] = 0.0
        db[:3] = nodata  # a no-data border
        arr = np.where(db == nodata, nodata, 10 ** (db / 10)).astype(np.float32) if linear else db
        tags = {"UNITS": units, "ACQUISITION_TIME": when} if units else {"ACQUISITION_TIME": when}
        kw = {}
        if gcps:
            from rasterio.control import GroundControlPoint as G
            e2, s2 = w + cols * res, n - rows * res  # the same georeferencing as the transform below
            kw["gcps"] = [G(0, 0, w, n), G(0, cols, e2, n), G(rows, 0, w, s2), G(rows, cols, e2, s2)]
        out.append(write(Path(folder) / f"S1A_IW_GRDH_{when}_{pol}.tif", arr, crs,
                         from_origin(w, n, res, res), nodata=nodata, tags=tags, **kw))
    return out
