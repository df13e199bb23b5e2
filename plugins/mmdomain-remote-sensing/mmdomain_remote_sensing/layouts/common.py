"""What every dataset of the plugin shares: split names, the label value for "unknown", the base
class that answers ``len`` and ``available(i)`` from a patch index, and the grid a patch file
defines (the patch layouts read their files on it with ``read_s2``/``read_s1``)."""

from __future__ import annotations

from pathlib import Path

import torch

from mmdomain import DataError

from ..grid import Grid
from ..handles import open_raster
from ..raster_limits import DEFAULT_LIMITS, RasterLimits, check_grid

SPLITS = ("train", "val", "test", "all")
IGNORE = 255  # label value of an unknown class / pixel


class PatchDataset(torch.utils.data.Dataset):
    """A dataset of ``self.patches``, each with ``absent`` (modality -> why it is absent)."""

    modalities = ("s1", "s2")
    patches: list

    def __len__(self) -> int:
        return len(self.patches)

    def available(self, i: int) -> frozenset[str]:
        """The modalities sample ``i`` has, from its index entry (no raster is read)."""
        return frozenset(m for m in self.modalities if m not in self.patches[i].absent)


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")


def grid_of(path: Path, size: int | None = None, root: Path | None = None,
            limits: RasterLimits | None = None) -> Grid:
    """The grid of a patch file: its own pixels, or ``size`` x ``size`` pixels over its footprint;
    at most ``limits.patch_pixels`` pixels (every band of a sample is read onto it at once)."""
    limits = limits or DEFAULT_LIMITS
    src = open_raster(path, root, limits)
    if src.crs is None:
        raise DataError(f"{path}: has no CRS")
    bounds = tuple(src.bounds)
    res = (bounds[2] - bounds[0]) / size if size else abs(src.transform.a)
    grid = Grid(src.crs, res, bounds)
    check_grid(grid, path, limits.patch_pixels, "patch_pixels")
    return grid
