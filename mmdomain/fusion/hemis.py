"""HeMIS-style fusion (Havaei et al., "HeMIS: Hetero-Modal Image Segmentation", MICCAI 2016):
each modality is projected to a common space, and the head sees the mean and the variance of
the projections over the modalities a sample has. Both moments are defined for any non-empty
subset (one modality: its projection and a zero variance), so one head serves every availability
pattern with no token standing in for an absent modality, and inference with fewer modalities
than training needs nothing learned for the pattern. A row with no modality gets zeros.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import FusionHead, channels_first, channels_last, mask_like


class HeMISFusion(FusionHead):
    def __init__(self, dims: dict[str, int], dim: int = 128, out_dim: int = 256, dropout: float = 0.1):
        super().__init__(dims)
        self.out_dim = out_dim
        self.proj = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, dim), nn.GELU()) for m, d in self.dims.items()})
        self.out = nn.Sequential(nn.Linear(2 * dim, out_dim), nn.GELU(), nn.Dropout(dropout), nn.LayerNorm(out_dim))

    def forward(self, embeddings: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        total = square = count = None
        for m in self.names:
            x = channels_last(embeddings[m])
            mask = mask_like(present[m], x)
            zero = torch.zeros((), dtype=x.dtype, device=x.device)
            h = torch.where(mask, self.proj[m](torch.where(mask, x, zero)), zero)  # absent: exactly 0
            n = mask.to(h.dtype)
            total, square, count = (h, h * h, n) if total is None else (total + h, square + h * h, count + n)
        count = count.clamp(min=1)
        mean = total / count
        var = (square / count - mean * mean).clamp(min=0)  # population variance: 0 for one modality
        return channels_first(self.out(torch.cat([mean, var], dim=-1)))
