"""Fusion beats each single sensor on synthetic regions; modality dropout degrades gracefully."""

import json

import pytest

from mmdomain import get_registry
from mmdomain.config import RunConfig, parse
from mmdomain.training import evaluate, fit, make_loader

from mmdomain_remote_sensing.plugin import DEFAULT_MODEL
from mmdomain_remote_sensing.synthetic import generate

OPTS = {"patch_size": 16, "preload": True, "max_cloud": 0.5}


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("rs-fusion")
    return generate(root, num_sites=1, seed=1, scenes_per_site=2, size=256, patch_size=16)


def _model(modalities, dropout):
    m = json.loads(json.dumps(DEFAULT_MODEL))
    m["modalities"] = modalities
    m["encoders"] = {k: v for k, v in m["encoders"].items() if k in modalities}
    m["modality_dropout"] = dropout
    for enc in m["encoders"].values():
        enc["options"].update(width=8, depth=2, out_dim=32)
    m["fusion"]["options"]["out_dim"] = 32
    return m


def _fit(site, tmp_path, name, modalities, dropout=0.0, epochs=10):
    cfg = parse(RunConfig, {"data": {"dataset": "s2s1_scenes", "root": str(site), "options": OPTS},
                            "model": _model(modalities, dropout),
                            "train": {"epochs": epochs, "batch_size": 32, "lr": 5e-3, "device": "cpu",
                                      "progress": False, "out_dir": str(tmp_path / name), "seed": 0}})
    return fit(cfg, get_registry(), log=lambda s: None)


def test_fusion_beats_single_sensor_and_dropout_degrades_gracefully(sites, tmp_path):
    from mmdomain_remote_sensing.dataset import SceneFolderDataset

    site = sites[0]
    runs = {"s2": _fit(site, tmp_path, "s2", ["s2"]), "s1": _fit(site, tmp_path, "s1", ["s1"]),
            "fusion": _fit(site, tmp_path, "fusion", ["s1", "s2"]),
            "fusion_dropout": _fit(site, tmp_path, "fusion_dropout", ["s1", "s2"], dropout=0.4)}
    test = SceneFolderDataset(site, "all", **OPTS)
    test.patches = [p for p in test.patches if p.split != "train" and not p.absent]  # both sensors present
    res = {}
    for name, r in runs.items():
        loader = make_loader(test, r.model.modalities, 32, shuffle=False)
        res[name] = evaluate(r.model, loader)["overall"]["macro_auroc"]
        if name.startswith("fusion"):
            res[name + "|drop_s2"] = evaluate(r.model, loader, drop=["s2"])["overall"]["macro_auroc"]
    print("\nRESULTS macro AUROC (held-out patches):", json.dumps(res))
    # the fusion model is the one trained with modality dropout (as the plugin's default model is):
    # without it, fusion leans on S2 alone and only ties S2-only (measured 0.854 vs 0.856)
    assert res["fusion_dropout"] > res["s2"] + 0.02, res
    assert res["fusion_dropout"] > res["s1"] + 0.02, res
    # S2 clouded out entirely: the dropout-trained model falls back on S1
    assert res["fusion_dropout|drop_s2"] > 0.6, res
    assert res["fusion_dropout|drop_s2"] >= res["s1"] - 0.05 or \
        res["fusion_dropout|drop_s2"] > res["fusion|drop_s2"], res
