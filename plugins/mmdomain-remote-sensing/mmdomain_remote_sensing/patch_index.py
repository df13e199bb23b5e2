"""Scenes and patches of a scene folder, and the one rule that decides a patch's availability.

``absent_reasons`` says, from what was measured over one patch (the fraction of valid S2 pixels,
the S2 cloud fraction, the fraction of valid S1 pixels), which modality is absent and why: S2
when under ``min_valid`` of the patch is valid or its cloud fraction exceeds ``max_cloud``; S1
when the scene has no paired pass within the time tolerance or under ``min_valid`` of the patch
has S1 data. Both ways of making a patch measure and then ask it:

- ``index_scene``: the patch list that int indices walk, built once, from cheap reads of the
  whole scene at 1/f resolution (8x8 coarse pixels per patch);
- ``patch_at``: a torchgeo-style slice, from the patch's own pixels (which are then the
  sample's, so nothing is read twice).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.enums import Resampling
from rasterio.windows import Window

from mmdomain.data import split_of

from .grid import Bounds, Grid
from .handles import read_band, warped
from .s1 import S1Acquisition, read_s1
from .s2 import S2Product, cloud_fraction, read_s2, read_scl


@dataclass
class Scene:
    id: str
    s2: S2Product
    s1: S1Acquisition | None
    s1_reason: str  # why s1 is None ("" when paired)
    days_apart: float | None
    grid: Grid
    label: Path | None


@dataclass
class Patch:
    scene: int
    window: Window
    bounds: Bounds
    split: str
    cloud: float
    s2_valid: float
    s1_valid: float
    absent: dict[str, str] = field(default_factory=dict)


def patch_key(scene: Scene, window: Window) -> str:
    """A patch's id (``<scene>:<row>:<col>``): its ``meta["id"]`` and the group key of its split."""
    return f"{scene.id}:{window.row_off}:{window.col_off}"


def absent_reasons(scene: Scene, s2_valid: float, cloud: float, s1_valid: float, *, min_valid: float,
                   max_cloud: float) -> dict[str, str]:
    """The modalities a patch lacks, each with the reason (empty: it has both)."""
    absent = {}
    if s2_valid < min_valid:
        absent["s2"] = f"only {s2_valid:.0%} of the patch has valid S2 pixels (min_valid {min_valid:.0%})"
    elif cloud > max_cloud:
        absent["s2"] = f"S2 cloud fraction {cloud:.0%} > max_cloud {max_cloud:.0%}"
    if scene.s1 is None:
        absent["s1"] = scene.s1_reason
    elif s1_valid < min_valid:
        absent["s1"] = f"only {s1_valid:.0%} of the patch has valid S1 pixels (min_valid {min_valid:.0%})"
    return absent


def _coarse_masks(scene: Scene, coarse: Grid) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Valid S2 (reference band DN > 0 and SCL not invalid), SCL and valid S1 on the coarse grid."""
    scl = read_scl(scene.s2, coarse)
    f, band = scene.s2.reference
    vrt = warped(f, coarse, resampling=Resampling.nearest, src_nodata=0, nodata=0, dtype="uint16",
                 root=scene.s2.root, limits=scene.s2.limits)
    s2ok = read_band(vrt, band, f) > 0
    if scl is not None:
        s2ok &= scl > 1
    s1ok = read_s1(scene.s1, coarse)[1] if scene.s1 is not None else None
    return s2ok, scl, s1ok


def index_scene(k: int, scene: Scene, patch_size: int, stride: int, *, min_valid: float,
                max_cloud: float) -> list[Patch]:
    """Every ``patch_size`` window of scene ``k`` every ``stride`` pixels that has a modality to learn from."""
    g, ps = scene.grid, patch_size
    if g.width < ps or g.height < ps:
        return []
    f = max(1, ps // 8)
    s2ok, scl, s1ok = _coarse_masks(scene, g.coarser(f))
    out = []
    for row in range(0, g.height - ps + 1, stride):
        for col in range(0, g.width - ps + 1, stride):
            r0, c0, n = row // f, col // f, max(1, ps // f)
            sl = (slice(r0, r0 + n), slice(c0, c0 + n))
            v2 = float(s2ok[sl].mean()) if s2ok[sl].size else 0.0
            cloud = cloud_fraction(scl[sl], s2ok[sl]) if scl is not None else 0.0
            v1 = float(s1ok[sl].mean()) if s1ok is not None and s1ok[sl].size else 0.0
            absent = absent_reasons(scene, v2, cloud, v1, min_valid=min_valid, max_cloud=max_cloud)
            if len(absent) == 2:
                continue  # nothing to learn from
            win = Window(col, row, ps, ps)
            out.append(Patch(k, win, g.window_bounds(win), split_of(patch_key(scene, win)), cloud, v2, v1, absent))
    return out


def patch_at(k: int, scene: Scene, window: Window, *, min_valid: float,
             max_cloud: float) -> tuple[Patch, dict[str, Any]]:
    """The patch of scene ``k`` at ``window`` (split ``"all"``) and the pixels read to decide it."""
    refl, valid, scl = read_s2(scene.s2, scene.grid, window)
    read: dict[str, Any] = {"s2": refl}
    v1 = 0.0
    if scene.s1 is not None:
        read["s1"], ok1 = read_s1(scene.s1, scene.grid, window)
        v1 = float(ok1.mean())
    v2, cloud = float(valid.mean()), cloud_fraction(scl, valid) if scl is not None else 0.0
    absent = absent_reasons(scene, v2, cloud, v1, min_valid=min_valid, max_cloud=max_cloud)
    return Patch(k, window, scene.grid.window_bounds(window), "all", cloud, v2, v1, absent), read
