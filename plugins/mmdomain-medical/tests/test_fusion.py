"""Fusion beats each single modality on the synthetic site (labels need image AND indication).

Trains three models with the core ``fit`` (image-only, text-only, fusion; the dataset's
default encoders) and compares macro AUROC on the held-out test split. ~1-3 min on 2 cores.
"""

import copy

import pytest
import torch

from mmdomain import get_registry
from mmdomain.config import RunConfig, parse
from mmdomain.training import build_dataset, evaluate, fit, make_loader
from mmdomain_medical.plugin import DEFAULT_MODEL
from mmdomain_medical.synthetic import generate


def _train(root, mods, out_dir, epochs=10):
    m = copy.deepcopy(DEFAULT_MODEL)
    m["modalities"] = mods
    m["encoders"] = {k: v for k, v in m["encoders"].items() if k in mods}
    m["tokenizers"] = {k: v for k, v in m["tokenizers"].items() if k in mods}
    m["modality_dropout"] = 0.1 if len(mods) > 1 else 0.0
    cfg = parse(RunConfig, {"data": {"dataset": "medical", "root": str(root), "options": {"image_size": 64}},
                            "model": m, "train": {"epochs": epochs, "batch_size": 16, "lr": 2e-3, "seed": 0,
                                                  "out_dir": str(out_dir), "progress": False, "device": "cpu"}})
    reg = get_registry()
    result = fit(cfg, reg, log=lambda s: None)
    test = build_dataset(cfg, reg, "test")
    return evaluate(result.model, make_loader(test, result.model.modalities, 32, shuffle=False))


@pytest.mark.timeout(900)
def test_fusion_beats_each_modality(tmp_path):
    torch.set_num_threads(2)
    site = generate(tmp_path / "data", num_sites=1, seed=1, studies_per_site=300)[0]
    auroc = {name: _train(site, mods, tmp_path / name)["overall"]["macro_auroc"]
             for name, mods in [("image", ["dicom_image"]), ("text", ["report"]),
                                ("fusion", ["dicom_image", "report"])]}
    print("macro AUROC", auroc)
    assert auroc["fusion"] > auroc["image"] and auroc["fusion"] > auroc["text"], auroc
