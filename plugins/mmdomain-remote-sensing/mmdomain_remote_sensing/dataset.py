"""S2 + S1 patches of a scene folder, co-registered on the fly onto one target grid.

Every S2 product defines a scene; its grid is the S2 footprint at ``res`` in the dataset
CRS (the first product's CRS unless given). The S1 acquisition paired with it (nearest in
time within the tolerance, see ``pairing``) is warped onto the same grid window by window.
Availability is decided per patch by ``patch_index.absent_reasons`` (S2 absent if its SCL
cloud fraction exceeds ``max_cloud`` or too little of it is valid; S1 absent if no pass is
within the tolerance or too little of the patch has S1 data); the reasons are in
``sample.meta["absent"]`` and ``available(i)`` answers from the index. Splits are by patch
(``mmdomain.data.split_of`` of the patch id).

Index by int (the patch list of ``split``) or, torchgeo-style, by a spatiotemporal slice
``ds[xmin:xmax, ymin:ymax, tmin:tmax]`` in the dataset CRS (see ``samplers``).

Hostile or broken input (``raster_limits``): every file is opened inside ``root``; the option
``raster_limits`` (e.g. ``{"pixels": 2**28}``) sets the ceilings on files and scene grids;
``patch_size`` / ``stride`` (options or ``dataset.json``) are checked against the core ceiling.
A scene that cannot be used (a product, its S1 acquisition, its named label raster, a grid past
the ceiling, a read failing while the scene is indexed) is skipped, logged and listed in
``dataset.skipped`` (``describe``: ``skipped``) while other scenes remain; otherwise its error
is raised.
"""

from __future__ import annotations

import logging
import math
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.windows import Window

from mmdomain import DataError, Sample
from mmdomain.data import availability_pattern, declared_options
from mmdomain.data.declared import DECLARED_OPTIONS_FILE

from .grid import Bounds, Grid, intersect, to_crs
from .handles import open_raster, read_band, warped
from .layouts.common import IGNORE, PatchDataset, check_split
from .layouts.scene_folder import SceneFolder, scan
from .models import SCENE_TASKS as TASKS
from .pairing import pair_acquisitions
from .patch_index import Patch, Scene, index_scene, patch_at, patch_key
from .raster_limits import RasterDataError, RasterLimits, check_file, check_grid, dataset_size
from .s1 import read_s1
from .s2 import S2Product, read_s2
from .stats import band_stats

log = logging.getLogger(__name__)


