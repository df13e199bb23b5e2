"""Sentinel-2 L2A: find the bands of a product (SAFE folder of JP2s, or a GeoTIFF/COG stack, all 12
bands or the ones a user names), its offset and quantification, and read surface reflectance + SCL
cloud mask on a grid. The patch layouts (BigEarthNet, SEN12MS) describe their files as an
``S2Product`` too and read them with the same ``read_s2``.

Hostile or broken products are refused with a ``RasterDataError`` naming the file and the field
before anything is decoded: every band file is checked and opened when the product is described
(``handles.open_raster``: a regular file inside the data root, not truncated, within the
``RasterLimits``); MTD / tag values are validated (``BOA_ADD_OFFSET`` band ids and finite offsets,
a finite ``BOA_QUANTIFICATION_VALUE`` >= 1, a ``PROCESSING_BASELINE`` of the form NN.NN), so no
reflectance is ever non-finite; a non-finite DN (a float stack) is masked invalid."""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from xml.parsers.expat import ExpatError
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from rasterio.enums import Resampling

from mmdomain import DataError

from .bands import (S2_ALL_BANDS, S2_BANDS, S2_BOA_ADD_OFFSET, S2_NODATA_DN, S2_QUANTIFICATION, S2_RESOLUTION_M,
                    SCL_CLOUDY, SCL_INVALID, s2_band_subset)
from .grid import Bounds, Grid, source_bounds
from .handles import open_raster, read_band, read_on_grid, warped
from .raster_limits import (DEFAULT_LIMITS, RasterDataError, RasterLimits, check_file, finite_number,
                            gdal_errors)
from .timeparse import time_from

RASTER_SUFFIXES = (".jp2", ".tif", ".tiff")
#: Plausible ranges of the metadata values (DNs are 16-bit; real products: offset -1000 or 0, 10000).
OFFSET_RANGE = (-65535.0, 65535.0)
QUANTIFICATION_RANGE = (1.0, 1e6)
_BASELINE = re.compile(r"^\d{2}\.\d{2}$")


@dataclass
class S2Product:
    """Where each band of one L2A acquisition lives; ``bands[b] = (file, 1-based band index)`` for the
    bands read, in tensor order (all 12 of ``S2_BANDS``, or the subset a user named)."""

    path: Path
    bands: dict[str, tuple[Path, int]]
    scl: tuple[Path, int] | None
    offset: dict[str, float]
    quantification: float
    time: datetime | None
    crs: object = None
    bounds: Bounds = (0, 0, 0, 0)
    res: float = 10.0
    metadata_source: str = "declared defaults"
    tile: str = ""
    extras: dict = field(default_factory=dict)
    root: Path | None = None  # the data root every file of the product is opened inside
    limits: RasterLimits | None = None  # the ceilings they are opened within (None: DEFAULT_LIMITS)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def band_names(self) -> tuple[str, ...]:
        """The bands read, in tensor order."""
        return tuple(self.bands)

    @property
    def reference(self) -> tuple[Path, int]:
        """The band that places the product: B02 when read, else the finest of the bands read."""
        return self.bands["B02" if "B02" in self.bands else min(self.bands, key=S2_RESOLUTION_M.__getitem__)]

    def grid(self, res: float | None = None) -> Grid:
        return Grid(self.crs, res or self.res, self.bounds)


def is_s2_product(path: Path) -> bool:
    name = path.name.upper()
    if path.is_dir():
        return (path / "GRANULE").is_dir() or any(path.glob("MTD_MSIL2A*.xml"))
    return path.suffix.lower() in (".tif", ".tiff") and ("MSIL2A" in name or name.startswith("S2")) \
        and "_SCL" not in name


def _band_key(stem: str) -> str | None:
    m = re.search(r"(?:^|_)(B0[1-9]|B1[0-2]|B8A|SCL)(?:_(\d+)M)?$", stem.upper())
    return m.group(1) if m else None


def _safe_bands(root: Path) -> tuple[dict[str, tuple[Path, int]], tuple[Path, int] | None]:
    found: dict[str, list[tuple[int, Path]]] = {}
    for f in sorted(root.glob("GRANULE/*/IMG_DATA/**/*")):
        if f.suffix.lower() not in RASTER_SUFFIXES:
            continue
        key = _band_key(f.stem)
        if key is None:
            continue
        m = re.search(r"_(\d+)m$", f.stem)
        res = int(m.group(1)) if m else S2_RESOLUTION_M.get(key, 20)
        found.setdefault(key, []).append((res, f))
    # each band at its finest available resolution (L2A also ships downsampled copies)
    best = {k: (min(v)[1], 1) for k, v in found.items()}
    scl = best.pop("SCL", None)
    return best, scl


