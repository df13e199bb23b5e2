"""S2 bands already on the patch grid are read straight from the file; the values must be the
ones the warp onto the grid gives, and bands off the grid must still be warped."""

import numpy as np
import pytest
from rasterio.windows import Window

from mmdomain_remote_sensing import s2 as s2_reader
from mmdomain_remote_sensing.dataset import SceneFolderDataset
from mmdomain_remote_sensing.synthetic import generate


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    site = generate(tmp_path_factory.mktemp("grid"), num_sites=1, seed=3, scenes_per_site=1, size=192,
                    patch_size=64, s1_shift=0.0, cloud_cover=(0.0, 0.01))[0]
    return SceneFolderDataset(site, "all", task="contrastive", patch_size=64, max_cloud=1.0, min_valid=0.0).scenes[0]


@pytest.mark.parametrize("window", [Window(0, 0, 64, 64), Window(37, 91, 64, 64), None])
def test_direct_reads_equal_the_warp(scene, window, monkeypatch):
    direct = []
    real = s2_reader.read_on_grid

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        direct.append(out is not None)
        return out

    monkeypatch.setattr(s2_reader, "read_on_grid", spy)
    fast = s2_reader.read_s2(scene.s2, scene.grid, window)
    monkeypatch.setattr(s2_reader, "read_on_grid", lambda *args, **kwargs: None)
    warped = s2_reader.read_s2(scene.s2, scene.grid, window)
    assert sum(direct) == 4 and len(direct) == 12  # the four 10 m bands; 20 m / 60 m bands are warped
    for a, b in zip(fast, warped):
        assert (a is None and b is None) or np.array_equal(a, b)
    assert fast[0].dtype == np.float32


def test_a_window_past_the_file_falls_back_to_the_warp(scene):
    f, idx = scene.s2.bands["B02"]
    w = scene.grid.width
    assert s2_reader.read_on_grid(f, idx, scene.grid, Window(w - 10, 0, 64, 64)) is None
    assert s2_reader.read_on_grid(f, idx, scene.grid, Window(0, 0, 64, 64)).shape == (64, 64)
