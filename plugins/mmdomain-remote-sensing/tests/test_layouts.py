"""BigEarthNet v2 and SEN12MS layouts on tiny folders written here with rasterio (real CRSs)."""

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from rasterio.transform import from_origin

from mmdomain import DataError, get_registry
from mmdomain_remote_sensing.bands import BIGEARTHNET19, S2_ALL_BANDS, S2_BANDS, S2_RESOLUTION_M

from rs_rasters import write

UTM33 = "EPSG:32633"
TILE = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP"


def _ben(root, with_s1=(True, True, False)):
    x0, y0 = 500000.0, 5900000.0
    rows = []
    for k, has_s1 in enumerate(with_s1):
        pid = f"{TILE}_26_{57 + k}"
        folder = root / "BigEarthNet-S2" / TILE / pid
        for i, b in enumerate(S2_BANDS):
            r = S2_RESOLUTION_M[b]
            n = 1200 // r
            write(folder / f"{pid}_{b}.tif", np.full((n, n), 1000 + 100 * i + k, np.uint16), UTM33,
                  from_origin(x0 + 1200 * k, y0, r, r))
        s1n = f"S1A_IW_GRDH_1SDV_20170613T165043_33UUP_61_{39 + k}"
        if has_s1:
            for pol, v in (("VV", -12.0), ("VH", -19.0)):
                db = np.full((120, 120), v + k, np.float32)
                db[0, :5] = np.nan
                write(root / "BigEarthNet-S1" / "S1A_IW_GRDH_1SDV_20170613T165043" / s1n / f"{s1n}_{pol}.tif", db,
                      UTM33, from_origin(x0 + 1200 * k, y0, 10, 10))
        rows.append({"patch_id": pid, "labels": [BIGEARTHNET19[k], BIGEARTHNET19[18]],
                     "split": ("train", "validation", "test")[k % 3], "country": "Austria",
                     "s1_name": s1n if k != 2 else None})
    pd.DataFrame(rows).to_parquet(root / "metadata.parquet")
    return rows


def test_bigearthnet_v2_reads_patches_with_labels_and_absent_s1(tmp_path):
    rows = _ben(tmp_path)
    ds = get_registry().dataset("bigearthnet_v2").build(tmp_path, "all")
    assert len(ds) == 3 and [p.split for p in ds.patches] == ["train", "val", "test"]
    s = ds[0]
    assert s.inputs["s2"].shape == (12, 120, 120) and s.inputs["s1"].shape == (2, 120, 120)
    # DN / 10000, no offset (pre-04.00); B01 (60 m) and B05 (20 m) upsampled onto the 10 m patch
    assert float(s.inputs["s2"][0, 60, 60]) == pytest.approx(0.1, abs=1e-6)
    assert float(s.inputs["s2"][S2_BANDS.index("B12"), 0, 0]) == pytest.approx(0.21, abs=1e-6)
    assert torch.isfinite(s.inputs["s1"]).all() and float(s.inputs["s1"][1].median()) == pytest.approx(-19.0)
    assert s.target.tolist() == [1] + [0] * 17 + [1] and s.meta["country"] == "Austria"
    third = ds[2]
    assert set(third.inputs) == {"s2"} and "no S1" in third.meta["absent"]["s1"]
    assert len(get_registry().dataset("bigearthnet_v2").build(tmp_path, "val")) == 1
    offset = get_registry().dataset("bigearthnet_v2").build(tmp_path, "train", s2_offset=-1000)
    assert float(offset[0].inputs["s2"][0, 0, 0]) == pytest.approx(0.0, abs=1e-6)


def test_bigearthnet_v2_missing_s1_folder_is_absent_and_malformed_is_a_data_error(tmp_path):
    rows = _ben(tmp_path)
    shutil.rmtree(tmp_path / "BigEarthNet-S1" / "S1A_IW_GRDH_1SDV_20170613T165043" / rows[1]["s1_name"])
    ds = get_registry().dataset("bigearthnet_v2").build(tmp_path, "all")
    assert "not found" in ds.patches[1].absent["s1"] and set(ds[1].inputs) == {"s2"}
    (tmp_path / "BigEarthNet-S2" / TILE / rows[0]["patch_id"] / f"{rows[0]['patch_id']}_B8A.tif").unlink()
    with pytest.raises(DataError, match=r"missing band files \['B8A'\]"):
        ds[0]
    shutil.rmtree(tmp_path / "BigEarthNet-S2" / TILE / rows[2]["patch_id"])
    with pytest.raises(DataError, match="1 patch folder"):
        get_registry().dataset("bigearthnet_v2").build(tmp_path, "all")
    pd.DataFrame([{"patch_id": "x", "split": "train"}]).to_parquet(tmp_path / "metadata.parquet")
    with pytest.raises(DataError, match="missing columns"):
        get_registry().dataset("bigearthnet_v2").build(tmp_path, "all")


