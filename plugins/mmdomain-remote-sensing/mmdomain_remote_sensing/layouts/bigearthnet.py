"""BigEarthNet v2 (reBEN): S2 L2A patch folders + S1 VV/VH, read into Samples with the plugin's
``s2`` (``S2_BANDS`` order, or the ``s2_bands`` named; reflectance) and ``s1`` (VV, VH in dB)::

    root/metadata.parquet                 patch_id, labels (list of the 19 class names), split
                                          (train/validation/test), s1_name, country
    root/BigEarthNet-S2/<tile>/<patch_id>/<patch_id>_B01.tif ... _B12.tif, _B8A.tif
                                          (120x120 at 10 m, 60x60 at 20 m, 20x20 at 60 m, UTM)
    root/BigEarthNet-S1/<product>/<s1_name>/<s1_name>_VV.tif, _VH.tif   (dB, on the S2 patch grid)

Each patch is described as an ``S2Product`` (one file per band) and an ``S1Acquisition`` and read
with ``read_s2``/``read_s1`` onto the patch grid (``size`` x ``size`` pixels over the B02 file),
as scene folders are: 10 m bands straight from the file, 20/60 m bands warped (bilinear), S1 not
on the S2 grid warped onto it (nearest, dB). S2 is L2A DN / 10000 with ``s2_offset`` added first
(default 0: the archive is 2017-2018, processing baselines before 04.00, which had no offset;
pass ``s2_offset=-1000`` for a re-processing at >= 04.00); DN 0 is no data (reflectance 0). A
patch whose ``s1_name`` is empty or whose S1 folder is missing has ``s1`` absent. Splits are the
metadata's. Reading ``metadata.parquet`` needs pandas + pyarrow (extra ``bigearthnet``).
Each file is opened inside its top folder (``BigEarthNet-S2`` / ``-S1``, or ``s2_dir`` / ``s1_dir``)
within ``raster_limits`` (an option, see ``raster_limits``); a bad patch file gives its typed
error when that sample is read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmdomain import DataError, Sample

from ..bands import BIGEARTHNET19, S1_POLARISATIONS, s2_band_subset
from ..handles import open_raster
from ..raster_limits import RasterLimits, check_file, dataset_size
from ..s1 import S1Acquisition, open_s1, read_s1
from ..s2 import S2Product, check_scaling, locate, read_s2
from .common import PatchDataset, check_split, grid_of


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


def _read_metadata(root: Path, metadata: str | None) -> tuple[pd.DataFrame, Path]:
    meta_file = Path(metadata) if metadata else next(
        iter(sorted(root.glob("*metadata*.parquet")) or sorted(root.glob("*.parquet"))), None)
    if meta_file is None or not (meta_file.is_file() or meta_file.is_symlink()):
        raise DataError(f"{root}: no metadata parquet (expected metadata.parquet with patch_id, labels, "
                        "split, s1_name)")
    real = check_file(meta_file, None if metadata else root, what="metadata file")  # no FIFO / device
    try:
        df = pd.read_parquet(real)
    except Exception as exc:  # noqa: BLE001 - pyarrow's reasons vary
        raise DataError(f"{meta_file}: not a readable parquet file ({exc})") from None
    need = [c for c in ("patch_id", "labels", "split") if c not in df.columns]
    if need:
        raise DataError(f"{meta_file}: missing columns {need} (has {list(df.columns)})")
    try:
        unknown = sorted({str(lab) for labs in df["labels"] for lab in labs} - set(BIGEARTHNET19))
    except TypeError:
        raise DataError(f"{meta_file}: labels must be lists of class names") from None
    if unknown:
        raise DataError(f"{meta_file}: labels outside BigEarthNet's 19 classes: {unknown[:5]}")
    return df, meta_file


class BigEarthNetV2(PatchDataset):
    """BigEarthNet v2 patches as Samples (19-class multilabel targets); see the module docstring."""

    def __init__(self, root: str | Path, split: str = "train", *, s2_dir: str | None = None, s1_dir: str | None = None,
                 metadata: str | None = None, s2_offset: float = 0.0, quantification: float = 10000.0,
                 s2_bands: list[str] | None = None, size: int = 120, site: str | None = None,
                 raster_limits: dict[str, int] | None = None):
        check_split(split)
        self.root, self.split = Path(root), split
        self.size = dataset_size(size, self.root, "size")
        self.limits = RasterLimits.from_options(raster_limits)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: not a BigEarthNet v2 folder")
        self.offset, self.quant = check_scaling(s2_offset, quantification, self.root)
        self.site = site or self.root.name
        self.s2_bands = s2_band_subset(s2_bands, where=f"{self.root}: s2_bands")
        self.class_names = list(BIGEARTHNET19)
        df, meta_file = _read_metadata(self.root, metadata)
        self.patches = self._index(df, meta_file, split, s2_dir, s1_dir)

    def _index(self, df: pd.DataFrame, meta_file: Path, split: str, s2_dir, s1_dir) -> list[_BenPatch]:
        s2_top, s1_top = _subdir(self.root, s2_dir, "-S2"), None
        self._tops = {"s2": s2_top, "s1": None}
        if "s1_name" in df.columns:
            try:
                s1_top = _subdir(self.root, s1_dir, "-S1")
            except DataError:
                s1_top = None  # no S1 at all: every patch has s1 absent
        self._tops["s1"] = s1_top
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
        index = {c: i for i, c in enumerate(self.class_names)}
        patches = []
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
            patches.append(_BenPatch(pid, s2_folders[pid], s1_folders.get(s1n), s1n, y, sp, country, absent))
        return patches


    def _s2(self, p: _BenPatch) -> S2Product:
        files = {b: p.s2 / f"{p.pid}_{b}.tif" for b in self.s2_bands}
        missing = [b for b, f in files.items() if not f.is_file()]
        if missing:
            raise DataError(f"{p.s2}: missing band files {missing} (expected {p.pid}_<band>.tif)")
        for f in files.values():  # every band file checked and opened inside the S2 folder, not only B02
            open_raster(f, self._tops["s2"], self.limits)
        return locate(S2Product(p.s2, {b: (f, 1) for b, f in files.items()}, None,
                                {b: self.offset for b in files}, self.quant, None, metadata_source="BigEarthNet v2"),
                      self._tops["s2"], self.limits)

    def _s1(self, p: _BenPatch) -> S1Acquisition:
        files = {pol: p.s1 / f"{p.s1_name}_{pol}.tif" for pol in S1_POLARISATIONS}
        for f in files.values():
            if not f.is_file():
                raise DataError(f"{p.s1}: missing {f.name}")
        return open_s1(files, units="db", root=self._tops["s1"], limits=self.limits)

    def __getitem__(self, i: int) -> Sample:
        p = self.patches[i]
        product = self._s2(p)
        grid = grid_of(product.reference[0], self.size, limits=self.limits)
        inputs = {"s2": torch.from_numpy(read_s2(product, grid)[0])}
        if "s1" not in p.absent:
            inputs["s1"] = torch.from_numpy(read_s1(self._s1(p), grid)[0])
        return Sample(inputs, torch.from_numpy(p.labels.copy()),
                      {"id": p.pid, "site": self.site, "split": p.split, "country": p.country, "s1_name": p.s1_name,
                       "s2_level": "L2A", "absent": dict(p.absent)})
