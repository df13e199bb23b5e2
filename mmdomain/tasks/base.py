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
- ``make_metrics() -> torchmetrics.MetricCollection`` (fresh, un-updated)
- ``metric_inputs(output, target, present) -> (preds, target) | None`` (None: nothing to
  score in these rows, e.g. no pair for retrieval)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

    def make_metrics(self) -> MetricCollection:  # pragma: no cover
        raise NotImplementedError

    def metric_inputs(self, output: Any, target: Tensor | None, present: dict[str, Tensor]) -> Any:
        return output, target


def take(output: Any, index: Tensor) -> Any:
    """Rows ``index`` of a task output (tensor or dict of tensors)."""
    if isinstance(output, dict):
        return {k: v[index] for k, v in output.items()}
    return output[index]
