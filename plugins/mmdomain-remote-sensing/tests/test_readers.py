"""Alignment, reflectance, cloud mask, nodata, dB/linear, and clear errors on bad input."""

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from mmdomain import DataError
from mmdomain_remote_sensing.dataset import SceneFolderDataset
from mmdomain_remote_sensing.grid import Grid
from mmdomain_remote_sensing.s1 import open_s1, read_s1, to_db
from mmdomain_remote_sensing.s2 import open_s2, read_s2
from mmdomain_remote_sensing.samplers import GridPatchSampler, RandomPatchSampler

from rs_rasters import FEATURE, N, UTM, X0, Y0, s1_pair, s2_stack, write


def _ds(root, **kw):
    return SceneFolderDataset(root, "all", task="contrastive", patch_size=32, **kw)


def test_bright_feature_lands_on_the_same_pixel_in_both_modalities(scene):
    ds = _ds(scene)
    x0, y1 = X0 + 10 * 24, Y0 - 10 * 40  # a 32 x 32 window containing the feature
    sample = ds[x0:x0 + 320, y1 - 320:y1]
    s2, s1 = sample.inputs["s2"], sample.inputs["s1"]
    r2, c2 = divmod(int(s2[3].argmax()), 32)
    r1, c1 = divmod(int(s1[0].argmax()), 32)
    assert (r2, c2) == (57 - 40 - 1, 40 - 24 - 1)  # the 3x3 block's top-left maximum
    assert abs(r1 - r2) <= 1 and abs(c1 - c2) <= 1, ((r1, c1), (r2, c2))
    assert float(s1[0, r2 + 1, c2 + 1]) == pytest.approx(0.0, abs=0.5)


def test_gcp_only_s1_is_aligned_too(tmp_path):
    s2_stack(tmp_path / "s2")
    s1_pair(tmp_path / "s1", gcps=True)  # the same georeferencing as GCPs only (no CRS, no transform)
    s1_pair(tmp_path / "ref" / "s1")
    s2_stack(tmp_path / "ref" / "s2")
    ds, ref = _ds(tmp_path), _ds(tmp_path / "ref")
    x0, y1 = X0 + 10 * 24, Y0 - 10 * 40
    s1 = ds[x0:x0 + 320, y1 - 320:y1].inputs["s1"]
    r1, c1 = divmod(int(s1[0].argmax()), 32)
    assert abs(r1 - 16) <= 1 and abs(c1 - 15) <= 1  # where S2 has it (row 16, col 15 of the window)
    assert torch.equal(s1, ref[x0:x0 + 320, y1 - 320:y1].inputs["s1"])  # pixel for pixel the CRS twin


