"""Published S1+S2 patch datasets: BigEarthNet v2 (reBEN) and SEN12MS, read into Samples with
the plugin's ``s2`` (12 bands, ``bands.S2_BANDS`` order, reflectance) and ``s1`` (VV, VH in dB)
modalities.

BigEarthNet v2 (reBEN)::

    root/metadata.parquet                 patch_id, labels (list of the 19 class names), split
                                          (train/validation/test), s1_name, country
    root/BigEarthNet-S2/<tile>/<patch_id>/<patch_id>_B01.tif ... _B12.tif, _B8A.tif
                                          (120x120 at 10 m, 60x60 at 20 m, 20x20 at 60 m, UTM)
    root/BigEarthNet-S1/<product>/<s1_name>/<s1_name>_VV.tif, _VH.tif   (dB, on the S2 patch grid)

  S2 is L2A DN / 10000 with ``s2_offset`` added first (default 0: the archive is 2017-2018,
  processing baselines before 04.00, which had no offset; pass ``s2_offset=-1000`` for a re-processing
  at >= 04.00). 20/60 m bands are resampled (bilinear) to the 10 m patch. S1 not on the S2 grid is
  reprojected onto it. A patch whose ``s1_name`` is empty or whose S1 folder is missing has ``s1`` absent.

SEN12MS::

    root/ROIs<id>_<season>/s1_<n>/ROIs<id>_<season>_s1_<n>_p<k>.tif   2 bands VV, VH (dB)
    root/ROIs<id>_<season>/s2_<n>/ROIs<id>_<season>_s2_<n>_p<k>.tif   13 bands L1C DN (B01..B12, B8A, B10)
    root/ROIs<id>_<season>/lc_<n>/ROIs<id>_<season>_lc_<n>_p<k>.tif   4 bands (IGBP, LCCS LC/LU/SH)

  The 13 L1C bands map to the 12-band ``s2`` modality by dropping B10 (cirrus, absent from L2A);
  values are top-of-atmosphere reflectance DN / 10000 with no offset (2016-2017 products, before
  baseline 04.00), so ``s2`` here is TOA, not surface reflectance (``meta["s2_level"] = "L1C"``).
  Targets: IGBP (band 1) simplified to the 10 DFC2020 classes (``bands.SEN12MS_CLASSES``), per pixel
  (``task="segmentation"``, 255 = unknown) or the patch's majority class (``task="multiclass"``).
  Splits: by scene (``ROIs<id>_<season>/<n>``), hashed, so patches of one scene never straddle splits.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.warp import reproject

from mmdomain import DataError, Sample

from ..bands import BIGEARTHNET19, S1_DB_RANGE, S2_ALL_BANDS, S2_BANDS, SEN12MS_CLASSES

SPLITS = ("train", "val", "test", "all")
IGNORE = 255
#: IGBP (1..17) -> simplified DFC2020 class (0..9 = SEN12MS_CLASSES); 0 and unknown values -> IGNORE.
IGBP_TO_SIMPLE = np.full(256, IGNORE, np.uint8)
for _v, _c in {1: 0, 2: 0, 3: 0, 4: 0, 5: 0, 6: 1, 7: 1, 8: 2, 9: 2, 10: 3, 11: 4, 12: 5, 13: 6, 14: 5, 15: 7,
               16: 8, 17: 9}.items():
    IGBP_TO_SIMPLE[_v] = _c
#: Positions of the 12 ``s2`` bands in a 13-band L1C stack (B10 dropped).
L1C_TO_S2 = [S2_ALL_BANDS.index(b) for b in S2_BANDS]


def _split_of(key: str) -> str:
    from ..dataset import split_of

    return split_of(key)


def _open(path: Path):
    try:
        return rasterio.open(path)
    except (RasterioIOError, OSError) as exc:
        raise DataError(f"{path}: not a readable raster ({str(exc).splitlines()[0]})") from None


def _db(x: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """dB backscatter ``[2, h, w]``: non-finite / nodata pixels filled with the channel median, clipped."""
    x = x.astype(np.float32, copy=False)
    ok = np.isfinite(x) if valid is None else valid & np.isfinite(x)
    for c in range(x.shape[0]):
        v = x[c][ok[c]]
        x[c][~ok[c]] = float(np.median(v)) if v.size else S1_DB_RANGE[0]
    return np.clip(x, *S1_DB_RANGE)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")


# -- BigEarthNet v2 --------------------------------------------------------------------------------
@dataclass
class _BenPatch:
    pid: str
    s2: Path
    s1: Path | None
    s1_name: str | None
    labels: np.ndarray
    split: str
    country: str | None
    absent: dict[str, str] = field(default_factory=dict)


def _subdir(root: Path, given: str | Path | None, hint: str) -> Path:
    if given is not None:
        p = Path(given) if Path(given).is_absolute() else root / given
        if not p.is_dir():
            raise DataError(f"{p}: no such folder")
        return p
    cands = sorted(d for d in root.iterdir() if d.is_dir() and hint in d.name.upper().replace("_", "-"))
    if not cands:
        raise DataError(f"{root}: no BigEarthNet-{hint[-2:]} folder (expected e.g. {root / ('BigEarthNet' + hint)})")
    return cands[0]


def _patch_folders(top: Path, wanted: set[str]) -> dict[str, Path]:
    """Patch folders under ``top``: ``top/<tile>/<patch>`` (as distributed) or ``top/<patch>``."""
    out: dict[str, Path] = {}
    with os.scandir(top) as it:
        for d in it:
            if not d.is_dir():
                continue
            if d.name in wanted:
                out[d.name] = Path(d.path)
                continue
            with os.scandir(d.path) as inner:
                for p in inner:
                    if p.is_dir():
                        out[p.name] = Path(p.path)
    return out


class BigEarthNetV2(torch.utils.data.Dataset):
    modalities = ("s1", "s2")

    def __init__(self, root: str | Path, split: str = "train", *, s2_dir: str | None = None, s1_dir: str | None = None,
                 metadata: str | None = None, s2_offset: float = 0.0, quantification: float = 10000.0,
                 size: int = 120, site: str | None = None):
        import pandas as pd

        _check_split(split)
        self.root, self.split, self.size = Path(root), split, int(size)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: not a BigEarthNet v2 folder")
        self.offset, self.quant, self.site = float(s2_offset), float(quantification), site or self.root.name
        self.class_names = list(BIGEARTHNET19)
        meta_file = Path(metadata) if metadata else next(
            iter(sorted(self.root.glob("*metadata*.parquet")) or sorted(self.root.glob("*.parquet"))), None)
        if meta_file is None or not meta_file.is_file():
            raise DataError(f"{self.root}: no metadata parquet (expected metadata.parquet with patch_id, labels, "
                            "split, s1_name)")
        try:
            df = pd.read_parquet(meta_file)
        except Exception as exc:  # noqa: BLE001 - pyarrow's reasons vary
            raise DataError(f"{meta_file}: not a readable parquet file ({exc})") from None
        need = [c for c in ("patch_id", "labels", "split") if c not in df.columns]
        if need:
            raise DataError(f"{meta_file}: missing columns {need} (has {list(df.columns)})")
        s2_top, s1_top = _subdir(self.root, s2_dir, "-S2"), None
        if "s1_name" in df.columns:
            try:
                s1_top = _subdir(self.root, s1_dir, "-S1")
            except DataError:
                s1_top = None  # no S1 at all: every patch has s1 absent
        index = {c: i for i, c in enumerate(self.class_names)}
        unknown = sorted({lab for labs in df["labels"] for lab in labs} - set(index))
        if unknown:
            raise DataError(f"{meta_file}: labels outside BigEarthNet's 19 classes: {unknown[:5]}")
        ids = [str(p) for p in df["patch_id"]]
        s2_folders = _patch_folders(s2_top, set(ids))
        missing = [p for p in ids if p not in s2_folders]
        if missing:
            raise DataError(f"{s2_top}: {len(missing)} patch folder(s) listed in {meta_file.name} are missing, e.g. "
                            f"{missing[:3]}")
        s1_names = [None if not isinstance(n, str) or not n else n for n in df.get("s1_name", [None] * len(df))]
        s1_folders = _patch_folders(s1_top, {n for n in s1_names if n}) if s1_top is not None else {}
        splits = [{"validation": "val"}.get(str(s), str(s)) for s in df["split"]]
        countries = list(df["country"]) if "country" in df.columns else [None] * len(df)
        self.patches: list[_BenPatch] = []
        for pid, labs, sp, s1n, country in zip(ids, df["labels"], splits, s1_names, countries):
            if split != "all" and sp != split:
                continue
            y = np.zeros(len(self.class_names), np.int64)
            y[[index[lab] for lab in labs]] = 1
            absent = {}
            if s1n is None:
                absent["s1"] = "no S1 patch paired in the metadata"
            elif s1n not in s1_folders:
                absent["s1"] = f"S1 patch folder {s1n} not found"
            self.patches.append(_BenPatch(pid, s2_folders[pid], s1_folders.get(s1n), s1n, y, sp, country, absent))

    def __len__(self) -> int:
        return len(self.patches)

    def _read_s2(self, p: _BenPatch):
        files = {b: p.s2 / f"{p.pid}_{b}.tif" for b in S2_BANDS}
        missing = [b for b, f in files.items() if not f.is_file()]
        if missing:
            raise DataError(f"{p.s2}: missing band files {missing} (expected {p.pid}_<band>.tif)")
        out = np.empty((len(S2_BANDS), self.size, self.size), np.float32)
        ref = None
        for i, b in enumerate(S2_BANDS):
            with _open(files[b]) as src:
                rs = Resampling.nearest if (src.height, src.width) == (self.size, self.size) else Resampling.bilinear
                out[i] = src.read(1, out_shape=(self.size, self.size), resampling=rs)
                if b == "B02":
                    ref = (src.crs, src.transform @ src.transform.scale(src.width / self.size, src.height / self.size))
        out += self.offset
        out /= self.quant
        return out, ref

    def _read_s1(self, p: _BenPatch, ref) -> np.ndarray:
        chans, valid = [], []
        for pol in ("VV", "VH"):
            f = p.s1 / f"{p.s1_name}_{pol}.tif"
            if not f.is_file():
                raise DataError(f"{p.s1}: missing {f.name}")
            with _open(f) as src:
                if src.crs == ref[0] and src.transform.almost_equals(ref[1]) and src.shape == (self.size,) * 2:
                    x = src.read(1).astype(np.float32)
                else:
                    if src.crs is None:
                        raise DataError(f"{f}: has no CRS")
                    x = np.full((self.size, self.size), np.nan, np.float32)
                    reproject(src.read(1), x, src_transform=src.transform, src_crs=src.crs, dst_transform=ref[1],
                              dst_crs=ref[0], src_nodata=src.nodata, dst_nodata=np.nan,
                              resampling=Resampling.nearest)
                ok = np.isfinite(x) if src.nodata is None else np.isfinite(x) & (x != src.nodata)
            chans.append(x)
            valid.append(ok)
        return _db(np.stack(chans), np.stack(valid))

    def __getitem__(self, i: int) -> Sample:
        p = self.patches[i]
        s2, ref = self._read_s2(p)
        inputs = {"s2": torch.from_numpy(s2)}
        if "s1" not in p.absent:
            inputs["s1"] = torch.from_numpy(self._read_s1(p, ref))
        return Sample(inputs, torch.from_numpy(p.labels.copy()),
                      {"id": p.pid, "site": self.site, "split": p.split, "country": p.country, "s1_name": p.s1_name,
                       "s2_level": "L2A", "absent": dict(p.absent)})


# -- SEN12MS ---------------------------------------------------------------------------------------
_ROI = re.compile(r"^(ROIs\d+_[A-Za-z]+)$")
_FILE = re.compile(r"^(ROIs\d+_[A-Za-z]+)_(s1|s2|lc)_(\d+)_p(\d+)$")


@dataclass
class _S12Patch:
    key: str
    files: dict[str, Path]  # "s1"/"s2"/"lc" -> file
    split: str
    absent: dict[str, str] = field(default_factory=dict)


class SEN12MS(torch.utils.data.Dataset):
    modalities = ("s1", "s2")

    def __init__(self, root: str | Path, split: str = "train", *, task: str = "multiclass", s2_offset: float = 0.0,
                 quantification: float = 10000.0, site: str | None = None):
        _check_split(split)
        if task not in ("multiclass", "segmentation", "contrastive"):
            raise DataError(f"task must be multiclass, segmentation or contrastive, got {task!r}")
        self.root, self.split, self.task = Path(root), split, task
        self.offset, self.quant, self.site = float(s2_offset), float(quantification), site or self.root.name
        self.class_names = list(SEN12MS_CLASSES)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: not a SEN12MS folder")
        rois = sorted(d for d in self.root.iterdir() if d.is_dir() and _ROI.match(d.name))
        if not rois:
            raise DataError(f"{self.root}: no ROIs<id>_<season> folders (e.g. ROIs1158_spring/s2_1/...)")
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
        self.patches: list[_S12Patch] = []
        for (roi, n, k), files in sorted(found.items(), key=lambda kv: (kv[0][0], int(kv[0][1]), int(kv[0][2]))):
            key = f"{roi}_{n}_p{k}"
            if task != "contrastive" and "lc" not in files:
                raise DataError(f"{self.root / roi}: patch {key} has no land-cover file lc_{n}/{roi}_lc_{n}_p{k}.tif "
                                "(needed for its target; use task='contrastive' to read without labels)")
            absent = {m: f"no {m}_{n}/{roi}_{m}_{n}_p{k}.tif" for m in ("s1", "s2") if m not in files}
            if len(absent) == 2:
                continue
            sp = _split_of(f"{roi}/{n}")
            if split == "all" or sp == split:
                self.patches.append(_S12Patch(key, files, sp, absent))
        if self.patches:  # a wrong band count is a layout error: say so before training, not mid-epoch
            for m, want in (("s2", 13), ("s1", 2), ("lc", 4)):
                f = next((p.files[m] for p in self.patches if m in p.files), None)
                if f is not None:
                    with _open(f) as src:
                        if src.count != want and not (m == "lc" and src.count >= 1):
                            raise DataError(f"{f}: SEN12MS {m} patches have {want} bands, this one has {src.count}")

    def __len__(self) -> int:
        return len(self.patches)

    def _s2(self, f: Path) -> np.ndarray:
        with _open(f) as src:
            if src.count != 13:
                raise DataError(f"{f}: SEN12MS S2 patches have 13 bands (L1C B01..B12, B8A, B10), it has {src.count}")
            x = src.read([i + 1 for i in L1C_TO_S2]).astype(np.float32)
        x += self.offset
        x /= self.quant
        return x

    def _s1(self, f: Path) -> np.ndarray:
        with _open(f) as src:
            if src.count != 2:
                raise DataError(f"{f}: SEN12MS S1 patches have 2 bands (VV, VH dB), it has {src.count}")
            x = src.read().astype(np.float32)
            ok = np.isfinite(x) if src.nodata is None else np.isfinite(x) & (x != src.nodata)
        return _db(x, ok)

    def _target(self, p: _S12Patch) -> torch.Tensor | None:
        if self.task == "contrastive":
            return None
        with _open(p.files["lc"]) as src:
            lab = IGBP_TO_SIMPLE[src.read(1).astype(np.int64).clip(0, 255)]
        if self.task == "segmentation":
            return torch.from_numpy(lab.astype(np.int64))
        counts = np.bincount(lab[lab != IGNORE].ravel(), minlength=len(self.class_names))
        if counts.sum() == 0:
            raise DataError(f"{p.files['lc']}: no pixel with a known IGBP class (values 1..17)")
        return torch.tensor(int(counts.argmax()), dtype=torch.long)

    def __getitem__(self, i: int) -> Sample:
        p = self.patches[i]
        inputs: dict[str, Any] = {}
        if "s2" not in p.absent:
            inputs["s2"] = torch.from_numpy(self._s2(p.files["s2"]))
        if "s1" not in p.absent:
            inputs["s1"] = torch.from_numpy(self._s1(p.files["s1"]))
        return Sample(inputs, self._target(p), {"id": p.key, "site": self.site, "split": p.split, "s2_level": "L1C",
                                                "absent": dict(p.absent)})
