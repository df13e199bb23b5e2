"""mmdomain.tasks: losses and metrics of each task."""

import pytest
import torch

from mmdomain.tasks import ContrastiveTask, MultilabelTask, SegmentationTask


def test_multilabel_ignores_unknown_labels():
    task = MultilabelTask(8, {}, num_labels=3)
    out = torch.tensor([[5.0, -5.0, 100.0]])
    assert task.loss(out, torch.tensor([[1, 0, -1]]), {}).item() < 0.01  # the wild logit is not scored
    assert task.loss(out, torch.tensor([[1, 0, 0]]), {}).item() > 10


def test_contrastive_loss_and_recall():
    task = ContrastiveTask(8, {"a": 4, "b": 4})
    emb = torch.eye(4)
    out = task(None, {"a": emb, "b": emb}, {})
    present = {"a": torch.ones(4, dtype=torch.bool), "b": torch.tensor([True, True, True, False])}
    assert torch.isfinite(task.loss(out, None, present))
    metrics = task.make_metrics()
    preds, _ = task.metric_inputs(out, None, present)
    metrics.update(preds)
    values = metrics.compute()
    assert set(values) == {"recall@1", "recall@5", "recall@10"}
    assert 0.0 <= float(values["recall@1"]) <= 1.0 and float(values["recall@10"]) == 1.0


def test_segmentation_resizes_to_label_grid():
    task = SegmentationTask(6, {}, num_classes=3)
    out = task(torch.randn(2, 6, 4, 4), {}, {})
    target = torch.randint(0, 3, (2, 16, 16))
    target[0, 0, 0] = 255
    assert torch.isfinite(task.loss(out, target, {}))
    preds, tgt = task.metric_inputs(out, target, {})
    assert preds.shape == (2, 16, 16)


def test_metrics_undefined_on_a_subset_are_left_out_not_fatal():
    from mmdomain.training import _compute

    task = MultilabelTask(8, {}, num_labels=3)
    metrics = task.make_metrics()
    metrics.update(*task.metric_inputs(torch.randn(2, 3), torch.tensor([[-1, 1, 0], [-1, 0, 1]]), {}))
    values = _compute(metrics)  # label 0 is never known: torchmetrics' multilabel AUROC/AP raise on it
    assert set(values) == {"macro_auroc", "macro_ap", "macro_f1", "ece"}


def test_known_label_macro_matches_per_label_auroc():
    def roc_auc_score(t, p):  # probability that a positive outranks a negative (Mann-Whitney)
        pos, neg = p[t == 1], p[t == 0]
        return float(((pos[:, None] > neg[None, :]).float().mean()))

    from torchmetrics.functional.classification import binary_auroc

    from mmdomain.tasks.classification import KnownLabelMacro

    g = torch.Generator().manual_seed(0)
    preds, target = torch.rand(40, 3, generator=g), torch.randint(0, 2, (40, 3), generator=g)
    target[:10, 1] = -1
    target[:, 2] = 0  # never positive: undefined, left out of the macro mean
    metric = KnownLabelMacro(binary_auroc)
    metric.update(preds[:20], target[:20])
    metric.update(preds[20:], target[20:])
    keep = target[:, 1] >= 0
    expected = (roc_auc_score(target[:, 0], preds[:, 0]) + roc_auc_score(target[keep, 1], preds[keep, 1])) / 2
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-6)
