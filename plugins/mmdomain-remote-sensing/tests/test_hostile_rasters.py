"""Hostile and broken rasters, metadata and folders (#17): each is the plugin's typed error naming the
file (and the field), or, inside a multi-scene folder, a skipped and counted scene while the rest
load. Every file here is real: JP2 / GeoTIFF written with rasterio, the seeded synthetic SAFE
products, real FIFOs and symlinks."""

import json
import logging
import os
import re
import shutil
import signal
import time
import tracemalloc

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from mmdomain import DataError
from mmdomain_remote_sensing import handles
from mmdomain_remote_sensing.dataset import SceneFolderDataset, describe
from mmdomain_remote_sensing.raster_limits import RasterDataError, check_declared_bytes
from mmdomain_remote_sensing.s2 import open_s2, read_s2
from mmdomain_remote_sensing.synthetic import generate

from rs_rasters import UTM, X0, Y0, s2_stack, write

STACK = "S2B_MSIL2A_20230601T103031_T32TMT.tif"


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One seeded site: two SAFE scenes (JP2 bands, MTD, SCL), S1 pairs, labels, classes.json, dataset.json."""
    return generate(tmp_path_factory.mktemp("tmpl"), num_sites=1, scenes_per_site=2, size=64, patch_size=16)[0]


@pytest.fixture
def site(template, tmp_path):
    handles.close_all()
    d = shutil.copytree(template, tmp_path / "site")
    yield d
    handles.close_all()


@pytest.fixture(autouse=True)
def no_hang():
    """A regression here (GDAL opening a FIFO) would block: fail instead, after 20 s."""
    def fail(*_):
        raise TimeoutError("hung for 20 s (a FIFO reached GDAL?)")
    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _safes(site):
    return sorted((site / "s2").glob("*.SAFE"))


def _band(safe, band="B02"):
    return next(safe.rglob(f"*_{band}_*m.jp2"))


def _truncate(f, keep=0.5):
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * keep)])


def _all_samples_finite(ds):
    for i in range(len(ds)):
        s = ds[i]
        assert all(np.isfinite(x.numpy()).all() for x in s.inputs.values())


def _one_scene_skipped(site, bad_file, why, caplog):
    """The folder loads without the bad scene; the skip names the file, is counted and logged."""
    with caplog.at_level(logging.WARNING, logger="mmdomain_remote_sensing"):
        ds = SceneFolderDataset(site, "all")
    assert [s.id for s in ds.scenes] == [_safes(site)[1].stem]
    assert len(ds.skipped) == 1 and str(bad_file) in ds.skipped[0] and re.search(why, ds.skipped[0])
    assert describe(ds)["skipped"] == 1 and describe(ds)["scenes"] == 1
    assert any(str(bad_file) in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)
    assert len(ds) > 0
    _all_samples_finite(ds)
    return ds


# -- truncated and corrupt rasters ------------------------------------------------------------------------


def test_truncated_jp2_band_is_a_typed_error_alone_and_a_skipped_scene_in_a_folder(site, caplog):
    safe = _safes(site)[0]
    b05 = _band(safe, "B05")  # not the band that places the product: caught when the product is opened, not mid-epoch
    _truncate(b05)
    with pytest.raises(RasterDataError, match="truncated") as exc:
        open_s2(safe)
    assert exc.value.path == str(b05)
    handles.close_all()
    _one_scene_skipped(site, b05, "truncated", caplog)


@pytest.mark.parametrize("layout", ["strips", "tiled", "bigtiff", "big-endian", "cog", "jp2-lossless", "jp2-lossy"])
def test_declared_sizes_pass_whole_files_and_refuse_every_cut(tmp_path, layout):
    """No false alarm on any layout GDAL writes; a cut anywhere is refused before GDAL decodes a pixel."""
    n = 256 if layout == "cog" else 64  # the COG driver's blocks are >= 128 pixels
    dn = np.random.default_rng(0).integers(1, 10000, (3, n, n)).astype(np.uint16)
    opts = {"strips": {}, "tiled": dict(tiled=True, blockxsize=16, blockysize=16, compress="deflate"),
            "bigtiff": dict(BIGTIFF="YES", tiled=True, blockxsize=32, blockysize=32),
            "big-endian": dict(ENDIANNESS="BIG"), "cog": dict(driver="COG", BLOCKSIZE=128, OVERVIEWS="AUTO"),
            "jp2-lossless": dict(driver="JP2OpenJPEG", QUALITY=100, REVERSIBLE="YES", BLOCKXSIZE=32, BLOCKYSIZE=32),
            "jp2-lossy": dict(driver="JP2OpenJPEG", QUALITY=25)}[layout]
    f = tmp_path / ("b.jp2" if layout.startswith("jp2") else "b.tif")
    kw = {"driver": "GTiff", **opts}
    if kw["driver"] == "COG":  # the COG driver only copies: write a GTiff, then translate it
        src = write(tmp_path / "src.tif", dn, UTM, from_origin(X0, Y0, 10, 10))
        from rasterio.shutil import copy
        copy(src, f, **kw)
    else:
        with rasterio.open(f, "w", width=n, height=n, count=3, dtype="uint16", crs=UTM,
                           transform=from_origin(X0, Y0, 10, 10), **kw) as d:
            d.write(dn)
    check_declared_bytes(f)
    assert np.array_equal(handles.open_raster(f).read(), dn) or layout == "jp2-lossy"
    handles.close_all()
    whole = f.read_bytes()
    # a COG's last 4 bytes are a copy of its last tile's end (a trailer GDAL may check): cutting them loses no pixel
    last = len(whole) - (5 if layout == "cog" else 1)
    for keep in (last, int(len(whole) * 0.9), len(whole) // 2, 20):
        f.write_bytes(whole[:keep])
        with pytest.raises(RasterDataError, match="truncated|corrupt|not a readable raster") as exc:
            handles.open_raster(f)
        assert exc.value.path == str(f)
        handles.close_all()


def test_truncated_geotiff_stack_is_a_typed_error(tmp_path):
    f = tmp_path / STACK
    with rasterio.open(f, "w", driver="GTiff", width=64, height=64, count=12, dtype="uint16", crs=UTM,
                       transform=from_origin(X0, Y0, 10, 10), tiled=True, blockxsize=16, blockysize=16) as d:
        d.write(np.full((12, 64, 64), 1500, np.uint16))
    _truncate(f, 0.7)
    with pytest.raises(RasterDataError, match=r"TIFF strip / tile declares data up to byte [\d,]+ but the file has"):
        open_s2(f)


def test_a_corrupt_tile_is_a_typed_error_when_it_is_read_not_a_gdal_traceback(tmp_path):
    """Structure intact (passes the open checks), one deflate tile's bytes zeroed: GDAL fails in the read."""
    f = tmp_path / STACK
    dn = np.random.default_rng(1).integers(1, 10000, (12, 64, 64)).astype(np.uint16)
    with rasterio.open(f, "w", driver="GTiff", width=64, height=64, count=12, dtype="uint16", crs=UTM,
                       transform=from_origin(X0, Y0, 10, 10), tiled=True, blockxsize=32, blockysize=32,
                       compress="deflate") as d:
        d.write(dn)
    with rasterio.open(f) as s:
        off, n = (int(s.get_tag_item(f"BLOCK_{k}_1_1", "TIFF", bidx=1)) for k in ("OFFSET", "SIZE"))
    data = bytearray(f.read_bytes())
    data[off + 8:off + n - 8] = bytes(n - 16)
    f.write_bytes(bytes(data))
    product = open_s2(f)
    with pytest.raises(RasterDataError, match="cannot be read .*truncated or corrupt") as exc:
        read_s2(product, product.grid())
    assert exc.value.path == str(f) and exc.value.field == "band 1"


