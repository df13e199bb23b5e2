"""A Sentinel-2 GeoTIFF stack of 4 bands (B02, B03, B04, B08) is read when its bands are named
(``s2_bands=``, as torchgeo's ``bands=``), equals those bands of the 12-band read, and trains; the
encoder follows the band count; wrong counts and unknown names are clear errors; site statistics
reach the encoder."""

import shutil

import numpy as np
import pytest
import rasterio
import torch

from mmdomain import ConfigError, DataError, get_registry
from mmdomain.config import ModelConfig, RunConfig, parse
from mmdomain.models.compose import build_model
from mmdomain.training import fit
from mmdomain_remote_sensing.bands import S2_BANDS
from mmdomain_remote_sensing.dataset import SceneFolderDataset
from mmdomain_remote_sensing.models import model_for
from mmdomain_remote_sensing.synthetic import generate

from rs_rasters import write

RGBN = ("B02", "B03", "B04", "B08")
OPTS = {"patch_size": 16, "max_cloud": 0.5}


def _stack_site(site, root, bands, descriptions=False):
    """``site`` with its SAFE product converted into one GeoTIFF stack of ``bands`` (the 10 m JP2s'
    DN, same UTM grid, offset tags) plus its SCL as a side file; S1, labels and classes copied."""
    safe = next((site / "s2").glob("*.SAFE"))
    jp2 = {b: next(safe.rglob(f"*_{b}_10m.jp2")) for b in bands}
    with rasterio.open(jp2[bands[0]]) as src:
        crs, transform = src.crs, src.transform
    dn = np.stack([rasterio.open(jp2[b]).read(1) for b in bands])
    out = root / "s2" / f"{safe.stem}.tif"
    write(out, dn, crs, transform, nodata=0, tags={"BOA_ADD_OFFSET": "-1000", "BOA_QUANTIFICATION_VALUE": "10000"},
          descriptions=list(bands) if descriptions else None)
    scl = next(safe.rglob("*_SCL_20m.jp2"))
    with rasterio.open(scl) as src:
        write(out.with_name(out.stem + "_SCL.tif"), src.read(1), src.crs, src.transform, nodata=0)
    for sub in ("s1", "labels"):
        shutil.copytree(site / sub, root / sub)
    for f in ("classes.json", "dataset.json"):
        shutil.copy(site / f, root / f)
    return out


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    base = tmp_path_factory.mktemp("bands")
    site = generate(base / "gen", num_sites=1, seed=2, scenes_per_site=1, size=128, patch_size=16)[0]
    stack = _stack_site(site, base / "rgbn", RGBN)
    assert stack.is_file() and rasterio.open(stack).count == 4 and rasterio.open(stack).crs.to_epsg() == 32632
    return site, base / "rgbn", stack


def test_a_4_band_stack_reads_the_named_bands_equal_to_the_12_band_read(sites):
    full_site, rgbn_site, _ = sites
    full = SceneFolderDataset(full_site, "all", **OPTS)
    rgbn = SceneFolderDataset(rgbn_site, "all", s2_bands=list(RGBN), **OPTS)
    assert rgbn.s2_bands == RGBN and full.s2_bands == S2_BANDS
    assert [(p.window, p.split, p.absent) for p in rgbn.patches] == [(p.window, p.split, p.absent) for p in full.patches]
    idx = [S2_BANDS.index(b) for b in RGBN]
    checked = 0
    for i in range(len(full)):
        a, b = full[i], rgbn[i]
        assert set(a.inputs) == set(b.inputs) and torch.equal(a.target, b.target)
        if "s2" in a.inputs:
            assert b.inputs["s2"].shape == (4, 16, 16)
            assert torch.equal(b.inputs["s2"], a.inputs["s2"][idx])
            checked += 1
    assert checked > 10
    b = next(p.bounds for p in full.patches if p.cloud == 0 and not p.absent)
    window = (slice(b[0], b[2]), slice(b[1], b[3]))
    assert torch.equal(rgbn[window].inputs["s2"], full[window].inputs["s2"][idx])  # the slice path too


