"""SEN12MS ROI folders read into Samples with the plugin's ``s2`` and ``s1`` modalities::

    root/ROIs<id>_<season>/s1_<n>/ROIs<id>_<season>_s1_<n>_p<k>.tif   2 bands VV, VH (dB)
    root/ROIs<id>_<season>/s2_<n>/ROIs<id>_<season>_s2_<n>_p<k>.tif   13 bands L1C DN (B01..B12, B8A, B10)
    root/ROIs<id>_<season>/lc_<n>/ROIs<id>_<season>_lc_<n>_p<k>.tif   4 bands (IGBP, LCCS LC/LU/SH)

Each patch file is described as an ``S2Product`` (the 12 ``s2`` bands, or the ``s2_bands`` named,
as band indices of the 13-band stack: B10, cirrus, absent from L2A, is dropped) and an
``S1Acquisition`` (VV band 1, VH band 2 of one file) and read with ``read_s2``/``read_s1`` on the
patch's own grid, as scene folders are. Values are top-of-atmosphere reflectance DN / 10000 with
no offset (2016-2017 products, before baseline 04.00), so ``s2`` here is TOA, not surface
reflectance (``meta["s2_level"] = "L1C"``); DN 0 is no data (reflectance 0).
Targets: IGBP (band 1) simplified to the 10 DFC2020 classes (``bands.SEN12MS_CLASSES``), per pixel
(``task="segmentation"``, 255 = unknown) or the patch's majority class (``task="multiclass"``).
Splits: by scene (``ROIs<id>_<season>/<n>``, ``mmdomain.data.split_of``), so patches of one scene
never straddle splits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmdomain import DataError, Sample
from mmdomain.data import split_of

from ..bands import S2_ALL_BANDS, SEN12MS_CLASSES, s2_band_subset
from ..handles import open_raster, read_band
from ..models import SEN12MS_TASKS
from ..raster_limits import RasterDataError, RasterLimits
from ..s1 import open_s1, read_s1
from ..s2 import S2Product, check_scaling, locate, read_s2
from .common import IGNORE, PatchDataset, check_split, grid_of

#: IGBP (1..17) -> simplified DFC2020 class (0..9 = SEN12MS_CLASSES); 0 and unknown values -> IGNORE.
IGBP_TO_SIMPLE = np.full(256, IGNORE, np.uint8)
for _v, _c in {1: 0, 2: 0, 3: 0, 4: 0, 5: 0, 6: 1, 7: 1, 8: 2, 9: 2, 10: 3, 11: 4, 12: 5, 13: 6, 14: 5, 15: 7,
               16: 8, 17: 9}.items():
    IGBP_TO_SIMPLE[_v] = _c
#: Band counts of the three kinds of patch file (a land-cover file may hold only its IGBP band).
_BAND_COUNTS = {"s2": 13, "s1": 2, "lc": 4}
_WHAT = {"s2": "L1C B01..B12, B8A, B10", "s1": "VV, VH dB", "lc": "IGBP, LCCS LC/LU/SH"}
_ROI = re.compile(r"^(ROIs\d+_[A-Za-z]+)$")
_FILE = re.compile(r"^(ROIs\d+_[A-Za-z]+)_(s1|s2|lc)_(\d+)_p(\d+)$")


@dataclass
class _S12Patch:
    key: str
    files: dict[str, Path]  # "s1"/"s2"/"lc" -> file
    split: str
    absent: dict[str, str] = field(default_factory=dict)


def _check_bands(f: Path, kind: str, root: Path | None = None, limits: RasterLimits | None = None) -> None:
    count, want = open_raster(f, root, limits).count, _BAND_COUNTS[kind]
    if count != want and not (kind == "lc" and count >= 1):
        raise DataError(f"{f}: SEN12MS {kind} patches have {want} bands ({_WHAT[kind]}), this one has {count}")


def _scan(root: Path) -> dict[tuple[str, str, str], dict[str, Path]]:
    """``(roi, scene, patch) -> {"s1"/"s2"/"lc": file}`` for every patch file under ``root``."""
    rois = sorted(d for d in root.iterdir() if d.is_dir() and _ROI.match(d.name))
    if not rois:
        raise DataError(f"{root}: no ROIs<id>_<season> folders (e.g. ROIs1158_spring/s2_1/...)")
    found: dict[tuple[str, str, str], dict[str, Path]] = {}
    for roi in rois:
        subs = [d for d in sorted(roi.iterdir()) if d.is_dir() and re.match(r"^(s1|s2|lc)_\d+$", d.name)]
        if not any(d.name.startswith("s2_") for d in subs) and not any(d.name.startswith("s1_") for d in subs):
            raise DataError(f"{roi}: no s1_<n>/ or s2_<n>/ scene folders")
        for d in subs:
            for f in sorted(d.glob("*.tif")):
                m = _FILE.match(f.stem)
                if m is None or m.group(1) != roi.name or f"{m.group(2)}_{m.group(3)}" != d.name:
                    raise DataError(f"{f}: not a SEN12MS patch name for {d} "
                                    f"(expected {roi.name}_{d.name.split('_')[0]}_{d.name.split('_')[1]}_p<k>.tif)")
                found.setdefault((roi.name, m.group(3), m.group(4)), {})[m.group(2)] = f
    return found


class SEN12MS(PatchDataset):
    """SEN12MS patches as Samples (``task`` multiclass, segmentation or contrastive); see the module docstring."""

    def __init__(self, root: str | Path, split: str = "train", *, task: str = "multiclass", s2_offset: float = 0.0,
                 quantification: float = 10000.0, s2_bands: list[str] | None = None, site: str | None = None,
                 raster_limits: dict[str, int] | None = None):
        check_split(split)
        if task not in SEN12MS_TASKS:
            raise DataError(f"task must be multiclass, segmentation or contrastive, got {task!r}")
        self.root, self.split, self.task = Path(root), split, task
        self.offset, self.quant = check_scaling(s2_offset, quantification, self.root)
        self.site, self.limits = site or self.root.name, RasterLimits.from_options(raster_limits)
        self.s2_bands = s2_band_subset(s2_bands, where=f"{self.root}: s2_bands")
        self.class_names = list(SEN12MS_CLASSES)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: not a SEN12MS folder")
        self.patches = self._index(_scan(self.root), split)
        for kind in _BAND_COUNTS:  # a wrong band count is a layout error: say so before training, not mid-epoch
            f = next((p.files[kind] for p in self.patches if kind in p.files), None)
            if f is not None:
                _check_bands(f, kind, self.root, self.limits)

    def _index(self, found: dict[tuple[str, str, str], dict[str, Path]], split: str) -> list[_S12Patch]:
        patches = []
        for (roi, n, k), files in sorted(found.items(), key=lambda kv: (kv[0][0], int(kv[0][1]), int(kv[0][2]))):
            key = f"{roi}_{n}_p{k}"
            if self.task != "contrastive" and "lc" not in files:
                raise DataError(f"{self.root / roi}: patch {key} has no land-cover file lc_{n}/{roi}_lc_{n}_p{k}.tif "
                                "(needed for its target; use task='contrastive' to read without labels)")
            absent = {m: f"no {m}_{n}/{roi}_{m}_{n}_p{k}.tif" for m in ("s1", "s2") if m not in files}
            if len(absent) == 2:
                continue
            sp = split_of(f"{roi}/{n}")
            if split == "all" or sp == split:
                patches.append(_S12Patch(key, files, sp, absent))
        return patches


    def _s2(self, f: Path) -> S2Product:
        _check_bands(f, "s2", self.root, self.limits)
        return locate(S2Product(f, {b: (f, S2_ALL_BANDS.index(b) + 1) for b in self.s2_bands}, None,
                                {b: self.offset for b in self.s2_bands}, self.quant, None,
                                metadata_source="SEN12MS (L1C)"), self.root, self.limits)

    def _target(self, p: _S12Patch) -> torch.Tensor | None:
        if self.task == "contrastive":
            return None
        f = p.files["lc"]
        src = open_raster(f, self.root, self.limits)
        if src.width * src.height > self.limits.patch_pixels:
            raise RasterDataError(f, f"a land-cover patch of {src.width:,} x {src.height:,} pixels; at most "
                                     f"{self.limits.patch_pixels:,} (raster_limits.patch_pixels)", "size")
        lab = IGBP_TO_SIMPLE[read_band(src, 1, f).astype(np.int64).clip(0, 255)]
        if self.task == "segmentation":
            return torch.from_numpy(lab.astype(np.int64))
        counts = np.bincount(lab[lab != IGNORE].ravel(), minlength=len(self.class_names))
        if counts.sum() == 0:
            raise DataError(f"{p.files['lc']}: no pixel with a known IGBP class (values 1..17)")
        return torch.tensor(int(counts.argmax()), dtype=torch.long)

    def __getitem__(self, i: int) -> Sample:
        p = self.patches[i]
        grid = grid_of(p.files["s2"] if "s2" in p.files else p.files["s1"], root=self.root, limits=self.limits)
        inputs: dict[str, Any] = {}
        if "s2" not in p.absent:
            inputs["s2"] = torch.from_numpy(read_s2(self._s2(p.files["s2"]), grid)[0])
        if "s1" not in p.absent:
            _check_bands(p.files["s1"], "s1", self.root, self.limits)
            acq = open_s1({"VV": p.files["s1"], "VH": p.files["s1"]}, units="db", band={"VV": 1, "VH": 2},
                          root=self.root, limits=self.limits)
            inputs["s1"] = torch.from_numpy(read_s1(acq, grid)[0])
        return Sample(inputs, self._target(p), {"id": p.key, "site": self.site, "split": p.split, "s2_level": "L1C",
                                                "absent": dict(p.absent)})
