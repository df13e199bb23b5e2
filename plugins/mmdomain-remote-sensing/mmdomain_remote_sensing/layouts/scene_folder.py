"""The generic layout: any S2 L2A products and any S1 files covering them, anywhere under a root.

    root/
      s2/  *.SAFE folders (JP2 per band) or *.tif stacks     (found anywhere under root; a stack of
                                                             fewer than 12 bands with s2_bands=)
      s1/  *_VV*.tif, *_VH*.tif per acquisition                (found anywhere under root)
      labels/ *.tif  land-cover rasters, any grid (optional)
      classes.json  {"names": [...], "values": [...]} label value -> class (optional)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mmdomain import DataError

from ..s1 import S1Acquisition, find_s1, polarisation_of
from ..s2 import S2Product, is_s2_product, open_s2


@dataclass
class SceneFolder:
    root: Path
    s2: list[S2Product]
    s1: list[S1Acquisition]
    labels: list[Path]
    class_names: list[str] | None
    class_values: list[int] | None


def scan(root: str | Path, *, s1_units: str | None = None, s2_offset: float | None = None,
         s2_bands=None) -> SceneFolder:
    """Every S2 product (read with ``s2_bands``, see ``s2.open_s2``), S1 acquisition and label raster under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder of Sentinel-2 / Sentinel-1 scenes")
    s2_paths: list[Path] = []
    for p in sorted(root.rglob("*")):
        if any(parent in s2_paths for parent in p.parents):
            continue
        if "labels" in p.relative_to(root).parts or polarisation_of(p) is not None:
            continue
        if is_s2_product(p):
            s2_paths.append(p)
    s2 = [open_s2(p, bands=s2_bands, offset=s2_offset) for p in s2_paths]
    s1_root_files = [p for p in root.rglob("*") if not any(q in p.parents for q in s2_paths)]
    s1 = find_s1(root, units=s1_units) if any(polarisation_of(p) for p in s1_root_files if p.is_file()) else []
    labels = sorted(p for p in (root / "labels").glob("*.tif")) if (root / "labels").is_dir() else []
    names = values = None
    if (root / "classes.json").is_file():
        try:
            spec = json.loads((root / "classes.json").read_text())
            names, values = list(spec["names"]), list(spec.get("values", range(len(spec["names"]))))
        except (ValueError, KeyError) as exc:
            raise DataError(f"{root / 'classes.json'}: expected {{'names': [...], 'values': [...]}} ({exc})") from None
    if not s2:
        raise DataError(f"{root}: no Sentinel-2 L2A product found (a *.SAFE folder with GRANULE/, a folder with "
                        "MTD_MSIL2A.xml, or an S2*/MSIL2A* GeoTIFF stack)")
    return SceneFolder(root, s2, s1, labels, names, values)