def test_the_named_bands_pick_by_description_and_in_the_order_given(sites, tmp_path):
    full_site, _, _ = sites
    _stack_site(full_site, tmp_path, RGBN, descriptions=True)
    order = ("B08", "B04", "B03")
    ds = SceneFolderDataset(tmp_path, "all", s2_bands=list(order), **OPTS)
    full = SceneFolderDataset(full_site, "all", **OPTS)
    i = next(i for i in range(len(ds)) if "s2" in ds.available(i))
    assert torch.equal(ds[i].inputs["s2"], full[i].inputs["s2"][[S2_BANDS.index(b) for b in order]])


def test_wrong_band_counts_and_unknown_names_are_data_errors(sites):
    _, rgbn_site, stack = sites
    with pytest.raises(DataError, match=rf"{stack.name}: s2_bands names 3 bands \(B02, B03, B04\) but the stack has "
                                        "4 bands"):
        SceneFolderDataset(rgbn_site, "all", s2_bands=["B02", "B03", "B04"], **OPTS)
    with pytest.raises(DataError, match=rf"{stack.name}: a Sentinel-2 stack needs 12 bands .* it has 4 .*s2_bands="):
        SceneFolderDataset(rgbn_site, "all", **OPTS)
    with pytest.raises(DataError, match=r"unknown Sentinel-2 L2A band\(s\) \['B13'\]"):
        SceneFolderDataset(rgbn_site, "all", s2_bands=["B02", "B03", "B04", "B13"], **OPTS)
    with pytest.raises(DataError, match="name each band once"):
        SceneFolderDataset(rgbn_site, "all", s2_bands=["B02", "B02", "B04", "B08"], **OPTS)


def test_a_4_band_site_trains_and_the_encoder_follows_the_bands(sites, tmp_path):
    _, rgbn_site, _ = sites
    options = {**OPTS, "s2_bands": list(RGBN), "preload": True}
    model = model_for(options)
    for enc in model["encoders"].values():
        enc["options"].update(width=8, depth=2, out_dim=32)
    assert model["encoders"]["s2"]["options"]["bands"] == list(RGBN)
    cfg = parse(RunConfig, {"data": {"dataset": "s2s1_scenes", "root": str(rgbn_site), "options": options},
                            "model": model,
                            "train": {"epochs": 1, "batch_size": 16, "lr": 1e-3, "device": "cpu", "progress": False,
                                      "max_steps_per_epoch": 3, "out_dir": str(tmp_path / "run"), "seed": 0}})
    result = fit(cfg, get_registry(), log=lambda s: None)
    assert np.isfinite(result.history[0]["train_loss"]) and result.checkpoint.is_file()
    assert result.model.encoders["s2"].in_channels == 4
    assert result.model.encoders["s2"].body[0].in_channels == 4
    ds = SceneFolderDataset(rgbn_site, "train", **options)
    sample = next(ds[i] for i in range(len(ds)) if "s2" in ds.available(i))
    twelve = build_model(parse(ModelConfig, model_for()), get_registry())  # the 12-band default model
    with pytest.raises(ConfigError, match="s2_cnn takes 12 bands .* the s2 input has 4"):
        twelve.encoders["s2"](sample.inputs["s2"][None])


def test_site_band_statistics_reach_the_encoder(sites):
    _, rgbn_site, _ = sites
    options = {**OPTS, "s2_bands": list(RGBN)}
    stats = SceneFolderDataset(rgbn_site, "train", **options).band_stats(8)
    assert len(stats["s2"]["mean"]) == 4 and len(stats["s1"]["mean"]) == 2
    model = build_model(parse(ModelConfig, model_for(options, stats=stats)), get_registry())
    for m in ("s1", "s2"):
        enc = model.encoders[m]
        assert enc.mean.flatten().tolist() == pytest.approx(stats[m]["mean"])
        assert enc.std.flatten().tolist() == pytest.approx(stats[m]["std"])
