"""Fusion beats each single sensor on synthetic regions; modality dropout degrades gracefully."""

import json
import os

import pytest

from mmdomain import get_registry
from mmdomain.config import RunConfig, parse
from mmdomain.training import evaluate, fit, make_loader

from mmdomain_remote_sensing.plugin import DEFAULT_MODEL
from mmdomain_remote_sensing.synthetic import generate

OPTS = {"patch_size": 16, "preload": True, "max_cloud": 0.5}


SEED = int(os.environ.get("MMDOMAIN_RS_FUSION_SEED", "1"))  # data and training seed (re-run with others)
EPOCHS, BATCH, LR = 6, 64, 1e-2  # ~30 optimizer steps per model (was 10 epochs x batch 32: ~220 s)


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("rs-fusion")
    return generate(root, num_sites=1, seed=SEED, scenes_per_site=2, size=256, patch_size=16)


def _model(modalities, dropout):
    m = json.loads(json.dumps(DEFAULT_MODEL))
    m["modalities"] = modalities
    m["encoders"] = {k: v for k, v in m["encoders"].items() if k in modalities}
    m["modality_dropout"] = dropout
    for enc in m["encoders"].values():
        enc["options"].update(width=8, depth=2, out_dim=32)
    m["fusion"]["options"]["out_dim"] = 32
    return m


def _fit(site, tmp_path, name, modalities, dropout=0.0, epochs=EPOCHS):
    cfg = parse(RunConfig, {"data": {"dataset": "s2s1_scenes", "root": str(site), "options": OPTS},
                            "model": _model(modalities, dropout),
                            "train": {"epochs": epochs, "batch_size": BATCH, "lr": LR, "device": "cpu",
                                      "progress": False, "out_dir": str(tmp_path / name), "seed": SEED}})
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
        loader = make_loader(test, r.model.modalities, 64, shuffle=False)
        res[name] = evaluate(r.model, loader)["overall"]["macro_auroc"]
        if name.startswith("fusion"):
            res[name + "|drop_s2"] = evaluate(r.model, loader, drop=["s2"])["overall"]["macro_auroc"]
    print("\nRESULTS macro AUROC (held-out patches):", json.dumps(res))
    # the fusion model is the one trained with modality dropout (as the plugin's default model is):
    # measured (seed 1 / 2): S2-only 0.711 / 0.740, S1-only 0.621 / 0.668, fusion+dropout 0.754 / 0.810,
    # S2 dropped 0.611 / 0.694 (fusion without dropout, S2 dropped: 0.624 / 0.599)
    assert res["fusion_dropout"] > res["s2"] + 0.02, res
    assert res["fusion_dropout"] > res["s1"] + 0.02, res
    # S2 clouded out entirely: the dropout-trained model falls back on S1
    assert res["fusion_dropout|drop_s2"] > 0.6, res
    assert res["fusion_dropout|drop_s2"] >= res["s1"] - 0.05 or \
        res["fusion_dropout|drop_s2"] > res["fusion|drop_s2"], res
