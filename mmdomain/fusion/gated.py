"""Gated fusion: each present modality scores itself; a softmax over present ones weighs them.

``last_gates`` keeps the weights of the latest forward (``[B, *S, M]`` in ``names`` order)
for analysis.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import FusionHead, channels_first, channels_last, mask_like


class GatedFusion(FusionHead):
    def __init__(self, dims: dict[str, int], out_dim: int = 256, dropout: float = 0.1):
        super().__init__(dims)
        self.out_dim = out_dim
        self.proj = nn.ModuleDict({m: nn.Linear(d, out_dim) for m, d in self.dims.items()})
        self.gate = nn.ModuleDict({m: nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 1)) for m, d in self.dims.items()})
        self.out = nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.LayerNorm(out_dim))
        self.last_gates: Tensor | None = None

    def forward(self, embeddings: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        values, scores, masks = [], [], []
        for m in self.names:
            x = channels_last(embeddings[m])
            mask = mask_like(present[m], x)
            x = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
            values.append(self.proj[m](x))
            scores.append(self.gate[m](x).float())
            masks.append(mask)
        mask = torch.cat(masks, dim=-1)  # [B, *S, M]
        score = torch.cat(scores, dim=-1).masked_fill(~mask, float("-inf"))
        any_present = mask.any(dim=-1, keepdim=True)
        weights = torch.where(any_present, score, torch.zeros_like(score)).softmax(dim=-1)
        weights = torch.where(mask, weights, torch.zeros_like(weights))
        self.last_gates = weights.detach()
        fused = (torch.stack(values, dim=-1) * weights.unsqueeze(-2).to(values[0].dtype)).sum(-1)
        return channels_first(self.out(fused))
