"""S2 bands (and S1 files) already on the patch grid are read straight from the file; the values
must be the ones the warp onto the grid gives, and bands off the grid must still be warped."""

import numpy as np
import pytest
from rasterio.windows import Window

from rasterio.transform import from_origin

from mmdomain_remote_sensing import s1 as s1_reader
from mmdomain_remote_sensing import s2 as s2_reader
from mmdomain_remote_sensing.dataset import SceneFolderDataset
from mmdomain_remote_sensing.grid import Grid
from mmdomain_remote_sensing.synthetic import generate

from rs_rasters import UTM, write


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


@pytest.mark.parametrize("units", ["db", "linear"])
@pytest.mark.parametrize("window", [Window(0, 0, 32, 32), Window(5, 9, 32, 32), None])
def test_s1_on_the_grid_is_read_directly_with_the_values_of_the_warp(tmp_path, units, window, monkeypatch):
    rng = np.random.default_rng(0)
    db = rng.uniform(-25, -5, (2, 48, 48)).astype(np.float32)
    db[:, :3] = -9999.0  # a no-data border
    db[1, 20, 20] = np.nan
    files = []
    for k, pol in enumerate(("VV", "VH")):
        x = db[k] if units == "db" else np.where(db[k] == -9999.0, -9999.0, 10 ** (db[k] / 10)).astype(np.float32)
        files.append(write(tmp_path / f"S1A_IW_GRDH_20230603T053000_{pol}.tif", x, UTM, from_origin(5e5, 4e6, 10, 10),
                           nodata=-9999.0))
    acq = s1_reader.open_s1(files, units=units)
    grid = Grid(UTM, 10.0, (5e5 + 40, 4e6 - 480, 5e5 + 480, 4e6 - 20))  # inside the file, whole-pixel offset
    direct = []
    real = s1_reader.read_on_grid

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        direct.append(out is not None)
        return out

    monkeypatch.setattr(s1_reader, "read_on_grid", spy)
    fast = s1_reader.read_s1(acq, grid, window, fill="nan")
    monkeypatch.setattr(s1_reader, "read_on_grid", lambda *args, **kwargs: None)
    slow = s1_reader.read_s1(acq, grid, window, fill="nan")
    assert direct == [True, True] and not fast[1].all() and fast[1].any()
    assert np.array_equal(fast[1], slow[1]) and np.array_equal(fast[0], slow[0], equal_nan=True)