# -- ceilings ----------------------------------------------------------------------------------------------


def _huge_stack(path, side=100_000):
    """A real 12-band GeoTIFF declaring side x side pixels: tiled and sparse (no tile written), ~80 KB."""
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=12, dtype="uint16", crs=UTM,
                       transform=from_origin(X0, Y0, 10, 10), tiled=True, blockxsize=1024, blockysize=1024,
                       sparse_ok=True):
        pass
    return path


def test_a_100000_px_stack_is_refused_before_any_read_and_skipped_in_a_folder(site, caplog):
    shutil.rmtree(_safes(site)[0])
    huge = _huge_stack(site / "s2" / STACK)
    assert huge.stat().st_size < 2_000_000
    tracemalloc.start()
    t = time.perf_counter()
    with pytest.raises(RasterDataError, match=r"100,000 x 100,000 pixels .*raster_limits.pixels") as exc:
        open_s2(huge)
    seconds, (_, peak) = time.perf_counter() - t, tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert exc.value.path == str(huge) and exc.value.field == "size"
    assert seconds < 5 and peak < 50 * 2**20  # refused from the header: no 20 GB band allocated
    handles.close_all()
    with caplog.at_level(logging.WARNING, logger="mmdomain_remote_sensing"):
        ds = SceneFolderDataset(site, "all")
    assert len(ds.scenes) == 1 and len(ds.skipped) == 1 and str(huge) in ds.skipped[0] and len(ds) > 0