class SceneFolderDataset(PatchDataset):
    """Patches of a scene folder (``layouts.scene_folder``) as Samples with ``s2`` and/or ``s1``.

    ``s2_bands`` (as torchgeo's ``bands=``) names the S2 bands to read, in tensor order (default all
    12); a GeoTIFF stack of fewer bands is read when its bands are named. ``s2`` then has
    ``len(s2_bands)`` channels: build the model with ``models.model_for(options)`` so the S2
    encoder takes as many (its ``bands`` option).
    """

    def __init__(self, root: str | Path, split: str = "train", *, task: str = "multilabel", patch_size: int | None = None,
                 stride: int | None = None, res: float = 10.0, crs: Any = None, max_cloud: float = 0.5,
                 time_tolerance_days: float = 6.0, min_valid: float = 0.5, s1_units: str | None = None,
                 s2_offset: float | None = None, s2_bands: list[str] | None = None, label_fraction: float = 0.05,
                 class_names: list[str] | None = None, preload: bool = False, site: str | None = None,
                 raster_limits: dict[str, int] | None = None):
        check_split(split)
        if task not in TASKS:
            raise DataError(f"task must be one of {TASKS}, got {task!r}")
        self.root, self.split, self.task = Path(root), split, task
        self.limits = RasterLimits.from_options(raster_limits)
        if patch_size is None:
            patch_size = dataset_size(self._declared().get("patch_size", 64), self.root / DECLARED_OPTIONS_FILE,
                                      "patch_size")
        self.patch_size = dataset_size(patch_size, self.root, "patch_size")
        self.stride = dataset_size(self.patch_size if stride is None else stride, self.root, "stride")
        self.res, self.max_cloud, self.min_valid = (_number(v, k, self.root, low) for k, v, low in (
            ("res", res, 0.0), ("max_cloud", max_cloud, None), ("min_valid", min_valid, None)))
        self.tolerance = _number(time_tolerance_days, "time_tolerance_days", self.root, None, finite=False)
        self.label_fraction, self.preload = float(label_fraction), preload
        self.site = site or self.root.name
        folder = scan(self.root, s1_units=s1_units, s2_offset=s2_offset, s2_bands=s2_bands, limits=self.limits)
        self.skipped: list[str] = list(folder.skipped)
        self.s2_bands = folder.s2[0].band_names
        self._classes(folder, class_names)
        self.crs = CRS.from_user_input(crs) if crs is not None else CRS.from_user_input(folder.s2[0].crs)
        self.scenes = self._scenes(folder)
        self.all_patches = self._index()
        self.patches = [p for p in self.all_patches if split == "all" or p.split == split]
        self._cache: dict[Any, Any] = {}

    # -- index ---------------------------------------------------------------------------
    def _declared(self) -> dict[str, Any]:
        """``dataset.json``, read once it is known to be a small regular file inside the root."""
        f = self.root / DECLARED_OPTIONS_FILE
        if os.path.lexists(f):  # a FIFO / device / link out of the root is refused, not taken for "none"
            check_file(f, self.root, what="dataset options file", max_bytes=self.limits.json_bytes)
        return declared_options(self.root)

    def _classes(self, folder: SceneFolder, class_names: list[str] | None) -> None:
        self.class_names = list(class_names or folder.class_names or [])
        values = folder.class_values or list(range(len(self.class_names)))
        if len(values) != len(self.class_names):
            raise DataError(f"{self.root}: {len(self.class_names)} class names but classes.json declares "
                            f"{len(values)} label values; give one name per value")
        self._lut = np.full(256, IGNORE, np.uint8)
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < IGNORE:
                raise DataError(f"{self.root}: label value {v!r} is out of range (0..{IGNORE - 1})")
            self._lut[int(v)] = i
        if self.task != "contrastive" and not folder.labels:
            if folder.bad_labels:
                raise DataError(next(iter(folder.bad_labels.values())))
            raise DataError(f"{self.root}: task {self.task!r} needs land-cover rasters in labels/ "
                            "(or use task='contrastive')")
        if self.task != "contrastive" and not self.class_names:
            raise DataError(f"{self.root}: labels need class names: write classes.json or pass class_names")

    def _scenes(self, folder: SceneFolder) -> list[Scene]:
        scenes, errors = [], []
        for pair in pair_acquisitions(folder.s2, folder.s1, self.tolerance):
            try:
                grid = Grid(self.crs, self.res, to_crs(pair.s2.bounds, pair.s2.crs, self.crs))
                check_grid(grid, pair.s2.path, self.limits.pixels)
                label = _label_for(pair.s2, folder.labels, folder.bad_labels, self.root, self.limits) \
                    if self.task != "contrastive" else None
            except DataError as exc:
                errors.append(exc)
                continue
            scenes.append(Scene(pair.s2.path.stem, pair.s2, pair.s1, pair.reason, pair.days_apart, grid, label))
        if self.task != "contrastive":  # a bad label raster no scene is named after: counted as a skipped file
            told = " ".join(str(e) for e in errors)
            errors += [DataError(why) for why in folder.bad_labels.values() if why not in told]
        self._skip(errors, scenes)
        return scenes

    def _index(self) -> list[Patch]:
        """The patches of every scene; a scene whose index reads fail is skipped (``_skip``)."""
        kept, patches, errors = [], [], []
        for s in self.scenes:
            try:
                found = index_scene(len(kept), s, self.patch_size, self.stride, min_valid=self.min_valid,
                                    max_cloud=self.max_cloud)
            except DataError as exc:
                errors.append(exc)
                continue
            kept.append(s)
            patches += found
        self._skip(errors, kept)
        self.scenes = kept
        return patches

    def _skip(self, errors: list[DataError], remaining: list) -> None:
        """Skip the scenes of ``errors`` (logged, in ``self.skipped``) while others remain; else raise."""
        if errors and not remaining:
            raise errors[0]
        for exc in errors:
            log.warning("%s: skipped a scene (%d remain): %s", self.site, len(remaining), exc)
            self.skipped.append(str(exc))


    @property
    def bounds(self) -> tuple[slice, slice, slice]:
        """torchgeo-style extent ``(x, y, t)`` slices in the dataset CRS."""
        bs = [s.grid.bounds for s in self.scenes]
        ts = [s.s2.time for s in self.scenes if s.s2.time is not None] or [datetime.min]
        return (slice(min(b[0] for b in bs), max(b[2] for b in bs), self.res),
                slice(min(b[1] for b in bs), max(b[3] for b in bs), self.res),
                slice(min(ts), max(ts) + timedelta(seconds=1)))

    def overlap(self, k: int) -> Bounds | None:
        """Where scene ``k`` has both S2 and its paired S1 (dataset CRS)."""
        s = self.scenes[k]
        if s.s1 is None:
            return None
        return intersect(s.grid.bounds, to_crs(s.s1.bounds, s.s1.crs, self.crs))

    def sample_meta(self, i: int) -> dict[str, Any]:
        return self._meta(self.patches[i])

    def _meta(self, p: Patch) -> dict[str, Any]:
        s = self.scenes[p.scene]
        return {"id": patch_key(s, p.window), "site": self.site, "split": p.split,
                "scene": s.id, "crs": self.crs.to_string(), "bounds": tuple(round(b, 3) for b in p.bounds),
                "res": self.res, "s2_time": s.s2.time.isoformat() if s.s2.time else None,
                "s1_time": s.s1.time.isoformat() if s.s1 is not None and s.s1.time else None,
                "days_apart": s.days_apart, "cloud_fraction": round(p.cloud, 4),
                "s1_valid_fraction": round(p.s1_valid, 4), "absent": dict(p.absent)}

    # -- reading -------------------------------------------------------------------------
    def _read(self, kind: str, k: int, window: Window):
        scene = self.scenes[k]
        if not self.preload:
            return self._read_window(kind, scene, window)
        key = (kind, k)
        if key not in self._cache:
            self._cache[key] = self._read_window(kind, scene, None)
        full = self._cache[key]
        sl = (slice(window.row_off, window.row_off + window.height), slice(window.col_off, window.col_off + window.width))
        return tuple(a[(Ellipsis, *sl)] if a is not None else None for a in full) if isinstance(full, tuple) \
            else full[sl]

    def _read_window(self, kind: str, scene: Scene, window):
        if kind == "s2":
            return read_s2(scene.s2, scene.grid, window)
        if kind == "s1":
            return read_s1(scene.s1, scene.grid, window)
        vrt = warped(scene.label, scene.grid, resampling=Resampling.nearest, nodata=IGNORE, dtype="uint8",
                     root=self.root, limits=self.limits)
        return self._lut[read_band(vrt, 1, scene.label, window)]

    def _sample(self, p: Patch, read: dict[str, Any] | None = None) -> Sample:
        inputs: dict[str, torch.Tensor] = {}
        read = read or {}
        if "s2" not in p.absent:
            refl = read["s2"] if "s2" in read else self._read("s2", p.scene, p.window)[0]
            inputs["s2"] = torch.from_numpy(np.ascontiguousarray(refl))
        if "s1" not in p.absent:
            db = read["s1"] if "s1" in read else self._read("s1", p.scene, p.window)[0]
            inputs["s1"] = torch.from_numpy(np.ascontiguousarray(db))
        return Sample(inputs, self._target(p), self._meta(p))

    def _target(self, p: Patch) -> torch.Tensor | None:
        if self.task == "contrastive":
            return None
        scene = self.scenes[p.scene]
        if scene.label is None:
            lab = np.full((p.window.height, p.window.width), IGNORE, np.uint8)
        else:
            lab = self._read("label", p.scene, p.window)
        if self.task == "segmentation":
            return torch.from_numpy(lab.astype(np.int64))
        n = len(self.class_names)
        counts = np.bincount(lab[lab != IGNORE].ravel(), minlength=n)[:n]
        known = counts.sum()
        if known == 0:
            return torch.full((n,), -1, dtype=torch.long)
        return torch.from_numpy((counts / known >= self.label_fraction).astype(np.int64))

    def __getitem__(self, index) -> Sample:
        if isinstance(index, (int, np.integer)):
            return self._sample(self.patches[index])
        return self._sample(*self._patch_at(index))

    def _patch_at(self, index) -> tuple[Patch, dict[str, Any]]:
        """A patch for a torchgeo-style ``(x, y[, t])`` slice, availability decided from its own pixels."""
        if isinstance(index, slice):
            index = (index,)
        full = self.bounds
        x, y = (index[i] if len(index) > i else full[i] for i in range(2))
        t = index[2] if len(index) > 2 else slice(None, None)
        want = (x.start, y.start, x.stop, y.stop)
        for k, s in enumerate(self.scenes):
            if s.s2.time is not None and ((t.start is not None and _naive(s.s2.time) < _naive(t.start))
                                          or (t.stop is not None and _naive(s.s2.time) > _naive(t.stop))):
                continue
            if intersect(s.grid.bounds, want) == tuple(want) or _inside(want, s.grid.bounds):
                patch, read = patch_at(k, s, s.grid.window(want), min_valid=self.min_valid, max_cloud=self.max_cloud)
                if len(patch.absent) == 2:
                    raise DataError(f"no usable modality at {want}: {patch.absent}")
                return patch, read
        raise DataError(f"bounds {want} (CRS {self.crs.to_string()}) are not inside any scene of {self.root}; "
                        f"dataset extent x {full[0].start:.1f}..{full[0].stop:.1f}, y {full[1].start:.1f}.."
                        f"{full[1].stop:.1f}")

    # -- statistics ------------------------------------------------------------------------
    def band_stats(self, max_patches: int = 64) -> dict[str, dict[str, list[float]]]:
        """Per-band mean/std of this site's patches (``stats.band_stats``), for ``models.model_for(stats=...)``."""
        return band_stats(self, max_patches=max_patches)