def test_non_affine_gcps_use_gdals_gcp_transformer(tmp_path):
    from rasterio.control import GroundControlPoint as G
    from rasterio.warp import reproject

    vv, _ = s1_pair(tmp_path / "a", gcps=True)
    with rasterio.open(vv) as src:
        arr, (gcps, crs) = src.read(1), src.gcps
    rows, cols = arr.shape
    (w, n), (e, s) = (gcps[0].x, gcps[0].y), (gcps[3].x, gcps[3].y)
    pts = [G(r, c, w + (e - w) * c / cols + (0.0006 if (r, c) == (rows // 2, cols // 2) else 0.0),
             n - (n - s) * r / rows) for r in (0, rows // 2, rows) for c in (0, cols // 2, cols)]  # a bent grid
    bent = write(tmp_path / "b" / "S1A_IW_GRDH_20230603T053000_VV.tif", arr, crs, None, nodata=-9999.0, gcps=pts)
    g = Grid(UTM, 10.0, (X0, Y0 - 10 * N, X0 + 10 * N, Y0))
    ours, valid = read_s1(open_s1([bent], units="db"), g, fill="nan")
    want = np.full((N, N), np.nan, np.float32)
    reproject(arr, want, src_crs=crs, gcps=pts, dst_crs=g.crs, dst_transform=g.transform, src_nodata=-9999.0,
              dst_nodata=np.nan)
    both = valid & np.isfinite(want)
    assert both.mean() > 0.9 and (valid == np.isfinite(want)).mean() > 0.98
    # GDAL's GCP transformer warps to the grid CRS near the source resolution, then onto the grid:
    # nearest twice vs once, so edges may move by a pixel
    assert (ours[0][both] == want[both]).mean() > 0.95
    straight, _ = read_s1(open_s1([vv], units="db"), g, fill="nan")
    peak = [divmod(int(np.nanargmax(a)), N) for a in (ours[0], want, straight[0])]
    assert abs(peak[0][0] - peak[1][0]) <= 1 and abs(peak[0][1] - peak[1][1]) <= 1, peak
    assert abs(peak[0][1] - peak[2][1]) >= 2, peak  # the bend (3 px here) is honoured, not fitted away


def test_reflectance_offset_applied(scene):
    p = open_s2(next((scene / "s2").glob("*.tif")))
    refl, valid, _ = read_s2(p, p.grid())
    assert p.offset["B02"] == -1000 and p.quantification == 10000
    assert refl[1, 0, 0] == pytest.approx(0.05, abs=1e-6)  # (1500 - 1000) / 10000
    assert refl[1, 57, 40] == pytest.approx(0.8, abs=1e-6)
    assert valid.all()


def test_scl_cloud_mask_makes_s2_absent(tmp_path):
    scl = np.full((N // 2, N // 2), 4, np.uint8)
    scl[:, : N // 4] = 9  # west half cloud (high probability)
    s2_stack(tmp_path / "s2", scl=scl)
    s1_pair(tmp_path / "s1")
    ds = _ds(tmp_path, max_cloud=0.5)
    west = [p for p in ds.patches if p.bounds[2] <= X0 + 10 * N / 2]
    east = [p for p in ds.patches if p.bounds[0] >= X0 + 10 * N / 2]
    assert west and all("s2" in p.absent and "cloud" in p.absent["s2"] for p in west)
    assert east and all("s2" not in p.absent for p in east)
    s = ds[ds.patches.index(west[-1])]
    assert "s2" not in s.inputs and "s1" in s.inputs and s.meta["cloud_fraction"] == 1.0


def test_nodata_masked_and_db_linear_agree(tmp_path):
    db_files = s1_pair(tmp_path / "db")
    lin_files = s1_pair(tmp_path / "lin", linear=True, units="linear")
    a, b = open_s1(db_files), open_s1(lin_files)
    assert (a.units, b.units) == ("db", "linear")
    g = Grid(UTM, 10.0, (X0, Y0 - 10 * N, X0 + 10 * N, Y0))
    xa, va = read_s1(a, g)
    xb, vb = read_s1(b, g)
    assert not va.all() and (va == vb).mean() > 0.97  # the no-data border is invalid
    assert np.isfinite(xa).all() and xa.min() > -41  # never -9999 in the data
    assert float(np.median(xa[0][va])) == pytest.approx(-20.0, abs=0.01)
    assert float(np.median(xb[0][vb])) == pytest.approx(-20.0, abs=0.05)
    assert to_db(np.array([1.0, 0.1, 0.01]))[2] == pytest.approx(-20.0)
    nan_fill, _ = read_s1(a, g, fill="nan")
    assert np.isnan(nan_fill[0][~va]).all()


def test_units_inferred_when_undeclared(tmp_path):
    acq = open_s1(s1_pair(tmp_path / "x", units=None))
    assert acq.units == "db"


def test_time_gap_beyond_tolerance_marks_s1_absent(tmp_path):
    s2_stack(tmp_path / "s2")
    s1_pair(tmp_path / "s1", when="20230620T053000")
    ds = _ds(tmp_path, time_tolerance_days=6)
    assert ds.patches and all("18.8 days" in p.absent["s1"] for p in ds.patches)
    assert set(ds[0].inputs) == {"s2"}


def test_non_overlapping_s1_is_reported(tmp_path):
    s2_stack(tmp_path / "s2")
    s1_pair(tmp_path / "s1", shift=(1.0, 0.0))
    ds = _ds(tmp_path)
    assert all(p.absent["s1"] == "no S1 acquisition overlaps this S2 scene" for p in ds.patches)
    with pytest.raises(DataError, match="no scene"):
        RandomPatchSampler(ds, size=32)
    with pytest.raises(DataError, match="not inside any scene"):
        ds[X0 - 5000:X0 - 4680, Y0 - 320:Y0]


def test_raster_without_crs_is_a_clear_error(tmp_path):
    s2_stack(tmp_path / "s2")
    write(tmp_path / "s1" / "S1A_IW_GRDH_20230603T053000_VV.tif", np.zeros((8, 8), np.float32), None,
          from_origin(0, 0, 1, 1))
    with pytest.raises(DataError, match="no CRS"):
        _ds(tmp_path)


def test_unreadable_file_is_a_clear_error(tmp_path):
    s2_stack(tmp_path / "s2")
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "S1A_IW_GRDH_20230603T053000_VV.tif").write_bytes(b"not a tiff")
    with pytest.raises(DataError, match="not a readable raster"):
        _ds(tmp_path)


def test_samplers_yield_torchgeo_slices_inside_the_overlap(scene):
    ds = _ds(scene)
    grid = GridPatchSampler(ds, size=32)
    rnd = RandomPatchSampler(ds, size=32, length=5, generator=torch.Generator().manual_seed(0))
    for x, y, t in list(grid) + list(rnd):
        assert x.stop - x.start == 320 and y.stop - y.start == 320
        s = ds[x, y, t]
        assert s.inputs["s2"].shape == (12, 32, 32) and s.inputs["s1"].shape == (2, 32, 32)


def test_dataloader_workers_open_their_own_handles(scene):
    from mmdomain.training import make_loader

    ds = _ds(scene)
    ds[0]  # parent opens handles first
    loader = make_loader(ds, ["s1", "s2"], 4, shuffle=False, num_workers=2)
    n = sum(len(b) for b in loader)
    assert n == len(ds)
