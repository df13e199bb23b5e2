"""The generator's per-site shifts (season, cloud climate, label skew): off they write the same
bytes as without them, on they change what a region's rasters hold, and bad values are refused."""

from pathlib import Path

import numpy as np
import pytest
import rasterio

from mmdomain_remote_sensing.synthetic import generate

SMALL = {"num_sites": 2, "seed": 5, "scenes_per_site": 1, "size": 64, "patch_size": 16}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(".aux.xml")}


def _read(site: Path, pattern: str) -> np.ndarray:
    (path,) = site.rglob(pattern)
    with rasterio.open(path) as src:
        return src.read(1).astype(np.float64)


def test_options_off_write_the_same_files_as_without_them(tmp_path):
    generate(tmp_path / "plain", **SMALL)
    generate(tmp_path / "off", **SMALL, label_skew=0.0, season_shift=0.0, cloud_climate=0.0)
    assert _files(tmp_path / "plain") == _files(tmp_path / "off")


def test_winter_at_a_shifted_site_snow_darker_canopy_later_date_and_frozen_ground(tmp_path):
    plain = generate(tmp_path / "plain", **SMALL)[1]
    winter = generate(tmp_path / "winter", **SMALL, season_shift=1.0)[1]  # site 1 is the farthest into winter
    scl_plain, scl_winter = _read(plain, "*SCL_20m.jp2"), _read(winter, "*SCL_20m.jp2")
    assert not (scl_plain == 11).any() and (scl_winter == 11).mean() > 0.05
    land = np.isin(_read(plain, "*_landcover.tif"), [1, 2, 3, 4])[::2, ::2]  # the first four classes, at 20 m
    clear = land & (scl_plain == scl_winter)  # the same class, neither snow nor cloud in either
    nir_plain, nir_winter = _read(plain, "*B8A_20m.jp2"), _read(winter, "*B8A_20m.jp2")
    assert nir_winter[clear].mean() < 0.95 * nir_plain[clear].mean()
    assert _read(winter, "*VH_db.tif").mean() < _read(plain, "*VH_db.tif").mean() - 0.5
    (s2_plain,), (s2_winter,) = (list((s / "s2").glob("*.SAFE")) for s in (plain, winter))
    assert s2_winter.name[11:19] > s2_plain.name[11:19]  # acquired months later (YYYYMMDD in the name)


def test_a_cloudier_climate_leaves_fewer_clear_pixels(tmp_path):
    plain = generate(tmp_path / "plain", **SMALL)[1]
    cloudy = generate(tmp_path / "cloudy", **SMALL, cloud_climate=1.0)[1]
    cloud = [np.isin(_read(s, "*SCL_20m.jp2"), [8, 9]).mean() for s in (plain, cloudy)]
    assert cloud[1] > cloud[0] + 0.1, cloud


def test_label_skew_changes_the_class_mix_of_a_region(tmp_path):
    plain = generate(tmp_path / "plain", **SMALL)[0]
    skewed = generate(tmp_path / "skewed", **SMALL, label_skew=0.2)[0]
    counts = [np.bincount(_read(s, "*_landcover.tif").astype(int).ravel(), minlength=7)[1:] for s in (plain, skewed)]
    shares = [c / c.sum() for c in counts]
    assert np.abs(shares[0] - shares[1]).sum() > 0.2, shares


@pytest.mark.parametrize("option, value", [("label_skew", -1.0), ("label_skew", float("nan")),
                                           ("season_shift", 1.5), ("cloud_climate", -0.1)])
def test_bad_values_are_refused_naming_the_option(tmp_path, option, value):
    with pytest.raises(ValueError, match=option):
        generate(tmp_path, **SMALL, **{option: value})
    assert not any(tmp_path.iterdir())  # refused before a file is written
