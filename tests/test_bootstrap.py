"""Paired bootstrap of a model against others on one test set (mmdomain.bootstrap)."""

import pytest
import torch

from mmdomain import MMDomainError
from mmdomain.bootstrap import paired_bootstrap, predictions
from mmdomain.config import DataConfig, RunConfig, TrainConfig
from mmdomain.plugins import PluginManager
from mmdomain.tasks.classification import MulticlassTask, MultilabelTask
from mmdomain.training import evaluate, fit, make_loader


def _noisy(target: torch.Tensor, flip: float, seed: int) -> torch.Tensor:
    """One-hot class probabilities, a share ``flip`` of rows pointing at a wrong class."""
    g = torch.Generator().manual_seed(seed)
    wrong = torch.rand(len(target), generator=g) < flip
    cls = torch.where(wrong, (target + 1) % 3, target)
    return torch.nn.functional.one_hot(cls, 3).float() * 0.8 + 0.1


def test_a_clearly_better_model_wins_nearly_every_resample():
    task = MulticlassTask(8, {}, num_classes=3)
    target = torch.arange(300) % 3
    r = paired_bootstrap(task, "accuracy", _noisy(target, 0.05, 0),
                         {"a": _noisy(target, 0.4, 1), "b": _noisy(target, 0.35, 2)}, target, resamples=300)
    assert r["reference"] == pytest.approx(0.95, abs=0.04)
    assert r["margin"] == pytest.approx(r["reference"] - max(r["others"].values()))
    assert 0 < r["interval"][0] < r["margin"] < r["interval"][1]
    assert r["beats_all_share"] > 0.99 and r["resamples"] == 300


def test_a_tie_is_not_a_win_and_a_worse_model_loses():
    task = MulticlassTask(8, {}, num_classes=3)
    target = torch.arange(120) % 3
    good, bad = _noisy(target, 0.1, 0), _noisy(target, 0.5, 1)
    tie = paired_bootstrap(task, "accuracy", good, {"same": good.clone(), "bad": bad}, target, resamples=100)
    assert tie["margin"] == 0 and tie["interval"] == [0, 0] and tie["beats_all_share"] == 0
    worse = paired_bootstrap(task, "accuracy", bad, {"good": good}, target, resamples=100)
    assert worse["interval"][1] < 0 and worse["beats_all_share"] < 0.01


def test_multilabel_with_unknown_targets_and_undefined_resamples():
    task = MultilabelTask(8, {}, num_labels=2)
    target = torch.tensor([[1, -1], [0, -1], [1, -1], [0, 1], [0, 0], [1, -1]] * 3)
    ref = target.clamp(min=0).float() * 0.8 + 0.1
    other = torch.full_like(ref, 0.5)
    r = paired_bootstrap(task, "macro_auroc", ref, {"coin": other}, target, resamples=200)
    assert r["reference"] == pytest.approx(1.0) and r["others"]["coin"] == pytest.approx(0.5)
    assert r["resamples"] + r["undefined_resamples"] == 200 and r["beats_all_share"] == 1.0


def test_bad_input_is_a_clear_error():
    task = MulticlassTask(8, {}, num_classes=3)
    target = torch.arange(30) % 3
    p = _noisy(target, 0.1, 0)
    with pytest.raises(MMDomainError, match="unknown metric 'auc'.*accuracy"):
        paired_bootstrap(task, "auc", p, {"x": p}, target)
    with pytest.raises(MMDomainError, match="x has 29 predictions for 30 test rows"):
        paired_bootstrap(task, "accuracy", p, {"x": p[:29]}, target)
    with pytest.raises(MMDomainError, match="nothing to compare"):
        paired_bootstrap(task, "accuracy", p, {}, target)


def test_predictions_of_a_real_model_score_as_evaluate_does(tmp_path):
    registry = PluginManager().registry
    site = registry.synthetic("toy").generate(tmp_path, num_sites=1, seed=5, samples_per_site=80)[0]
    run = RunConfig(data=DataConfig(dataset="toy", root=site),
                    train=TrainConfig(epochs=1, batch_size=16, out_dir=tmp_path / "run", progress=False))
    model = fit(run, registry, log=lambda *_: None).model
    data = registry.dataset("toy").build(site, split="test")
    loader = make_loader(data, model.modalities, 16, shuffle=False)
    preds, target = predictions(model, loader)
    result = evaluate(model, loader)
    assert len(preds) == len(target) == result["n"] > 5
    m = model.task.make_metrics()["accuracy"]
    m.update(preds, target)
    assert float(m.compute()) == pytest.approx(result["overall"]["accuracy"], abs=1e-6)
