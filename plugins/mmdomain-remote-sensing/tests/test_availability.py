"""A scene folder's availability: ``available(i)`` answers from the index exactly what the samples
hold, ``describe`` counts the same patterns, and the index and the slice path apply one rule."""

from collections import Counter

import pytest

from mmdomain.data import availability_pattern, present_modalities
from mmdomain_remote_sensing import handles
from mmdomain_remote_sensing.dataset import SceneFolderDataset, describe
from mmdomain_remote_sensing.synthetic import generate


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    # clouds over much of the scene and S1 shifted off part of it: all three patterns occur
    return generate(tmp_path_factory.mktemp("avail"), num_sites=1, seed=4, scenes_per_site=1, size=128,
                    patch_size=16, cloud_cover=(0.3, 0.4), s1_shift=0.3)[0]


def test_available_equals_the_modalities_of_each_sample(site, monkeypatch):
    ds = SceneFolderDataset(site, "all", patch_size=16)
    have = [set(ds[i].inputs) for i in range(len(ds))]
    assert {frozenset(h) for h in have} == {frozenset({"s1", "s2"}), frozenset({"s1"}), frozenset({"s2"})}
    handles.close_all()

    def refuse(path, *args, **kwargs):
        raise AssertionError(f"available() opened {path}")

    monkeypatch.setattr(handles.rasterio, "open", refuse)  # answered from the index: no raster is read
    assert [set(ds.available(i)) for i in range(len(ds))] == have
    assert [present_modalities(ds, i) for i in range(len(ds))] == have
    monkeypatch.undo()
    assert describe(ds)["by_pattern"] == dict(sorted(Counter(availability_pattern(h) for h in have).items()))


def test_the_index_and_a_slice_of_the_same_pixels_decide_alike(site):
    # patch_size 8: the index's availability reads are at full resolution, the pixels a slice reads
    ds = SceneFolderDataset(site, "all", task="contrastive", patch_size=8, max_cloud=0.3)
    assert {tuple(sorted(p.absent)) for p in ds.patches} == {(), ("s1",), ("s2",)}
    for p in ds.patches[::5]:
        b = p.bounds
        s = ds[b[0]:b[2], b[1]:b[3]]
        assert s.meta["absent"] == p.absent and set(s.inputs) == set(ds.available(ds.patches.index(p)))
        assert s.meta["cloud_fraction"] == round(p.cloud, 4)