def _sen12ms(root, s1_missing=("1",)):
    roi = root / "ROIs1158_spring"
    for n, k in (("1", "30"), ("1", "31"), ("2", "7")):
        x0 = 600000.0 + 2560 * int(k)
        s2 = np.stack([np.full((64, 64), 100 * (i + 1), np.uint16) for i in range(13)])
        write(roi / f"s2_{n}" / f"ROIs1158_spring_s2_{n}_p{k}.tif", s2, "EPSG:32631", from_origin(x0, 4.5e6, 10, 10))
        if not (n in s1_missing and k == "31"):
            s1 = np.stack([np.full((64, 64), -11.0, np.float32), np.full((64, 64), -18.0, np.float32)])
            write(roi / f"s1_{n}" / f"ROIs1158_spring_s1_{n}_p{k}.tif", s1, "EPSG:32631",
                  from_origin(x0, 4.5e6, 10, 10))
        lc = np.zeros((4, 64, 64), np.uint8)
        lc[0] = 12  # croplands
        lc[0, :20] = 17  # water
        lc[0, 0, 0] = 0  # unknown
        write(roi / f"lc_{n}" / f"ROIs1158_spring_lc_{n}_p{k}.tif", lc, "EPSG:32631", from_origin(x0, 4.5e6, 10, 10))
    return roi


def test_sen12ms_drops_b10_maps_igbp_and_marks_missing_s1(tmp_path):
    _sen12ms(tmp_path)
    ds = get_registry().dataset("sen12ms").build(tmp_path, "all")
    assert len(ds) == 3 and [p.key for p in ds.patches][:2] == ["ROIs1158_spring_1_p30", "ROIs1158_spring_1_p31"]
    s = ds[0]
    assert s.inputs["s2"].shape == (12, 64, 64) and s.inputs["s1"].shape == (2, 64, 64)
    want = [(S2_ALL_BANDS.index(b) + 1) * 100 / 10000 for b in S2_BANDS]  # B10 (13th-band position 11) dropped
    assert s.inputs["s2"][:, 5, 5].tolist() == pytest.approx(want)
    assert 0.11 not in [round(v, 4) for v in s.inputs["s2"][:, 5, 5].tolist()]
    assert int(s.target) == 5 and s.meta["s2_level"] == "L1C"  # croplands is the majority
    assert set(ds[1].inputs) == {"s2"} and "s1_1" in ds[1].meta["absent"]["s1"]
    seg = get_registry().dataset("sen12ms").build(tmp_path, "all", task="segmentation")[0].target
    assert seg.shape == (64, 64) and int(seg[0, 0]) == 255 and int(seg[1, 0]) == 9 and int(seg[30, 0]) == 5
    splits = {p.key.rsplit("_p", 1)[0]: p.split for p in ds.patches}
    assert len(splits) == 2  # one split per scene


def test_sen12ms_malformed_folders_are_data_errors(tmp_path):
    roi = _sen12ms(tmp_path)
    (roi / "lc_2" / "ROIs1158_spring_lc_2_p7.tif").unlink()
    with pytest.raises(DataError, match="no land-cover file"):
        get_registry().dataset("sen12ms").build(tmp_path, "all")
    assert len(get_registry().dataset("sen12ms").build(tmp_path, "all", task="contrastive")) == 3
    (roi / "s2_1" / "stray.tif").write_bytes(b"x")
    with pytest.raises(DataError, match="not a SEN12MS patch name"):
        get_registry().dataset("sen12ms").build(tmp_path, "all", task="contrastive")
    with pytest.raises(DataError, match="no ROIs"):
        get_registry().dataset("sen12ms").build(roi, "all")
    bad = tmp_path / "b" / "ROIs1868_summer"
    write(bad / "s2_3" / "ROIs1868_summer_s2_3_p1.tif", np.zeros((12, 8, 8), np.uint16), "EPSG:32631",
          from_origin(0, 0, 10, 10))
    write(bad / "lc_3" / "ROIs1868_summer_lc_3_p1.tif", np.ones((4, 8, 8), np.uint8), "EPSG:32631",
          from_origin(0, 0, 10, 10))
    with pytest.raises(DataError, match="have 13 bands"):
        get_registry().dataset("sen12ms").build(tmp_path / "b", "all")


def test_available_answers_from_the_index_as_the_samples_have_it(tmp_path, monkeypatch):
    from mmdomain.data import availability_counts
    from mmdomain_remote_sensing import handles

    _ben(tmp_path / "ben")
    _sen12ms(tmp_path / "s12")
    for name, root in (("bigearthnet_v2", tmp_path / "ben"), ("sen12ms", tmp_path / "s12")):
        ds = get_registry().dataset(name).build(root, "all")
        have = [set(ds[i].inputs) for i in range(len(ds))]
        assert {"s1", "s2"} in have and {"s2"} in have, name  # both patterns occur
        handles.close_all()

        def refuse(path, *args, **kwargs):
            raise AssertionError(f"{name}: available() opened {path}")

        monkeypatch.setattr(handles.rasterio, "open", refuse)  # answered from the index: no raster is read
        assert [ds.available(i) for i in range(len(ds))] == have, name
        assert availability_counts(ds, ["s1", "s2"])[1] == {"s1+s2": have.count({"s1", "s2"}), "s2": 1}
        monkeypatch.undo()


def test_bigearthnet_reads_past_the_open_file_limit(tmp_path, monkeypatch):
    from mmdomain_remote_sensing import handles

    _ben(tmp_path)
    ds = get_registry().dataset("bigearthnet_v2").build(tmp_path, "all")
    first = [ds[i] for i in range(3)]
    handles.close_all()
    monkeypatch.setattr(handles, "MAX_OPEN_FILES", 5)  # fewer than one patch's 14 files
    for _ in range(2):
        for i, want in enumerate(first):
            s = ds[i]
            assert all(torch.equal(s.inputs[m], want.inputs[m]) for m in want.inputs)
            assert len(handles._files()) <= 5
    handles.close_all()
