"""Cross-modal contrastive alignment (symmetric InfoNCE) with retrieval Recall@k.

Works on the per-modality embeddings, not on the fused features: rows where both
modalities of the pair are present are positives of each other, every other row in
the batch a negative. Needs no target.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Task

if TYPE_CHECKING:  # pragma: no cover - typing only
    from torchmetrics import MetricCollection

    from .metrics import RetrievalRecall  # noqa: F401 - found through __getattr__ below


def __getattr__(name: str) -> Any:
    """``RetrievalRecall`` lives in ``.metrics`` (torchmetrics is imported on first use)."""
    if name == "RetrievalRecall":
        from .metrics import RetrievalRecall

        return RetrievalRecall
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ContrastiveTask(Task):
    kind = "contrastive"
    needs_target = False

    def __init__(self, in_dim: int, modality_dims: dict[str, int], pair: list[str] | None = None,
                 proj_dim: int = 128, temperature: float = 0.07, ks: tuple[int, ...] = (1, 5, 10)):
        super().__init__()
        pair = sorted(pair or modality_dims)
        if len(pair) != 2 or any(m not in modality_dims for m in pair):
            raise ValueError(f"contrastive: pair must name two of the model's modalities {sorted(modality_dims)}; "
                             f"got {pair}")
        self.pair = pair
        self.ks = tuple(ks)
        self.proj = nn.ModuleDict({m: nn.Linear(modality_dims[m], proj_dim) for m in pair})
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)))

    def forward(self, fused: Tensor, embeddings: dict[str, Tensor], present: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for m in self.pair:
            e = embeddings[m]
            e = e.flatten(2).mean(-1) if e.dim() > 2 else e
            out[m] = F.normalize(self.proj[m](e).float(), dim=-1)
        return out

    def _paired(self, present: dict[str, Tensor]) -> Tensor:
        a, b = self.pair
        return present[a] & present[b]

    def loss(self, output: dict[str, Tensor], target: Tensor | None, present: dict[str, Tensor]) -> Tensor:
        both = self._paired(present)
        a, b = (output[m][both] for m in self.pair)
        if len(a) < 2:  # nothing to contrast: a zero that keeps the graph connected
            return sum(v.sum() for v in output.values()) * 0.0
        logits = self.log_scale.exp().clamp(max=100) * a @ b.T
        labels = torch.arange(len(a), device=a.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    def make_metrics(self) -> MetricCollection:
        from torchmetrics import MetricCollection

        from .metrics import RetrievalRecall

        return MetricCollection({f"recall@{k}": RetrievalRecall(k) for k in self.ks})

    def metric_inputs(self, output, target, present):
        both = self._paired(present)
        if not bool(both.any()):
            return None
        return {m: output[m][both] for m in self.pair}, None