def _label_for(s2: S2Product, labels: list[Path], bad: dict[Path, str] | None = None, root: Path | None = None,
               limits: RasterLimits | None = None) -> Path | None:
    """The land-cover raster of an S2 product: one named after it, else the first that overlaps it.
    One named after it that cannot be used (``bad``) is its error: the scene is not labelled by another."""
    stem = s2.path.stem

    def is_named(p: Path) -> bool:
        return p.stem.startswith(stem) or stem.startswith(p.stem.split("_landcover")[0])

    for p, why in (bad or {}).items():
        if is_named(p):
            raise DataError(f"{s2.path.name}: its label raster cannot be used: {why}")
    named = [p for p in labels if is_named(p)]
    for p in named + labels:
        src = open_raster(p, root, limits)
        if src.crs is None:
            raise DataError(f"{p}: label raster has no CRS")
        if intersect(to_crs(src.bounds, src.crs, s2.crs), s2.bounds):
            return p
    return None


def _number(value: Any, name: str, root: Path, low: float | None, *, finite: bool = True) -> float:
    """A float option: not NaN, finite unless ``finite=False``, above ``low`` (else >= 0 when not finite)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise RasterDataError(root, f"must be a number, got {value!r}", name) from None
    if math.isnan(x) or (finite and math.isinf(x)) or (low is not None and x <= low) or (not finite and x < 0):
        need = f"> {low:g}" if low is not None else "finite" if finite else ">= 0"
        raise RasterDataError(root, f"{value!r} is out of range; it must be {need}", name)
    return x


def _inside(a: Bounds, b: Bounds, eps: float = 1e-6) -> bool:
    return a[0] >= b[0] - eps and a[1] >= b[1] - eps and a[2] <= b[2] + eps and a[3] <= b[3] + eps


def _naive(t) -> datetime:
    t = t.to_pydatetime() if hasattr(t, "to_pydatetime") else t
    return t.replace(tzinfo=None)


def describe(dataset: SceneFolderDataset) -> dict[str, Any]:
    """Aggregate, JSON-able statistics of one built dataset."""
    patterns: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for i, p in enumerate(dataset.patches):
        pat = availability_pattern(dataset.available(i))
        patterns[pat] = patterns.get(pat, 0) + 1
        for m, r in p.absent.items():
            head = f"{m}: " + r.split(" (")[0].split(" > ")[0].rstrip("0123456789%. ")
            reasons[head] = reasons.get(head, 0) + 1
    clouds = [p.cloud for p in dataset.patches]
    census: dict[str, int] = {}
    for s in dataset.scenes:
        key = f"S2 {CRS.from_user_input(s.s2.crs).to_string()} @ {s.s2.res:g}"
        census[key] = census.get(key, 0) + 1
        if s.s1 is not None:
            src = open_raster(next(iter(s.s1.files.values())), s.s1.root, s.s1.limits)
            res = f"{abs(src.transform.a):.6g}" if src.crs is not None else "GCPs"
            k1 = f"S1 {CRS.from_user_input(s.s1.crs).to_string()} @ {res}"
            census[k1] = census.get(k1, 0) + 1
    pols = sorted({p for s in dataset.scenes if s.s1 is not None for p in s.s1.polarisations})
    return {
        "patches": len(dataset.patches), "scenes": len(dataset.scenes), "split": dataset.split,
        "grid": {"crs": dataset.crs.to_string(), "res": dataset.res, "patch_size": dataset.patch_size},
        "s2_cloud_fraction": {"mean": round(float(np.mean(clouds)), 4) if clouds else None,
                              "over_max": sum(c > dataset.max_cloud for c in clouds)},
        "s1_polarisations": pols,
        "s1_units": sorted({s.s1.units for s in dataset.scenes if s.s1 is not None}),
        "crs_resolution_census": census,
        "scenes_without_s1": sum(s.s1 is None for s in dataset.scenes),
        "skipped": len(dataset.skipped),
        "days_apart": [round(s.days_apart, 2) for s in dataset.scenes if s.days_apart is not None],
        "by_pattern": dict(sorted(patterns.items())),
        "absent_reasons": dict(sorted(reasons.items())),
        "classes": dataset.class_names,
    }
