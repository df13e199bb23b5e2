"""A target grid (CRS, resolution, bounds) that every modality is read onto."""

from __future__ import annotations

import math
from dataclasses import dataclass

from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from mmdomain import DataError

from .handles import source_crs

Bounds = tuple[float, float, float, float]  # xmin, ymin, xmax, ymax


@dataclass(frozen=True)
class Grid:
    """North-up pixels of size ``res`` covering ``bounds`` (snapped outward to whole pixels) in ``crs``."""

    crs: CRS
    res: float
    bounds: Bounds

    def __post_init__(self) -> None:
        if not isinstance(self.crs, CRS):
            object.__setattr__(self, "crs", CRS.from_user_input(self.crs))
        xmin, ymin, xmax, ymax = self.bounds
        if not all(math.isfinite(v) for v in (*self.bounds, self.res)):
            raise DataError(f"grid bounds {self.bounds} / resolution {self.res} are not finite numbers (a raster "
                            "with a NaN / infinite geotransform or ground control points?)")
        if not (xmax > xmin and ymax > ymin) or self.res <= 0:
            raise DataError(f"empty grid: bounds {self.bounds}, res {self.res}")
        if self.crs.is_geographic and self.res >= 0.1:
            raise DataError(f"grid resolution {self.res} on geographic CRS {self.crs} is {self.res} degrees "
                            "per pixel; give the resolution in degrees (e.g. 0.0001) or use a projected CRS")
        width = max(1, round((xmax - xmin) / self.res))
        height = max(1, round((ymax - ymin) / self.res))
        object.__setattr__(self, "bounds", (xmin, ymax - height * self.res, xmin + width * self.res, ymax))

    @property
    def width(self) -> int:
        return round((self.bounds[2] - self.bounds[0]) / self.res)

    @property
    def height(self) -> int:
        return round((self.bounds[3] - self.bounds[1]) / self.res)

    @property
    def transform(self) -> Affine:
        return Affine(self.res, 0.0, self.bounds[0], 0.0, -self.res, self.bounds[3])

    def key(self) -> tuple:
        return (self.crs.to_string(), self.res, self.bounds)

    def describe(self) -> str:
        return f"grid {self.crs.to_string()} res {self.res} bounds {tuple(round(b, 3) for b in self.bounds)}"

    def window(self, bounds: Bounds) -> Window:
        """The pixel window of ``bounds`` (in this grid's CRS), snapped to whole pixels."""
        col = math.floor((bounds[0] - self.bounds[0]) / self.res + 1e-6)
        row = math.floor((self.bounds[3] - bounds[3]) / self.res + 1e-6)
        w = round((bounds[2] - bounds[0]) / self.res)
        h = round((bounds[3] - bounds[1]) / self.res)
        return Window(col, row, w, h)

    def window_bounds(self, window: Window) -> Bounds:
        x0 = self.bounds[0] + window.col_off * self.res
        y1 = self.bounds[3] - window.row_off * self.res
        return (x0, y1 - window.height * self.res, x0 + window.width * self.res, y1)

    def coarser(self, factor: int) -> "Grid":
        return Grid(self.crs, self.res * factor, self.bounds)


def to_crs(bounds: Bounds, src_crs, dst_crs) -> Bounds:
    if CRS.from_user_input(src_crs) == CRS.from_user_input(dst_crs):
        return tuple(bounds)
    return tuple(transform_bounds(src_crs, dst_crs, *bounds, densify_pts=21))


def intersect(a: Bounds, b: Bounds) -> Bounds | None:
    xmin, ymin = max(a[0], b[0]), max(a[1], b[1])
    xmax, ymax = min(a[2], b[2]), min(a[3], b[3])
    return (xmin, ymin, xmax, ymax) if xmax > xmin and ymax > ymin else None


def source_bounds(src) -> tuple[Bounds, CRS]:
    """Bounds of a raster in its own CRS, or of its GCPs in theirs."""
    crs = source_crs(src)
    if src.crs is None:
        gcps, _ = src.gcps
        xs, ys = [g.x for g in gcps], [g.y for g in gcps]
        bounds = (min(xs), min(ys), max(xs), max(ys))
    else:
        bounds = tuple(src.bounds)
    if not all(math.isfinite(v) for v in bounds):
        raise DataError(f"{src.name}: its georeferencing gives non-finite bounds {bounds}")
    return bounds, crs
