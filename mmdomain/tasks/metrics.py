"""The tasks' own torchmetrics ``Metric`` classes.

Imported on first use (``Task.make_metrics``, or ``KnownLabelMacro`` / ``RetrievalRecall`` looked
up on ``mmdomain.tasks`` and its modules): torchmetrics pulls in torchvision and much more, which
registering the built-in tasks (``plugins list``, ``--help``) must not pay for.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class KnownLabelMacro(Metric):
    """Macro average of a binary metric over the labels that are defined on the rows seen:
    those with at least one known positive and one known negative (targets of -1 are unknown).
    torchmetrics' multilabel AUROC/AP fail outright when one label is never known."""

    full_state_update = False

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor) -> None:
        self.preds.append(preds.detach().float())
        self.target.append(target.detach().long())

    def compute(self) -> Tensor:
        if not self.preds:
            return torch.tensor(float("nan"))
        preds, target = torch.cat(self.preds), torch.cat(self.target)
        values = []
        for j in range(target.shape[1]):
            known = target[:, j] >= 0
            t = target[known, j]
            if t.numel() and bool((t == 1).any()) and bool((t == 0).any()):
                values.append(self.fn(preds[known, j], t))
        return torch.stack(values).mean() if values else torch.tensor(float("nan"))


class RetrievalRecall(Metric):
    """Recall@k for cross-modal retrieval over every pair seen (a -> b and b -> a averaged)."""

    full_state_update = False

    def __init__(self, k: int):
        super().__init__()
        self.k = k
        self.add_state("a", default=[], dist_reduce_fx="cat")
        self.add_state("b", default=[], dist_reduce_fx="cat")

    def update(self, preds: dict[str, Tensor], target: None = None) -> None:
        a, b = preds.values()
        self.a.append(a.detach().float())
        self.b.append(b.detach().float())

    def compute(self) -> Tensor:
        if not self.a:
            return torch.tensor(float("nan"))
        a, b = torch.cat(self.a), torch.cat(self.b)
        sim = a @ b.T
        truth = torch.arange(len(a), device=sim.device)
        k = min(self.k, len(a))
        hit_ab = (sim.topk(k, dim=1).indices == truth[:, None]).any(1).float().mean()
        hit_ba = (sim.T.topk(k, dim=1).indices == truth[:, None]).any(1).float().mean()
        return (hit_ab + hit_ba) / 2
