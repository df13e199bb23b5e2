"""Early fusion: concatenate embeddings, a learned token standing in for each absent one."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import FusionHead, channels_first, channels_last, mask_like


class ConcatFusion(FusionHead):
    def __init__(self, dims: dict[str, int], out_dim: int = 256, dropout: float = 0.1):
        super().__init__(dims)
        self.out_dim = out_dim
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.zeros(d)) for m, d in self.dims.items()})
        self.proj = nn.Sequential(
            nn.Linear(sum(self.dims.values()), out_dim), nn.GELU(), nn.Dropout(dropout), nn.LayerNorm(out_dim)
        )

    def forward(self, embeddings: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        parts = []
        for m in self.names:
            x = channels_last(embeddings[m])
            token = self.missing[m].to(x.dtype)
            parts.append(torch.where(mask_like(present[m], x), x, token))
        return channels_first(self.proj(torch.cat(parts, dim=-1)))