def test_raster_limits_are_a_dataset_option(site):
    with pytest.raises(RasterDataError, match=r"raster_limits.pixels"):
        SceneFolderDataset(site, "all", raster_limits={"pixels": 32 * 32})  # every 64 px scene is past it
    handles.close_all()
    with pytest.raises(DataError, match="unknown ceiling"):
        SceneFolderDataset(site, "all", raster_limits={"pixel": 10})
    with pytest.raises(DataError, match="positive integer"):
        SceneFolderDataset(site, "all", raster_limits={"bands": 0})
    assert len(SceneFolderDataset(site, "all", raster_limits={"pixels": 64 * 64})) > 0


# -- metadata values ---------------------------------------------------------------------------------------


def _mtd(safe, pattern, repl, count=1):
    f = safe / "MTD_MSIL2A.xml"
    text, n = re.subn(pattern, repl, f.read_text(), count=count)
    assert n
    f.write_text(text)
    return f


@pytest.mark.parametrize("pattern, repl, field, why", [
    (r'(band_id="1">)-1000', r"\1abc", "BOA_ADD_OFFSET band_id=1", "not a number"),
    (r'(band_id="2">)-1000', r"\1", "BOA_ADD_OFFSET band_id=2", "not a number"),
    (r'(band_id="3">)-1000', r"\1nan", "BOA_ADD_OFFSET band_id=3", "out of range"),
    (r'(band_id="4">)-1000', r"\1-1e30", "BOA_ADD_OFFSET band_id=4", "out of range"),
    (r'band_id="1"', 'band_id="99"', "BOA_ADD_OFFSET", "not a Sentinel-2 band index"),
    (r'band_id="1"', 'band_id="-1"', "BOA_ADD_OFFSET", "not a Sentinel-2 band index"),
    (r"<PROCESSING_BASELINE>05.09", "<PROCESSING_BASELINE>", "PROCESSING_BASELINE", "not a processing baseline"),
    (r"<PROCESSING_BASELINE>05.09", "<PROCESSING_BASELINE>abc", "PROCESSING_BASELINE", "not a processing baseline"),
    (r">10000<", ">1e-45<", "BOA_QUANTIFICATION_VALUE", "out of range"),
    (r">10000<", ">0<", "BOA_QUANTIFICATION_VALUE", "out of range"),
    (r">10000<", ">inf<", "BOA_QUANTIFICATION_VALUE", "out of range"),
    (r">10000<", ">NaN<", "BOA_QUANTIFICATION_VALUE", "out of range"),
    (r">10000<", "><", "BOA_QUANTIFICATION_VALUE", "not a number"),
])
def test_bad_mtd_values_name_the_file_and_the_field(site, pattern, repl, field, why):
    safe = _safes(site)[0]
    mtd = _mtd(safe, pattern, repl)
    with pytest.raises(RasterDataError, match=why) as exc:
        open_s2(safe)
    assert exc.value.path == str(mtd) and exc.value.field == field


def test_mtd_that_is_not_xml_and_bad_mtd_in_a_folder_skip_that_scene(site, caplog):
    safe = _safes(site)[0]
    mtd = _mtd(safe, r"</n1:Level-2A_User_Product>", "")
    with pytest.raises(RasterDataError, match="not valid XML"):
        open_s2(safe)
    _one_scene_skipped(site, mtd, "not valid XML", caplog)


