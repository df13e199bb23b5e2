"""Remote sensing for mmdomain: Sentinel-2 L2A optical + Sentinel-1 SAR.

Scenes are read as windows of one target grid (CRS, resolution, bounds) through
rasterio's WarpedVRT, paired in time with a tolerance; a patch whose S2 is too
cloudy, or that has no S1 pass close enough in time, keeps the other modality and
marks the missing one absent.
"""

from .bands import BIGEARTHNET19, S1_POLARISATIONS, S2_BANDS
from .grid import Grid
from .pairing import pair_acquisitions
from .s1 import S1Acquisition, open_s1, read_s1
from .s2 import S2Product, open_s2, read_s2
from .dataset import SceneFolderDataset
from .samplers import GridPatchSampler, RandomPatchSampler

__all__ = ["BIGEARTHNET19", "Grid", "GridPatchSampler", "RandomPatchSampler", "S1Acquisition", "S1_POLARISATIONS",
           "S2Product", "S2_BANDS", "SceneFolderDataset", "open_s1", "open_s2", "pair_acquisitions", "read_s1",
           "read_s2"]
