"""Remote sensing for mmdomain: Sentinel-2 L2A optical + Sentinel-1 SAR.

Scenes are read as windows of one target grid (CRS, resolution, bounds) through
rasterio's WarpedVRT, paired in time with a tolerance; a patch whose S2 is too
cloudy, or that has no S1 pass close enough in time, keeps the other modality and
marks the missing one absent. ``s2_bands=`` reads a subset of the S2 bands (as torchgeo's
``bands=``); ``model_for(data options)`` gives a model whose S2 encoder takes them.

Modules: ``bands`` (sensor facts), ``grid``, ``handles`` (per-process raster handles, warps),
``s2``/``s1`` (readers), ``pairing`` (S2-S1 in time), ``patch_index`` (patches and the one
availability rule), ``dataset`` (scene folders), ``layouts`` (scene folder, BigEarthNet v2,
SEN12MS), ``samplers`` (torchgeo-style), ``stats`` (site band statistics), ``encoders``,
``models`` (model configs), ``synthetic`` (seeded regions), ``commands`` (``mmdomain rs``),
``plugin`` (the hooks).

The names below that need rasterio are imported on first use (``mmdomain_remote_sensing.Grid``,
``from mmdomain_remote_sensing import open_s2``): the registry imports this package to load the
plugin, and listing plugins must not import rasterio.
"""

import importlib
from typing import TYPE_CHECKING, Any

from .bands import BIGEARTHNET19, S1_POLARISATIONS, S2_BANDS
from .models import model_for

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .dataset import SceneFolderDataset
    from .grid import Grid
    from .pairing import pair_acquisitions
    from .s1 import S1Acquisition, open_s1, read_s1
    from .s2 import S2Product, open_s2, read_s2
    from .samplers import GridPatchSampler, RandomPatchSampler

_LAZY = {"Grid": "grid", "pair_acquisitions": "pairing", "S1Acquisition": "s1", "open_s1": "s1", "read_s1": "s1",
         "S2Product": "s2", "open_s2": "s2", "read_s2": "s2", "SceneFolderDataset": "dataset",
         "GridPatchSampler": "samplers", "RandomPatchSampler": "samplers"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["BIGEARTHNET19", "Grid", "GridPatchSampler", "RandomPatchSampler", "S1Acquisition", "S1_POLARISATIONS",
           "S2Product", "S2_BANDS", "SceneFolderDataset", "model_for", "open_s1", "open_s2", "pair_acquisitions",
           "read_s1", "read_s2"]
