"""The generic layout: any S2 L2A products and any S1 files covering them, anywhere under a root.

    root/
      s2/  *.SAFE folders (JP2 per band) or *.tif stacks     (found anywhere under root; a stack of
                                                             fewer than 12 bands with s2_bands=)
      s1/  *_VV*.tif, *_VH*.tif per acquisition                (found anywhere under root)
      labels/ *.tif  land-cover rasters, any grid (optional)
      classes.json  {"names": [...], "values": [...]} label value -> class (optional)

Every file is opened through ``handles.open_raster`` / ``raster_limits.check_file`` with ``root``
as its data root (a symlink out of it, a FIFO, a device, a truncated or oversized raster is
refused). One S2 product or S1 acquisition that cannot be used is skipped, logged and listed in
``SceneFolder.skipped`` while others of its kind remain; when none remains, its error is raised
(a single product / file gives its typed error). A label raster that cannot be used is listed in
``bad_labels``; the dataset skips the scene named after it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmdomain import DataError

from ..bands import s2_band_subset
from ..handles import open_raster
from ..raster_limits import DEFAULT_LIMITS, RasterDataError, RasterLimits, check_file
from ..s1 import UNITS, S1Acquisition, find_s1, polarisation_of
from ..s2 import S2Product, check_scaling, is_s2_product, open_s2
from .common import IGNORE

log = logging.getLogger(__name__)


@dataclass
class SceneFolder:
    root: Path
    s2: list[S2Product]
    s1: list[S1Acquisition]
    labels: list[Path]
    class_names: list[str] | None
    class_values: list[int] | None
    #: why each product / acquisition left out was skipped (``"<file>: <reason>"``)
    skipped: list[str] = field(default_factory=list)
    #: label rasters that cannot be used -> why (a scene named after one is skipped)
    bad_labels: dict[Path, str] = field(default_factory=dict)


def scan(root: str | Path, *, s1_units: str | None = None, s2_offset: float | None = None,
         s2_bands=None, limits: RasterLimits | None = None) -> SceneFolder:
    """Every S2 product (read with ``s2_bands``, see ``s2.open_s2``), S1 acquisition and label raster under ``root``."""
    root = Path(root)
    limits = limits or DEFAULT_LIMITS
    if not root.is_dir():
        raise DataError(f"{root}: not a folder of Sentinel-2 / Sentinel-1 scenes")
    s2_band_subset(s2_bands, where=f"{root}: s2_bands")  # the user's options: wrong ones are errors, never skips
    check_scaling(s2_offset, None, root)
    if s1_units is not None and str(s1_units).lower() not in UNITS:
        raise DataError(f"s1_units must be one of {UNITS}, got {s1_units!r}")
    names, values = read_classes(root, limits)  # before any raster: a bad class list fails fast
    s2_paths: list[Path] = []
    for p in sorted(root.rglob("*")):
        if any(parent in s2_paths for parent in p.parents):
            continue
        if "labels" in p.relative_to(root).parts or polarisation_of(p) is not None:
            continue
        if is_s2_product(p):
            s2_paths.append(p)
    s2, errors = [], []
    for p in s2_paths:
        try:
            s2.append(open_s2(p, bands=s2_bands, offset=s2_offset, root=root, limits=limits))
        except DataError as exc:
            errors.append(exc)
    if errors and not s2:
        raise errors[0]
    s1_root_files = [p for p in root.rglob("*") if not any(q in p.parents for q in s2_paths)]
    s1 = find_s1(root, units=s1_units, limits=limits, skipped=errors) \
        if any(polarisation_of(p) for p in s1_root_files if not p.is_dir()) else []  # a FIFO too: refused, not missed
    labels = sorted(p for p in (root / "labels").glob("*.tif")) if (root / "labels").is_dir() else []
    bad_labels = {}
    for p in labels:
        try:
            src = open_raster(p, root, limits)
            if src.crs is None:
                raise RasterDataError(p, "label raster has no CRS")
        except DataError as exc:  # the dataset skips the scene named after it (and counts it there)
            bad_labels[p] = str(exc)
    if values is not None:
        check_label_values(values, [p for p in labels if p not in bad_labels], root / "classes.json", root, limits)
    if not s2:
        raise DataError(f"{root}: no Sentinel-2 L2A product found (a *.SAFE folder with GRANULE/, a folder with "
                        "MTD_MSIL2A.xml, or an S2*/MSIL2A* GeoTIFF stack)")
    skipped = [str(e) for e in errors]
    for msg in skipped:
        log.warning("%s: skipped (%d usable S2 products remain): %s", root.name, len(s2), msg)
    return SceneFolder(root, s2, s1, [p for p in labels if p not in bad_labels], names, values, skipped, bad_labels)


def read_classes(root: Path, limits: RasterLimits = DEFAULT_LIMITS) -> tuple[list[str] | None, list[int] | None]:
    """``root/classes.json``: ``{"names": [...], "values": [...]}`` (values default to 0..n-1), checked:
    names distinct non-empty strings, values distinct integers 0..254 (the label rasters are read as
    8-bit; 255 is the unknown value), one per name."""
    f = root / "classes.json"
    if not os.path.lexists(f):
        return None, None
    real = check_file(f, root, what="class list", max_bytes=limits.json_bytes)
    try:
        spec = json.loads(real.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeError, RecursionError) as exc:
        raise RasterDataError(f, f"not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("names"), list):
        raise RasterDataError(f, "expected {'names': [...], 'values': [...]}")
    names = spec["names"]
    if not names or not all(isinstance(n, str) and n.strip() for n in names) or len(set(names)) != len(names):
        raise RasterDataError(f, "must be distinct non-empty strings, one per class", "names")
    values = spec.get("values", list(range(len(names))))
    if not isinstance(values, list) or len(values) != len(names):
        raise RasterDataError(f, f"must be a list of {len(names)} label values, one per name", "values")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise RasterDataError(f, f"{str(v)[:40]!r} is not an integer label value", "values")
        if not 0 <= v < IGNORE:
            raise RasterDataError(f, f"{v} is out of range: label values are 0..{IGNORE - 1} (the label rasters are "
                                     f"read as 8-bit; {IGNORE} means unknown)", "values")
    if len(set(values)) != len(values):
        raise RasterDataError(f, "two classes share a label value", "values")
    return list(names), list(values)


def check_label_values(values: list[int], labels: list[Path], where: Path, root: Path | None = None,
                       limits: RasterLimits | None = None) -> None:
    """Every declared value can occur in each label raster (within its integer dtype's range)."""
    for p in labels:
        dtype = np.dtype(open_raster(p, root, limits).dtypes[0])
        if dtype.kind not in "iu":
            continue
        info = np.iinfo(dtype)
        bad = [v for v in values if not info.min <= v <= info.max]
        if bad:
            raise RasterDataError(where, f"{bad} cannot occur in {p.name} ({dtype}: {info.min}..{info.max})",
                                  "values")