def _read_mtd(root: Path, data_root: Path | None = None, limits: RasterLimits = DEFAULT_LIMITS
              ) -> tuple[dict[str, float] | None, float | None, datetime | None, str | None]:
    mtd = next(iter(sorted(root.glob("MTD_MSIL2A*.xml"))), None)
    if mtd is None:
        return None, None, None, None
    real = check_file(mtd, data_root or root, what="metadata file", max_bytes=limits.xml_bytes)
    try:
        tree = ET.fromstring(real.read_bytes())
    except (ET.ParseError, ExpatError, ValueError, UnicodeError, RecursionError, LookupError) as exc:
        raise RasterDataError(mtd, f"not valid XML ({exc})") from None  # LookupError: an unknown encoding=
    except OSError as exc:
        raise RasterDataError(mtd, f"cannot be read ({type(exc).__name__}: {exc})") from None
    offsets: dict[str, float] = {}
    quant = baseline = when = None
    for el in tree.iter():
        tag = el.tag.rsplit("}", 1)[-1] if isinstance(el.tag, str) else ""
        if tag == "BOA_ADD_OFFSET" and el.get("band_id") is not None:
            band = _band_id(el.get("band_id"), mtd)
            value = finite_number(el.text, mtd, f"BOA_ADD_OFFSET band_id={band}", low=OFFSET_RANGE[0],
                                  high=OFFSET_RANGE[1])
            name = S2_ALL_BANDS[band]
            if name in offsets and offsets[name] != value:
                raise RasterDataError(mtd, f"two different offsets for {name} ({offsets[name]:g} and {value:g})",
                                      f"BOA_ADD_OFFSET band_id={band}")
            offsets[name] = value
        elif tag == "BOA_QUANTIFICATION_VALUE":
            quant = finite_number(el.text, mtd, "BOA_QUANTIFICATION_VALUE", low=QUANTIFICATION_RANGE[0],
                                  high=QUANTIFICATION_RANGE[1])
        elif tag == "PROCESSING_BASELINE":
            baseline = (el.text or "").strip()
            if not _BASELINE.match(baseline):
                raise RasterDataError(mtd, f"{baseline!r} is not a processing baseline (NN.NN, e.g. 05.09)",
                                      "PROCESSING_BASELINE")
        elif tag in ("PRODUCT_START_TIME", "DATATAKE_SENSING_START") and when is None:
            when = time_from({"DATETIME": el.text or ""}, "")
    if not offsets and baseline is not None and baseline < "04.00":
        offsets = {b: 0.0 for b in S2_BANDS}  # before baseline 04.00 there was no offset
    return offsets or None, quant, when, mtd.name


def _band_id(text: str, mtd: Path) -> int:
    """A ``band_id`` attribute: an index of ``S2_ALL_BANDS`` (0..12)."""
    t = text.strip()
    if not t.isdigit() or int(t) >= len(S2_ALL_BANDS):
        raise RasterDataError(mtd, f"band_id {text[:20]!r} is not a Sentinel-2 band index (0..{len(S2_ALL_BANDS) - 1})",
                              "BOA_ADD_OFFSET")
    return int(t)


def _stack_bands(path: Path, src, names: tuple[str, ...]) -> dict[str, tuple[Path, int]]:
    """Where each of ``names`` is in a GeoTIFF stack.

    By band description when they name every band asked for; else by position: a stack of exactly
    ``len(names)`` bands holds them in that order, a 12- or 13-band one is the full L2A stack in
    ``S2_BANDS`` order (13th: SCL)."""
    desc = [(d or "").upper() for d in src.descriptions]
    if all(b in desc for b in names):
        return {b: (path, desc.index(b) + 1) for b in names}
    if src.count == len(names):
        return {b: (path, i + 1) for i, b in enumerate(names)}
    if src.count in (12, 13):
        return {b: (path, S2_BANDS.index(b) + 1) for b in names}
    named = [d for d in desc if d in S2_ALL_BANDS]
    has = f"its band descriptions name only {named}" if named else "no band descriptions naming them"
    if names == S2_BANDS:
        raise DataError(f"{path}: a Sentinel-2 stack needs 12 bands ({', '.join(S2_BANDS)}), it has {src.count} "
                        f"and {has}; name the bands it holds with s2_bands=, e.g. s2_bands=('B02', 'B03', 'B04', "
                        "'B08')")
    raise DataError(f"{path}: s2_bands names {len(names)} bands ({', '.join(names)}) but the stack has "
                    f"{src.count} bands and {has}")


