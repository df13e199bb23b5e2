"""Semantic segmentation: a 1x1 head on fused feature maps, upsampled to the label grid.

Needs encoders built with ``dense=True`` (the model does this for segmentation tasks).
Label value ``ignore_index`` (default 255) is not scored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor, nn

from .base import Task, softmax_kl

if TYPE_CHECKING:  # pragma: no cover - typing only
    from torchmetrics import MetricCollection


class SegmentationTask(Task):
    kind = "segmentation"

    def __init__(self, in_dim: int, modality_dims: dict[str, int], num_classes: int = 2, ignore_index: int = 255):
        super().__init__()
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.head = nn.Sequential(nn.Conv2d(in_dim, in_dim, 3, padding=1), nn.GELU(), nn.Conv2d(in_dim, num_classes, 1))
        self.output_size: tuple[int, int] | None = None

    def forward(self, fused: Tensor, embeddings: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        if fused.dim() != 4:
            raise ValueError("segmentation needs dense (feature-map) encoders; got fused features of shape "
                             f"{tuple(fused.shape)}")
        return self.head(fused)

    def _resize(self, output: Tensor, target: Tensor) -> Tensor:
        if output.shape[-2:] != target.shape[-2:]:
            output = F.interpolate(output.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
        return output.float()

    def loss(self, output: Tensor, target: Tensor | None, present: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(self._resize(output, target), target.long(), ignore_index=self.ignore_index)

    def sample_losses(self, output: Tensor, target: Tensor | None, present: dict[str, Tensor]) -> Tensor:
        raw = F.cross_entropy(self._resize(output, target), target.long(), ignore_index=self.ignore_index,
                              reduction="none")  # 0 where ignored
        scored = (target != self.ignore_index).flatten(1).sum(1)
        return raw.flatten(1).sum(1) / scored.clamp(min=1)

    def distill_losses(self, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        """The per-pixel KL of the softened class distributions, averaged over the pixels."""
        return softmax_kl(student, teacher, temperature, dim=1).flatten(1).mean(1)

    def make_metrics(self) -> MetricCollection:
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

        n = self.num_classes
        return MetricCollection(
            {
                "miou": MulticlassJaccardIndex(n, average="macro", ignore_index=self.ignore_index),
                "pixel_accuracy": MulticlassAccuracy(n, average="micro", ignore_index=self.ignore_index),
            }
        )

    def metric_inputs(self, output, target, present):
        return self._resize(output, target).argmax(1), target.long()