def test_stack_tags_are_checked_and_non_finite_dns_are_masked(tmp_path):
    f = s2_stack(tmp_path, offset_tag=False)
    with rasterio.open(f, "r+") as d:
        d.update_tags(BOA_QUANTIFICATION_VALUE="1e-45")
    with pytest.raises(RasterDataError, match="out of range") as exc:
        open_s2(f)
    assert exc.value.field == "tag BOA_QUANTIFICATION_VALUE"
    with pytest.raises(RasterDataError, match="s2_offset"):
        open_s2(f, offset=float("nan"))
    handles.close_all()
    dn = np.full((12, 32, 32), 1500, np.float32)
    dn[:, :4], dn[:, 4:8] = np.inf, np.nan
    g = write(tmp_path / "float" / STACK, dn, UTM, from_origin(X0, Y0, 10, 10))
    product = open_s2(g)
    refl, valid, _ = read_s2(product, product.grid())
    assert np.isfinite(refl).all() and not valid[:8].any() and valid[8:].all()
    assert refl[:, 8:] == pytest.approx(0.05)


# -- classes.json and dataset.json -------------------------------------------------------------------------


@pytest.mark.parametrize("spec, field, why", [
    ({"names": list("abcdef"), "values": [1, 2, 3, 4, 5, 300]}, "values", "300 is out of range"),
    ({"names": list("abcdef"), "values": [1, 2, 3, 4, 5, 255]}, "values", "255 is out of range"),
    ({"names": list("abcdef"), "values": [1, 2, 3, 4, 5, -1]}, "values", "out of range"),
    ({"names": list("abcdef"), "values": ["x", 2, 3, 4, 5, 6]}, "values", "not an integer"),
    ({"names": list("abcdef"), "values": [1, 2, 3, 4, 5, True]}, "values", "not an integer"),
    ({"names": list("abcdef"), "values": [1, 2, 3]}, "values", "one per name"),
    ({"names": list("abcdef"), "values": [1, 1, 3, 4, 5, 6]}, "values", "share a label value"),
    ({"names": ["a", "a", "b", "c", "d", "e"]}, "names", "distinct"),
    ({"names": "abcdef"}, None, "expected"),
])
def test_bad_classes_json_names_the_file_and_the_field(site, spec, field, why):
    f = site / "classes.json"
    f.write_text(json.dumps(spec))
    with pytest.raises(RasterDataError, match=why) as exc:
        SceneFolderDataset(site, "all")
    assert exc.value.path == str(f) and exc.value.field == field


def test_class_values_outside_the_label_rasters_dtype(site):
    for p in sorted((site / "labels").glob("*.tif")):  # the same land cover as int8 rasters
        with rasterio.open(p) as src:
            arr, profile = src.read(1).astype(np.int8), src.profile
        profile.update(dtype="int8", nodata=None)
        with rasterio.open(p, "w", **profile) as dst:
            dst.write(arr, 1)
    (site / "classes.json").write_text(json.dumps({"names": list("abcdef"), "values": [1, 2, 3, 4, 5, 200]}))
    with pytest.raises(RasterDataError, match=r"\[200\] cannot occur in .*int8: -128\.\.127") as exc:
        SceneFolderDataset(site, "all")
    assert exc.value.path == str(site / "classes.json")


@pytest.mark.parametrize("value, why", [(0, "0 is out of range"), (-16, "-16 is out of range"),
                                        ([16, 16], "one positive integer"), ("16", "one positive integer"),
                                        (16.5, "one positive integer"), (10**6, "out of range.*16,384")])
def test_bad_patch_size_in_dataset_json_or_options(site, value, why):
    f = site / "dataset.json"
    f.write_text(json.dumps({"patch_size": value}))
    with pytest.raises(RasterDataError, match=why) as exc:
        SceneFolderDataset(site, "all")
    assert exc.value.path == str(f) and exc.value.field == "patch_size"
    with pytest.raises(RasterDataError, match=why) as exc:
        SceneFolderDataset(site, "all", patch_size=value)
    assert exc.value.field == "patch_size"
    with pytest.raises(RasterDataError, match="stride"):
        SceneFolderDataset(site, "all", patch_size=16, stride=0)


# -- FIFOs, devices, paths out of the root -----------------------------------------------------------------