def _stack_product(path: Path, names: tuple[str, ...], root: Path | None, limits: RasterLimits):
    """Bands, SCL, offsets, quantification, time and metadata source of a GeoTIFF/COG stack."""
    src = open_raster(path, root, limits)
    with gdal_errors(path, "tags"):
        tags = src.tags()
        bands = _stack_bands(path, src, names)
        desc = [(d or "").upper() for d in src.descriptions]
    in_use = {i for _, i in bands.values()}
    scl = (path, desc.index("SCL") + 1) if "SCL" in desc else (path, 13) if src.count == 13 and 13 not in in_use \
        else None
    if scl is None:
        side = path.with_name(path.stem + "_SCL" + path.suffix)
        scl = (side, 1) if os.path.lexists(side) else None
    offsets = quant = None
    if "BOA_ADD_OFFSET" in tags:
        value = finite_number(tags["BOA_ADD_OFFSET"], path, "tag BOA_ADD_OFFSET", low=OFFSET_RANGE[0],
                              high=OFFSET_RANGE[1])
        offsets = {b: value for b in names}
    if "BOA_QUANTIFICATION_VALUE" in tags:
        quant = finite_number(tags["BOA_QUANTIFICATION_VALUE"], path, "tag BOA_QUANTIFICATION_VALUE",
                              low=QUANTIFICATION_RANGE[0], high=QUANTIFICATION_RANGE[1])
    source = "GeoTIFF tags" if offsets or quant else None
    return bands, scl, offsets, quant, time_from(tags, path.name), source


def _safe_product(path: Path, root: Path | None, limits: RasterLimits):
    """The same for a SAFE(-like) folder of per-band JP2s with its MTD xml."""
    bands, scl = _safe_bands(path)
    offsets, quant, when, source = _read_mtd(path, root, limits)
    return bands, scl, offsets, quant, when or time_from({}, path.name), source


def open_s2(path: str | Path, *, bands=None, offset: float | None = None, quantification: float | None = None,
            time: datetime | None = None, root: str | Path | None = None,
            limits: RasterLimits | None = None) -> S2Product:
    """Describe an L2A product: a SAFE(-like) folder or a multi-band GeoTIFF/COG.

    ``bands`` (as torchgeo's ``bands=``) names the bands to read, in tensor order (default all 12,
    ``S2_BANDS``); a stack of fewer bands is read when they are named (see ``_stack_bands``).
    Offset and quantification come from the product metadata (MTD xml or GeoTIFF tags
    ``BOA_ADD_OFFSET``/``BOA_QUANTIFICATION_VALUE``) when present, else from ``offset``/
    ``quantification``, else the declared baseline >= 04.00 values (-1000, 10000).
    Every file read (band files, SCL, MTD) must resolve inside ``root`` (default: the SAFE folder
    itself; none for a stack, the file named) and stay within ``limits`` (``raster_limits``).
    """
    path = Path(path)
    limits = limits or DEFAULT_LIMITS
    if not path.exists():
        raise RasterDataError(path, "no such Sentinel-2 product")
    names = s2_band_subset(bands, where=f"{path}: s2_bands")
    offset, quantification = check_scaling(offset, quantification, path)
    if root is None and path.is_dir():
        root = path
    root = None if root is None else Path(root)
    found, scl, offsets, quant, when, source = _safe_product(path, root, limits) if path.is_dir() else \
        _stack_product(path, names, root, limits)
    missing = [b for b in names if b not in found]
    if missing:
        raise DataError(f"{path}: Sentinel-2 product lacks bands {missing} (found {sorted(found)})")
    lacking = [b for b in names if offsets is not None and b not in offsets]
    if lacking:  # an MTD listing the offsets of some bands only
        raise RasterDataError(path / source if path.is_dir() and source else path,
                              f"no offset for bands {lacking} (it lists {sorted(offsets or {})})", "BOA_ADD_OFFSET")
    if offsets is None:
        value = S2_BOA_ADD_OFFSET if offset is None else offset
        offsets = {b: value for b in names}
    product = S2Product(path, {b: found[b] for b in names}, scl, offsets, quant or quantification or S2_QUANTIFICATION,
                        time or when, metadata_source=source or "declared defaults", root=root, limits=limits)
    for f, idx in [*product.bands.values(), *([product.scl] if product.scl else [])]:  # open (check) every file now
        src = open_raster(f, root, limits)
        if not 1 <= idx <= src.count:
            raise RasterDataError(f, f"has {src.count} bands, band {idx} is needed", "bands")
    return locate(product)


