"""torchgeo-style samplers over a ``SceneFolderDataset``: they yield ``(x, y, t)`` slices in the
dataset CRS, exactly what ``dataset[...]`` (and torchgeo's GeoDataset) takes.

    ds = SceneFolderDataset(root, split="all", task="contrastive")
    loader = DataLoader(ds, sampler=RandomPatchSampler(ds, size=64, length=500), collate_fn=Collate(["s1", "s2"]))

By default they sample where S2 and its paired S1 overlap (``region="overlap"``); use
``region="s2"`` for the whole S2 footprint. Sizes are in pixels of the dataset grid.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Iterator

import torch
from torch.utils.data import Sampler

from mmdomain import DataError

from .grid import Bounds


def _regions(dataset, region: str) -> list[tuple[int, Bounds]]:
    if region not in ("overlap", "s2"):
        raise DataError(f"region must be 'overlap' or 's2', got {region!r}")
    out = []
    for k, s in enumerate(dataset.scenes):
        b = dataset.overlap(k) if region == "overlap" else s.grid.bounds
        if b is not None:
            out.append((k, b))
    if not out:
        raise DataError(f"no scene of {dataset.root} has S2 and S1 overlapping within the time tolerance; "
                        "sample with region='s2' or check `mmdomain rs index`")
    return out


def _snap(dataset, k: int, x: float, y: float, size: float) -> tuple[slice, slice, slice]:
    g = dataset.scenes[k].grid
    res = g.res
    x = g.bounds[0] + round((x - g.bounds[0]) / res) * res
    y = g.bounds[3] - round((g.bounds[3] - y) / res) * res
    t = dataset.scenes[k].s2.time
    ts = slice(t - timedelta(seconds=1), t + timedelta(seconds=1)) if t is not None else slice(None, None)
    return slice(x, x + size), slice(y - size, y), ts


class RandomPatchSampler(Sampler):
    """``length`` random patches of ``size`` pixels, scenes chosen by area (like torchgeo's RandomGeoSampler)."""

    def __init__(self, dataset, size: int, length: int | None = None, region: str = "overlap",
                 generator: torch.Generator | None = None):
        self.dataset, self.size_px = dataset, int(size)
        self.size = self.size_px * dataset.res
        self.regions = [(k, b) for k, b in _regions(dataset, region)
                        if b[2] - b[0] >= self.size and b[3] - b[1] >= self.size]
        if not self.regions:
            raise DataError(f"no overlap region is at least {size} pixels square")
        areas = torch.tensor([(b[2] - b[0]) * (b[3] - b[1]) for _, b in self.regions], dtype=torch.float64)
        self.weights = areas / areas.sum()
        self.length = length or int(sum(((b[2] - b[0]) // self.size) * ((b[3] - b[1]) // self.size)
                                        for _, b in self.regions))
        self.generator = generator

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[slice, slice, slice]]:
        for _ in range(self.length):
            k, b = self.regions[int(torch.multinomial(self.weights, 1, generator=self.generator))]
            u = torch.rand(2, generator=self.generator, dtype=torch.float64).tolist()
            x = b[0] + u[0] * (b[2] - b[0] - self.size)
            y = b[3] - u[1] * (b[3] - b[1] - self.size)
            yield _snap(self.dataset, k, max(x, b[0]), min(y, b[3]), self.size)


class GridPatchSampler(Sampler):
    """Patches of ``size`` pixels every ``stride`` pixels over each region, row by row."""

    def __init__(self, dataset, size: int, stride: int | None = None, region: str = "overlap"):
        self.dataset = dataset
        self.size = int(size) * dataset.res
        self.stride = int(stride or size) * dataset.res
        self.items = []
        for k, b in _regions(dataset, region):
            g = dataset.scenes[k].grid
            x0 = g.bounds[0] + -(-round((b[0] - g.bounds[0]) / g.res) // 1) * g.res
            y = g.bounds[3] - round((g.bounds[3] - b[3]) / g.res + 0.4999) * g.res
            while y - self.size >= b[1] - 1e-6:
                x = x0
                while x + self.size <= b[2] + 1e-6:
                    self.items.append(_snap(dataset, k, x, y, self.size))
                    x += self.stride
                y -= self.stride

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[tuple[slice, slice, slice]]:
        return iter(self.items)
