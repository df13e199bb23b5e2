"""Fusion beats each single sensor on synthetic regions; modality dropout degrades gracefully.

Each model gets ~25-30 optimizer steps, so one draw (data + training seed) is noisy: single-sensor
macro AUROC ranges 0.62-0.81 across seeds. The claims are checked on the mean over several seeds
(``MMDOMAIN_RS_FUSION_SEEDS``, default 1,2,3), each seed its own region and training run."""

import json
import os

from mmdomain import get_registry
from mmdomain.config import RunConfig, parse
from mmdomain.training import evaluate, fit, make_loader

from mmdomain_remote_sensing.plugin import DEFAULT_MODEL
from mmdomain_remote_sensing.synthetic import generate

OPTS = {"patch_size": 16, "preload": True, "max_cloud": 0.5}
SEEDS = tuple(int(s) for s in os.environ.get("MMDOMAIN_RS_FUSION_SEEDS",
                                              os.environ.get("MMDOMAIN_RS_FUSION_SEED", "1,2,3")).split(","))
EPOCHS, BATCH, LR = 6, 64, 1e-2  # ~25-30 optimizer steps per model (was 10 epochs x batch 32: ~220 s)


def _model(modalities, dropout):
    m = json.loads(json.dumps(DEFAULT_MODEL))
    m["modalities"] = modalities
    m["encoders"] = {k: v for k, v in m["encoders"].items() if k in modalities}
    m["modality_dropout"] = dropout
    for enc in m["encoders"].values():
        enc["options"].update(width=8, depth=2, out_dim=32)
    m["fusion"]["options"]["out_dim"] = 32
    return m


def _fit(site, tmp_path, name, modalities, seed, dropout=0.0, epochs=EPOCHS):
    cfg = parse(RunConfig, {"data": {"dataset": "s2s1_scenes", "root": str(site), "options": OPTS},
                            "model": _model(modalities, dropout),
                            "train": {"epochs": epochs, "batch_size": BATCH, "lr": LR, "device": "cpu",
                                      "progress": False, "out_dir": str(tmp_path / name), "seed": seed}})
    return fit(cfg, get_registry(), log=lambda s: None)


def _scores(root, seed):
    """Held-out macro AUROC of each model trained on one region generated with ``seed``."""
    from mmdomain_remote_sensing.dataset import SceneFolderDataset

    site = generate(root / f"seed-{seed}", num_sites=1, seed=seed, scenes_per_site=2, size=256, patch_size=16)[0]
    runs = {"s2": _fit(site, root, "s2", ["s2"], seed), "s1": _fit(site, root, "s1", ["s1"], seed),
            "fusion": _fit(site, root, "fusion", ["s1", "s2"], seed),
            "fusion_dropout": _fit(site, root, "fusion_dropout", ["s1", "s2"], seed, dropout=0.4)}
    test = SceneFolderDataset(site, "all", **OPTS)
    test.patches = [p for p in test.patches if p.split != "train" and not p.absent]  # both sensors present
    res = {}
    for name, r in runs.items():
        loader = make_loader(test, r.model.modalities, 64, shuffle=False)
        res[name] = evaluate(r.model, loader)["overall"]["macro_auroc"]
        if name.startswith("fusion"):
            res[name + "|drop_s2"] = evaluate(r.model, loader, drop=["s2"])["overall"]["macro_auroc"]
    return res


def test_fusion_beats_single_sensor_and_dropout_degrades_gracefully(tmp_path):
    per_seed = {seed: _scores(tmp_path / str(seed), seed) for seed in SEEDS}
    res = {k: round(sum(r[k] for r in per_seed.values()) / len(per_seed), 4) for k in per_seed[SEEDS[0]]}
    print("\nRESULTS macro AUROC (held-out patches) per seed:", json.dumps(per_seed), "\nmean:", json.dumps(res))
    # the fusion model is the one trained with modality dropout (as the plugin's default model is):
    # measured (seeds 1 / 2 / 3 -> mean): S2-only 0.732 / 0.621 / 0.805 -> 0.719, S1-only 0.660 / 0.712 /
    # 0.667 -> 0.680, fusion+dropout 0.829 / 0.773 / 0.798 -> 0.800, S2 dropped 0.719 / 0.649 / 0.640 -> 0.669
    # (fusion without dropout, S2 dropped: 0.655 / 0.598 / 0.676 -> 0.643); a single seed's margin over
    # S2-only ranges -0.01 (seed 3) to +0.15 (seed 2)
    assert res["fusion_dropout"] > res["s2"] + 0.02, per_seed
    assert res["fusion_dropout"] > res["s1"] + 0.02, per_seed
    # S2 clouded out entirely: the dropout-trained model falls back on S1
    assert res["fusion_dropout|drop_s2"] > 0.6, per_seed
    assert res["fusion_dropout|drop_s2"] >= res["s1"] - 0.05 or \
        res["fusion_dropout|drop_s2"] > res["fusion|drop_s2"], per_seed
