"""Late fusion: a masked, renormalised average of per-modality projections.

With a linear task head after it this is exactly the average of per-modality logits
over the modalities a sample has.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import FusionHead, channels_first, channels_last, mask_like


class LateFusion(FusionHead):
    def __init__(self, dims: dict[str, int], out_dim: int = 256, dropout: float = 0.1):
        super().__init__(dims)
        self.out_dim = out_dim
        self.branches = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(d, out_dim), nn.GELU(), nn.Dropout(dropout)) for m, d in self.dims.items()}
        )

    def forward(self, embeddings: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        total, count = None, None
        for m in self.names:
            y = self.branches[m](channels_last(embeddings[m]))
            mask = mask_like(present[m], y)
            y = torch.where(mask, y, torch.zeros((), dtype=y.dtype, device=y.device))
            total = y if total is None else total + y
            count = mask.to(y.dtype) if count is None else count + mask.to(y.dtype)
        return channels_first(total / count.clamp(min=1.0))
