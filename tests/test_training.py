"""mmdomain.training: the loop learns, reports per availability pattern, and fusion beats each modality."""

import json

import pytest

from mmdomain import ConfigError
from mmdomain.config import DataConfig, RunConfig, TrainConfig, single_modality
from mmdomain.training import fit


def test_fit_learns_and_reports_per_pattern(trained):
    first, last = trained.history[0], trained.history[-1]
    assert last["train_loss"] < first["train_loss"]
    assert last["overall"]["accuracy"] > 0.5  # 4 balanced classes: chance is 0.25
    patterns = set(last["by_pattern"])
    assert "toy_image+toy_note" in patterns and patterns <= {"toy_image", "toy_note", "toy_image+toy_note"}
    assert sum(v["n"] for v in last["by_pattern"].values()) == last["n"]
    lines = (trained.checkpoint.parent / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, 7))


def test_evaluate_with_a_modality_dropped(trained, registry, toy_site):
    from mmdomain.training import build_dataset, evaluate, make_loader

    model = trained.model
    config = RunConfig(data=DataConfig(dataset="toy", root=toy_site))
    loader = make_loader(build_dataset(config, registry, "val"), model.modalities, 32, shuffle=False)
    result = evaluate(model, loader, drop=["toy_note"])
    assert set(result["by_pattern"]) == {"toy_image"}
    assert result.get("skipped", 0) > 0  # samples that only had a note


def test_fusion_beats_each_single_modality(registry, toy_site, tmp_path):
    from mmdomain.config import ModelConfig

    base = ModelConfig.model_validate(registry.dataset("toy").default_model)
    scores = {}
    for label, model_cfg in {"fusion": base, "image": single_modality(base, "toy_image"),
                             "note": single_modality(base, "toy_note")}.items():
        run = RunConfig(data=DataConfig(dataset="toy", root=toy_site), model=model_cfg,
                        train=TrainConfig(epochs=6, lr=3e-3, out_dir=tmp_path / label, progress=False))
        scores[label] = fit(run, registry, log=lambda *_: None).history[-1]["overall"]["accuracy"]
    assert scores["fusion"] > scores["image"] and scores["fusion"] > scores["note"], scores


def test_unknown_component_in_config_lists_available(registry, toy_site, tmp_path):
    from mmdomain.config import ModelConfig
    from mmdomain.models import build_model

    cfg = ModelConfig.model_validate({**registry.dataset("toy").default_model, "fusion": {"name": "early"}})
    with pytest.raises(Exception, match="available: concat, cross_attention, gated, hemis, late, token_attention"):
        build_model(cfg, registry)
    cfg = ModelConfig.model_validate({**registry.dataset("toy").default_model,
                                      "encoders": {"toy_image": {"name": "bag_of_words"},
                                                   "toy_note": {"name": "bag_of_words"}}})
    with pytest.raises(ConfigError, match="encoders.toy_image.*'image'.*cnn"):
        build_model(cfg, registry)
