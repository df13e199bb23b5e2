"""A task is a head on the fused features plus its loss and metrics.

``TaskSpec.build(in_dim, modality_dims, **options)`` returns a ``Task``:

- ``forward(fused, embeddings, present) -> output`` (a tensor, or a dict of tensors
  for contrastive tasks; dim 0 is always the batch)
- ``loss(output, target, present) -> scalar tensor``
- ``sample_losses(output, target, present) -> [B]`` (optional): each sample's loss on its own,
  for per-sample-gradient DP (local DP-SGD); a loss normalised over the batch couples samples
- ``unimodal_head(in_dim) -> nn.Module | None`` (optional): a head mapping one modality's embedding
  ``[B, in_dim]`` to an output ``sample_losses`` takes, for the unimodal auxiliary losses of
  ``balance.aux_weight`` (``mmdomain.models.balance``); None (the default): the task has none
- ``distill_losses(student, teacher, temperature) -> [B]`` (optional): each sample's distillation
  loss of the student's output toward the teacher's, for ``missing.distill_weight``
  (``mmdomain.models.missing``)
- ``make_metrics() -> torchmetrics.MetricCollection`` (fresh, un-updated)
- ``metric_inputs(output, target, present) -> (preds, target) | None`` (None: nothing to
  score in these rows, e.g. no pair for retrieval)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:  # pragma: no cover - typing only; torchmetrics is imported where metrics are built
    from torchmetrics import MetricCollection


class Task(nn.Module):
    kind: str = "classification"
    needs_target: bool = True

    def loss(self, output: Any, target: Tensor | None, present: dict[str, Tensor]) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def sample_losses(self, output: Any, target: Tensor | None, present: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no per-sample loss")

    def unimodal_head(self, in_dim: int) -> nn.Module | None:
        return None

    def distill_losses(self, student: Any, teacher: Any, temperature: float) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no distillation loss")

    def make_metrics(self) -> MetricCollection:  # pragma: no cover
        raise NotImplementedError

    def metric_inputs(self, output: Any, target: Tensor | None, present: dict[str, Tensor]) -> Any:
        return output, target


def softmax_kl(student: Tensor, teacher: Tensor, temperature: float, dim: int = -1) -> Tensor:
    """``KL(softmax(teacher/T) || softmax(student/T)) * T**2`` over ``dim``, per position (Hinton et
    al. 2015: the ``T**2`` keeps the gradients' scale independent of the temperature)."""
    t = float(temperature)
    kl = F.kl_div(F.log_softmax(student.float() / t, dim), F.log_softmax(teacher.float() / t, dim),
                  log_target=True, reduction="none")
    return kl.sum(dim) * t * t


def take(output: Any, index: Tensor) -> Any:
    """Rows ``index`` of a task output (tensor or dict of tensors)."""
    if isinstance(output, dict):
        return {k: v[index] for k, v in output.items()}
    return output[index]