def test_fifos_are_refused_before_gdal_or_json_opens_them(site, template, caplog, tmp_path):
    safe = _safes(site)[0]
    b03 = _band(safe, "B03")
    b03.unlink()
    os.mkfifo(b03)
    with pytest.raises(RasterDataError, match="FIFO"):
        open_s2(safe)
    _one_scene_skipped(site, b03, "FIFO", caplog)
    for name in ("classes.json", "dataset.json"):
        d = shutil.copytree(template, tmp_path / name)
        (d / name).unlink()
        os.mkfifo(d / name)
        with pytest.raises(RasterDataError, match="FIFO") as exc:
            SceneFolderDataset(d, "all")
        assert exc.value.path == str(d / name)
    alone = tmp_path / "alone"
    alone.mkdir()
    os.mkfifo(alone / STACK)
    with pytest.raises(RasterDataError, match="FIFO"):
        open_s2(alone / STACK)


def test_a_symlink_to_dev_zero_is_refused(site, caplog, tmp_path):
    safe = _safes(site)[0]
    b04 = _band(safe, "B04")
    b04.unlink()
    b04.symlink_to("/dev/zero")
    _one_scene_skipped(site, b04, "outside the data root", caplog)
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / STACK).symlink_to("/dev/zero")
    with pytest.raises(RasterDataError, match="character device"):
        open_s2(tmp_path / "z" / STACK)  # a single file: no root to leave, still not a regular file


def test_paths_out_of_the_root_are_never_read(site, tmp_path, caplog):
    outside = tmp_path / "outside"
    outside.mkdir()
    safe = _safes(site)[0]
    b08 = _band(safe, "B08")
    shutil.move(b08, outside / b08.name)
    b08.symlink_to(outside / b08.name)  # the same valid JP2, but outside the site
    _one_scene_skipped(site, b08, "outside the data root", caplog)
    handles.close_all()
    shutil.move(outside / b08.name, b08)  # back in; now its sidecar (GDAL keeps a JP2's nodata there) leads out
    side = b08.with_name(b08.name + ".aux.xml")
    assert side.is_file()
    shutil.move(side, outside / side.name)
    side.symlink_to(outside / side.name)
    _one_scene_skipped(site, side, "outside the data root", caplog)
    side.unlink()
    shutil.move(outside / side.name, side)
    handles.close_all()
    label = sorted((site / "labels").glob("*.tif"))[0]  # scene 0's land cover
    shutil.move(label, outside / label.name)
    label.symlink_to(outside / label.name)
    ds = _one_scene_skipped(site, label, "outside the data root", caplog)
    assert all(s.label is None or s.label.resolve().is_relative_to(site) for s in ds.scenes)
    classes = site / "classes.json"
    shutil.move(classes, outside / "classes.json")
    classes.symlink_to(outside / "classes.json")
    with pytest.raises(RasterDataError, match="outside the data root") as exc:
        SceneFolderDataset(site, "all")
    assert exc.value.path == str(classes)


def test_a_symlinked_scene_folder_out_of_the_root_is_skipped(site, tmp_path, caplog):
    safe = _safes(site)[0]
    away = shutil.move(safe, tmp_path / safe.name)
    safe.symlink_to(away, target_is_directory=True)
    with caplog.at_level(logging.WARNING, logger="mmdomain_remote_sensing"):
        ds = SceneFolderDataset(site, "all")
    assert [s.id for s in ds.scenes] == [_safes(site)[1].stem] and "outside the data root" in ds.skipped[0]


# -- a folder where nothing, or only S1, is bad ------------------------------------------------------------


def test_every_scene_bad_raises_the_first_error(site):
    for safe in _safes(site):
        _truncate(_band(safe, "B02"))
    with pytest.raises(RasterDataError, match="truncated") as exc:
        SceneFolderDataset(site, "all")
    assert exc.value.path == str(_band(_safes(site)[0], "B02"))


def test_a_bad_s1_acquisition_is_skipped_and_its_scene_keeps_s2(site, caplog):
    vh = sorted((site / "s1").glob("*VH*.tif"))[0]
    _truncate(vh)
    with caplog.at_level(logging.WARNING, logger="mmdomain_remote_sensing"):
        ds = SceneFolderDataset(site, "all")
    assert len(ds.scenes) == 2 and len(ds.skipped) == 1 and str(vh) in ds.skipped[0]
    assert sum(s.s1 is None for s in ds.scenes) == 1 and describe(ds)["skipped"] == 1
    _all_samples_finite(ds)
