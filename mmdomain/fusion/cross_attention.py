"""Cross-attention fusion: a small transformer over one token per modality plus a CLS token.

Absent modalities are removed with a key-padding mask (the CLS token is never masked, so
a sample with one modality is fine). ``last_attention`` keeps the CLS token's attention
over the modality tokens (``[B, *S, M]``, heads averaged, last layer) for analysis.

``pattern_tokens=True`` adds, after the CLS token, a learned token for the sample's availability
pattern (one per subset of the modalities: ``2**M``, a table indexed by the presence bits), in
the spirit of missing-aware prompts (Lee et al., CVPR 2023): the head is told which modalities
it is missing instead of inferring it from what it can attend to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import FusionHead, channels_first, channels_last, mask_like

MAX_PATTERN_MODALITIES = 10  # pattern_tokens: a table of 2**M tokens


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor, pad: Tensor, want_weights: bool) -> tuple[Tensor, Tensor | None]:
        h = self.norm1(x)
        a, w = self.attn(h, h, h, key_padding_mask=pad, need_weights=want_weights, average_attn_weights=True)
        x = x + a
        return x + self.mlp(self.norm2(x)), w


class CrossAttentionFusion(FusionHead):
    def __init__(
        self, dims: dict[str, int], dim: int = 128, heads: int = 4, layers: int = 1, dropout: float = 0.1,
        pattern_tokens: bool = False,
    ):
        super().__init__(dims)
        if dim % heads:
            raise ValueError(f"cross_attention: dim ({dim}) must be divisible by heads ({heads})")
        if pattern_tokens and len(self.names) > MAX_PATTERN_MODALITIES:
            raise ValueError(f"cross_attention: pattern_tokens takes at most {MAX_PATTERN_MODALITIES} modalities "
                             f"(a token per subset); this model has {len(self.names)}")
        self.patterns = nn.Embedding(2 ** len(self.names), dim) if pattern_tokens else None
        if self.patterns is not None:
            nn.init.normal_(self.patterns.weight, std=0.02)
        self.out_dim = dim
        self.proj = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in self.dims.items()})
        self.type_embed = nn.Parameter(torch.randn(len(self.names), dim) * 0.02)
        self.cls = nn.Parameter(torch.zeros(dim))
        self.blocks = nn.ModuleList(_Block(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.last_attention: Tensor | None = None
        self.record_attention = False

    def forward(self, embeddings: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        tokens, masks = [], []
        for i, m in enumerate(self.names):
            x = channels_last(embeddings[m])
            mask = mask_like(present[m], x)
            x = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
            tokens.append(self.proj[m](x) + self.type_embed[i].to(x.dtype))
            masks.append(mask.expand(*x.shape[:-1], 1))
        lead = tokens[0].shape[:-1]  # [B, *S]
        seq = torch.stack(tokens, dim=-2).reshape(-1, len(self.names), self.out_dim)  # [N, M, dim]
        cls = self.cls.to(seq.dtype).expand(seq.shape[0], 1, -1)
        absent = ~torch.cat(masks, dim=-1).reshape(-1, len(self.names))
        lead_tokens = [cls]
        if self.patterns is not None:  # index = sum_i present_i * 2**i, the same for every cell of a row
            bits = torch.stack([present[m].long() << i for i, m in enumerate(self.names)], dim=1).sum(1)
            prompt = self.patterns(bits).to(seq.dtype)  # [B, dim]
            prompt = prompt.view(prompt.shape[0], *([1] * (len(lead) - 1)), -1).expand(*lead, -1)
            lead_tokens.append(prompt.reshape(-1, 1, self.out_dim))
        seq = torch.cat([*lead_tokens, seq], dim=1)
        skip = len(lead_tokens)
        pad = F.pad(absent, (skip, 0), value=False)  # CLS (and the pattern token) always attendable
        weights = None
        for j, block in enumerate(self.blocks):
            want = self.record_attention and j == len(self.blocks) - 1
            seq, weights = block(seq, pad, want)
        if weights is not None:
            self.last_attention = weights[:, 0, skip:].reshape(*lead, len(self.names)).detach()
        return channels_first(self.norm(seq[:, 0]).reshape(*lead, self.out_dim))
