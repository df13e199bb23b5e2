"""Calibration (mmdomain.tasks.calibration): ECE in every classification task's metrics, overall
and per pattern; temperatures per availability pattern fitted on the val split, kept in the
checkpoint, and refused for tasks they do not apply to."""

from __future__ import annotations

import json

import pytest
import torch

from mmdomain import ConfigError
from mmdomain.tasks.calibration import ALL, calibrate, check_calibration, fit_temperatures, temperatures_for
from mmdomain.tasks.classification import MulticlassTask, MultilabelTask


def overconfident(n: int, scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose softmax would be calibrated, multiplied by ``scale`` (>1: overconfident)."""
    g = torch.Generator().manual_seed(seed)
    true_logits = torch.randn(n, 3, generator=g) * 1.5
    target = torch.multinomial(true_logits.softmax(-1), 1, generator=g).squeeze(1)
    return true_logits * scale, target


def ece_of(task, logits, target, present=None) -> float:
    metrics = task.make_metrics()
    metrics.update(*task.metric_inputs(logits, target, present or {}))
    return float(metrics.compute()["ece"])


def test_a_pattern_gets_its_own_temperature_and_the_ece_drops():
    full, t_full = overconfident(600, 1.0, 0)  # calibrated as they are
    image, t_image = overconfident(600, 4.0, 1)  # 4x overconfident: the rows missing their report
    logits, target = torch.cat([full, image]), torch.cat([t_full, t_image])
    patterns = ["image+report"] * 600 + ["image"] * 600
    temps = temperatures_for(logits, target, patterns, multilabel=False, min_rows=30)
    assert set(temps) == {ALL, "image", "image+report"}
    assert 0.8 < temps["image+report"] < 1.25 and 3.0 < temps["image"] < 5.0
    assert temps["image+report"] < temps[ALL] < temps["image"]
    task = MulticlassTask(4, {}, num_classes=3)
    present = {"image": torch.ones(1200, dtype=torch.bool), "report": torch.arange(1200) < 600}
    before = ece_of(task, logits, target, present)
    task.calibration = check_calibration(temps)
    after = ece_of(task, logits, target, present)
    assert after < before / 2, (before, after)
    # AUROC ranks within each row's pattern the same; a pattern with too few rows falls back to "*"
    few = temperatures_for(logits[:620], target[:620], patterns[:620], multilabel=False, min_rows=30)
    assert "image" not in few and ALL in few


def test_multilabel_ece_skips_unknown_labels_and_calibrates():
    g = torch.Generator().manual_seed(2)
    true_logits = torch.randn(800, 2, generator=g)
    target = torch.bernoulli(true_logits.sigmoid(), generator=g).long()
    target[:, 1][torch.rand(800, generator=g) < 0.3] = -1  # uncertain: not scored
    task = MultilabelTask(4, {}, num_labels=2)
    before = ece_of(task, true_logits * 3, target)
    temps = temperatures_for(true_logits * 3, target, ["x"] * 800, multilabel=True)
    assert 2.2 < temps[ALL] < 4.0
    task.calibration = temps
    assert ece_of(task, true_logits * 3, target) < before / 2


def test_bad_calibration_values_are_refused():
    for bad, match in [({"*": 0.0}, "temperatures are numbers"), ({"*": "hot"}, "temperatures are numbers"),
                       ([1.0], "a table of pattern")]:
        with pytest.raises(ValueError, match=match):
            check_calibration(bad)


def test_fit_calibrates_and_the_checkpoint_keeps_it(registry, toy_site, tmp_path):
    from mmdomain.checkpoint import load_checkpoint
    from mmdomain.config import DataConfig, RunConfig, TrainConfig
    from mmdomain.training import build_dataset, evaluate, fit, make_loader

    logs: list[str] = []
    config = RunConfig(data=DataConfig(dataset="toy", root=toy_site),
                       train=TrainConfig(epochs=2, calibrate=True, out_dir=tmp_path / "run", progress=False))
    result = fit(config, registry, log=logs.append)
    report = json.loads((tmp_path / "run" / "calibration.json").read_text())
    assert ALL in report["temperatures"] and set(report["val_ece_before"]) == set(report["val_ece_after"])
    assert any(line.startswith("calibrated on the val split: temperature * ") for line in logs)
    epoch = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "ece" in epoch["overall"] and all("ece" in v for v in epoch["by_pattern"].values())

    model, _ = load_checkpoint(result.checkpoint, registry)
    assert model.task.calibration == report["temperatures"]
    val = make_loader(build_dataset(config, registry, "val"), model.modalities, 32, shuffle=False)
    assert evaluate(model, val)["overall"]["ece"] == pytest.approx(report["val_ece_after"]["overall"], abs=1e-6)
    # temperatures are fitted on the raw logits: fitting again on the calibrated model gives them back
    # the fitted temperature is the val NLL's minimum (40 val rows are too few for the ECE to show it)
    from mmdomain.tasks.calibration import _collect, _nll

    logits, target, _ = _collect(model, val, torch.device("cpu"))
    t = report["temperatures"][ALL]
    assert _nll(logits / t, target, False) <= _nll(logits, target, False) + 1e-6
    assert _nll(logits / t, target, False) <= min(_nll(logits / (t * f), target, False) for f in (0.8, 1.25)) + 1e-6
    calibrate(model, fit_temperatures(model, val))
    assert model.task.calibration == pytest.approx(report["temperatures"], abs=1e-3)
    assert model.config.task.options["calibration"] == model.task.calibration


def test_calibrate_is_refused_before_training_for_a_task_without_probabilities(registry, toy_site, tmp_path):
    from mmdomain.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from mmdomain.training import fit

    base = ModelConfig.model_validate(registry.dataset("toy").default_model)
    pre = base.model_copy(update={"task": base.task.model_copy(update={"name": "contrastive", "options": {}})})
    with pytest.raises(ConfigError, match="train.calibrate: temperature scaling applies to classification"):
        fit(RunConfig(data=DataConfig(dataset="toy", root=toy_site), model=pre,
                      train=TrainConfig(epochs=1, calibrate=True, out_dir=tmp_path / "x", progress=False)), registry)
    assert not (tmp_path / "x" / "model.safetensors").exists()
