"""Multi-class and multi-label classification heads on the fused features.

Multi-label targets use ``-1`` for "unknown / uncertain, do not score" (the plugin's
uncertainty policy decides which labels become -1); those entries add no loss and are
ignored by the metrics. Both report expected calibration error (``ece``) beside the ranking
metrics and take per-pattern temperatures (``calibration``, see ``calibration.py``).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Task, softmax_kl
from .calibration import check_calibration, row_temperatures

ECE_BINS = 15  # expected calibration error: equal-width confidence bins, L1

if TYPE_CHECKING:  # pragma: no cover - typing only
    from torchmetrics import MetricCollection

    from .metrics import KnownLabelMacro  # noqa: F401 - found through __getattr__ below


def __getattr__(name: str) -> Any:
    """``KnownLabelMacro`` lives in ``.metrics`` (torchmetrics is imported on first use)."""
    if name == "KnownLabelMacro":
        from .metrics import KnownLabelMacro

        return KnownLabelMacro
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _pool(x: Tensor) -> Tensor:
    return x.flatten(2).mean(-1) if x.dim() > 2 else x


def _scaled(output: Tensor, calibration: dict[str, float] | None, present: dict[str, Tensor]) -> Tensor:
    """Logits divided by each row's temperature (``calibration``: per availability pattern)."""
    output = output.float()
    t = row_temperatures(calibration, present, output)
    return output if t is None else output / t


class MulticlassTask(Task):
    kind = "classification"

    def __init__(self, in_dim: int, modality_dims: dict[str, int], num_classes: int = 2, dropout: float = 0.1,
                 label_smoothing: float = 0.0, calibration: dict[str, float] | None = None):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"multiclass: num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.calibration = check_calibration(calibration)
        self.label_smoothing = label_smoothing
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_classes))

    def forward(self, fused: Tensor, embeddings: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        return self.head(_pool(fused))

    def loss(self, output: Tensor, target: Tensor | None, present: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(output.float(), target.long(), label_smoothing=self.label_smoothing)

    def sample_losses(self, output: Tensor, target: Tensor | None, present: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(output.float(), target.long(), label_smoothing=self.label_smoothing, reduction="none")

    def unimodal_head(self, in_dim: int) -> nn.Module:
        return nn.Linear(in_dim, self.num_classes)

    def distill_losses(self, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        return softmax_kl(student, teacher, temperature)

    def make_metrics(self) -> MetricCollection:
        from torchmetrics import MetricCollection
        from torchmetrics.classification import (MulticlassAccuracy, MulticlassAUROC, MulticlassCalibrationError,
                                                 MulticlassF1Score)

        n = self.num_classes
        return MetricCollection(
            {
                "accuracy": MulticlassAccuracy(n, average="micro"),
                "macro_f1": MulticlassF1Score(n, average="macro"),
                "macro_auroc": MulticlassAUROC(n, average="macro"),
                "ece": MulticlassCalibrationError(n, n_bins=ECE_BINS, norm="l1"),
            }
        )

    def metric_inputs(self, output, target, present):
        return _scaled(output, self.calibration, present).softmax(-1), target.long()


class MultilabelTask(Task):
    kind = "classification"

    def __init__(self, in_dim: int, modality_dims: dict[str, int], num_labels: int = 2, dropout: float = 0.1,
                 pos_weight: list[float] | None = None, labels: list[str] | None = None,
                 calibration: dict[str, float] | None = None):
        super().__init__()
        self.calibration = check_calibration(calibration)
        if num_labels < 1:
            raise ValueError(f"multilabel: num_labels must be >= 1, got {num_labels}")
        if labels is not None and len(labels) != num_labels:
            raise ValueError(f"multilabel: {len(labels)} label names for num_labels={num_labels}")
        self.num_labels = num_labels
        self.labels = labels
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_labels))
        self.register_buffer(
            "pos_weight", torch.tensor(pos_weight, dtype=torch.float32) if pos_weight else None, persistent=False
        )

    def forward(self, fused: Tensor, embeddings: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        return self.head(_pool(fused))

    def _known_losses(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        target = target.float()
        known = target >= 0
        raw = F.binary_cross_entropy_with_logits(
            output.float(), target.clamp(min=0), pos_weight=self.pos_weight, reduction="none"
        )
        return raw * known, known

    def loss(self, output: Tensor, target: Tensor | None, present: dict[str, Tensor]) -> Tensor:
        raw, known = self._known_losses(output, target)
        return raw.sum() / known.sum().clamp(min=1)

    def sample_losses(self, output: Tensor, target: Tensor | None, present: dict[str, Tensor]) -> Tensor:
        raw, known = self._known_losses(output, target)
        return raw.sum(1) / known.sum(1).clamp(min=1)

    def unimodal_head(self, in_dim: int) -> nn.Module:
        return nn.Linear(in_dim, self.num_labels)

    def distill_losses(self, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        """Each label's Bernoulli KL of the softened probabilities, averaged over labels, x ``T**2``."""
        t = float(temperature)
        s, p = student.float() / t, torch.sigmoid(teacher.float() / t)
        entropy = F.binary_cross_entropy_with_logits(teacher.float() / t, p, reduction="none")
        cross = F.binary_cross_entropy_with_logits(s, p, reduction="none")
        return (cross - entropy).mean(1) * t * t

    def make_metrics(self) -> MetricCollection:
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MultilabelF1Score
        from torchmetrics.functional.classification import (binary_auroc, binary_average_precision,
                                                            binary_calibration_error)

        from .metrics import KnownLabelMacro

        n = self.num_labels
        return MetricCollection(
            {
                "macro_auroc": KnownLabelMacro(binary_auroc),
                "macro_ap": KnownLabelMacro(binary_average_precision),
                "macro_f1": MultilabelF1Score(n, average="macro", ignore_index=-1),
                "ece": KnownLabelMacro(partial(binary_calibration_error, n_bins=ECE_BINS, norm="l1")),
            }
        )

    def metric_inputs(self, output, target, present):
        return _scaled(output, self.calibration, present).sigmoid(), target.long()
