"""Early fusion: concatenate embeddings, a learned token standing in for each absent one."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import FusionHead, MissingToken, channels_first, channels_last, upgrade_token_names


class ConcatFusion(FusionHead):
    def __init__(self, dims: dict[str, int], out_dim: int = 256, dropout: float = 0.1):
        super().__init__(dims)
        self.out_dim = out_dim
        self.missing = nn.ModuleDict({m: MissingToken(d) for m, d in self.dims.items()})
        self.proj = nn.Sequential(
            nn.Linear(sum(self.dims.values()), out_dim), nn.GELU(), nn.Dropout(dropout), nn.LayerNorm(out_dim)
        )

    def forward(self, embeddings: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        parts = [self.missing[m](channels_last(embeddings[m]), present[m]) for m in self.names]
        return channels_first(self.proj(torch.cat(parts, dim=-1)))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        mine = {k: state_dict.pop(k) for k in [k for k in state_dict if k.startswith(f"{prefix}missing.")]}
        state_dict.update(upgrade_token_names(mine))  # older checkpoints: each token a bare parameter
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