def check_scaling(offset: float | None, quantification: float | None, where: str | Path
                  ) -> tuple[float | None, float | None]:
    """A user's (or a layout's) ``s2_offset`` / ``quantification``: finite, in the plausible ranges."""
    if offset is not None:
        offset = finite_number(offset, where, "s2_offset", low=OFFSET_RANGE[0], high=OFFSET_RANGE[1])
    if quantification is not None:
        quantification = finite_number(quantification, where, "quantification", low=QUANTIFICATION_RANGE[0],
                                       high=QUANTIFICATION_RANGE[1])
    return offset, quantification


def locate(product: S2Product, root: str | Path | None = None, limits: RasterLimits | None = None) -> S2Product:
    """Fill in the CRS, bounds, resolution and tile of ``product`` from its reference band (opened
    inside ``root`` within ``limits``, which become the product's when given)."""
    if root is not None:
        product.root = Path(root)
    if limits is not None:
        product.limits = limits
    ref = open_raster(product.reference[0], product.root, product.limits)
    product.bounds, product.crs = source_bounds(ref)
    product.res = abs(ref.transform.a) if ref.crs is not None else 10.0
    name = product.path.name
    product.tile = (re.search(r"_T(\d{2}[A-Z]{3})_", name) or re.search(r"T(\d{2}[A-Z]{3})", name) or [None, ""])[1]
    return product


def read_s2(product: S2Product, grid: Grid, window=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Surface reflectance ``float32 [bands, h, w]`` (``product.band_names``) on ``grid`` (window of it),
    a validity mask ``bool [h, w]`` (inside the footprint, DN != 0) and the SCL classes ``uint8 [h, w]``
    (or None)."""
    out, valid = [], None
    for b in product.bands:
        f, idx = product.bands[b]
        # bands already on the grid (10 m onto a 10 m grid): no warp
        dn = read_on_grid(f, idx, grid, window, product.root, product.limits)
        if dn is None:
            vrt = warped(f, grid, resampling=Resampling.bilinear, src_nodata=S2_NODATA_DN, nodata=S2_NODATA_DN,
                         dtype="float32", root=product.root, limits=product.limits)
            dn = read_band(vrt, idx, f, window)
        dn = dn.astype(np.float32, copy=False)
        ok = np.isfinite(dn) & (dn > 0)  # a float stack's NaN / inf is no data, as DN 0 is
        valid = ok if valid is None else valid & ok
        with np.errstate(invalid="ignore", over="ignore"):
            out.append((dn + np.float32(product.offset[b])) / np.float32(product.quantification))
    refl = np.stack(out).astype(np.float32)
    refl[:, ~valid] = 0.0
    if not np.isfinite(refl).all():  # offsets / quantification out of the checked ranges (set by hand)
        raise RasterDataError(product.path, f"non-finite reflectance from offset {sorted(set(product.offset.values()))}"
                                            f" and quantification {product.quantification}", "reflectance")
    scl = read_scl(product, grid, window)
    if scl is not None:
        valid &= ~np.isin(scl, SCL_INVALID)
    return refl, valid, scl


def read_scl(product: S2Product, grid: Grid, window=None) -> np.ndarray | None:
    if product.scl is None:
        return None
    f, idx = product.scl
    vrt = warped(f, grid, resampling=Resampling.nearest, src_nodata=0, nodata=0, dtype="uint8", root=product.root,
                 limits=product.limits)
    return read_band(vrt, idx, f, window)


def cloud_mask(scl: np.ndarray) -> np.ndarray:
    """True where SCL says cloud, cloud shadow or cirrus."""
    return np.isin(scl, SCL_CLOUDY)


def cloud_fraction(scl: np.ndarray | None, valid: np.ndarray | None = None) -> float:
    if scl is None:
        return 0.0
    keep = (scl > 0) if valid is None else valid
    n = int(keep.sum())
    return float((cloud_mask(scl) & keep).sum() / n) if n else 1.0
