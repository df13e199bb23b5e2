"""Token-level cross-modal attention: every token of one modality (an image feature-map cell, a
report token, an S1 or S2 patch cell) attends to the tokens of the other modalities, so a report
phrase can be related to an image region, and the reverse.

The head takes what the encoders return before pooling (``EncoderSpec.supports_tokens``: their
``tokens(x) -> (seq [B, T, D], valid [B, T])``), which ``FusionModel`` passes as ``tokens``. Each
layer is bidirectional cross-attention on ``torch.nn.functional.scaled_dot_product_attention``
with a boolean key-padding mask: a query of modality ``a`` attends to the valid tokens of every
other present modality (never to its own: the cost is the cross pairs only) and to one learned
null key (always there, so a row with one modality, whose queries have nothing else to attend to,
stays defined). Absent modalities and padded text are thus removed from every key set, exactly (a
masked key gets weight 0), and the values at those positions are zeroed before anything reads
them, so no fill value (not even NaN) reaches the output. The fused vector is the mean over the
present modalities of each one's mean over its valid tokens, normalised.

Cost: one linear projection per modality into ``dim`` (64 by default), then per layer the q / kv
/ out projections and, with ``mlp_ratio`` > 0, an MLP. At hundreds of tokens these per-token
linears, not the attention, dominate the step (``bench/fusion_step.py``), hence the small
default ``dim`` and no MLP.

Called without ``tokens`` (``balance``'s unimodal score of the fusion model, which holds pooled
embeddings only) each modality's pooled embedding is its one token.

``record_attention = True`` keeps the last layer's attention (heads averaged) in
``last_attention``: ``{"a->b": [B, T_a, T_b]}``, how much each token of ``a`` attends to each
token of ``b`` (rows sum to at most 1: the rest went to the null key), and in ``last_valid``
``{m: bool[B, T_m]}`` which of those tokens were real (present and not padding); explanations
overlay the report->image map on the image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import FusionHead


class _CrossBlock(nn.Module):
    """One layer: each modality's tokens attend (pre-norm, residual) to the null key and the valid
    tokens of every other modality, then an optional MLP (``mlp_ratio`` x dim; 0: none)."""

    def __init__(self, dim: int, heads: int, dropout: float, mlp_ratio: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.q, self.kv = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.mlp = None if mlp_ratio == 0 else nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(mlp_ratio * dim, dim))

    def _split(self, z: Tensor) -> Tensor:  # [B, T, D] -> [B, heads, T, D / heads]
        b, t, d = z.shape
        return z.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, xs: list[Tensor], valids: list[Tensor], null: Tensor,
                want_weights: bool) -> tuple[list[Tensor], list[Tensor | None]]:
        b, d = xs[0].shape[0], xs[0].shape[-1]
        hs = [self.norm1(x) for x in xs]
        qs = [self._split(self.q(h)) for h in hs]
        kvs = [self.kv(h).chunk(2, dim=-1) for h in hs]
        null_k, null_v = (self._split(z.to(hs[0].dtype).expand(b, 1, d)) for z in self.kv(null).chunk(2, dim=-1))
        out, weights = [], []
        for a, x in enumerate(xs):
            others = [i for i in range(len(xs)) if i != a]
            k = torch.cat([null_k] + [self._split(kvs[i][0]) for i in others], dim=2)
            v = torch.cat([null_v] + [self._split(kvs[i][1]) for i in others], dim=2)
            # a key-padding mask [B, 1, 1, 1 + T_others]: the null key, then the others' valid tokens
            mask = torch.cat([valids[a].new_ones((b, 1))] + [valids[i] for i in others], dim=1)[:, None, None]
            # dropout on the attended output, not on the [T_a, T_o] weights: weight dropout draws a
            # random number per query-key pair and keeps SDPA off its fused kernels (3x the step on CPU)
            att = F.scaled_dot_product_attention(qs[a], k, v, attn_mask=mask)
            y = x + self.drop(self.out(att.transpose(1, 2).reshape(b, x.shape[1], d)))
            out.append(y if self.mlp is None else y + self.mlp(y))
            if want_weights:
                scores = (qs[a] @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
                weights.append(scores.masked_fill(~mask, float("-inf")).softmax(-1).mean(1))  # [B, T_a, 1 + T_o]
            else:
                weights.append(None)
        return out, weights


class TokenAttentionFusion(FusionHead):
    uses_tokens = True

    def __init__(self, dims: dict[str, int], dim: int = 64, heads: int = 4, layers: int = 1, dropout: float = 0.1,
                 mlp_ratio: int = 0):
        super().__init__(dims)
        if dim % heads:
            raise ValueError(f"token_attention: dim ({dim}) must be divisible by heads ({heads})")
        if not 0 <= mlp_ratio <= 8:
            raise ValueError(f"token_attention: mlp_ratio must be 0 (no MLP) to 8, got {mlp_ratio}")
        self.out_dim = dim
        self.proj = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in self.dims.items()})
        self.type_embed = nn.Parameter(torch.randn(len(self.names), dim) * 0.02)
        self.null = nn.Parameter(torch.zeros(dim))
        self.blocks = nn.ModuleList(_CrossBlock(dim, heads, dropout, mlp_ratio) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.record_attention = False
        self.last_attention: dict[str, Tensor] | None = None
        self.last_valid: dict[str, Tensor] | None = None

    def forward(self, embeddings: dict[str, Tensor], present: dict[str, Tensor],
                tokens: dict[str, tuple[Tensor, Tensor]] | None = None) -> Tensor:
        if tokens is None:
            tokens = {m: (embeddings[m].flatten(2).mean(-1) if embeddings[m].dim() > 2 else embeddings[m],
                          present[m]) for m in self.names}
            tokens = {m: (e[:, None], v[:, None]) for m, (e, v) in tokens.items()}
        xs, valids = [], []
        for i, m in enumerate(self.names):
            seq, valid = tokens[m]
            valid = valid.bool() & present[m][:, None]
            seq = torch.where(valid[..., None], seq, torch.zeros((), dtype=seq.dtype, device=seq.device))
            xs.append(self.proj[m](seq) + self.type_embed[i].to(seq.dtype))
            valids.append(valid)
        weights: list[Tensor | None] = []
        for j, block in enumerate(self.blocks):
            xs, weights = block(xs, valids, self.null, self.record_attention and j == len(self.blocks) - 1)
        if weights and weights[0] is not None:
            self.last_attention = {}
            self.last_valid = {m: v.detach() for m, v in zip(self.names, valids)}
            for a, w in enumerate(weights):
                start = 1  # after the null key
                for b in (i for i in range(len(self.names)) if i != a):
                    end = start + xs[b].shape[1]
                    self.last_attention[f"{self.names[a]}->{self.names[b]}"] = w[:, :, start:end].detach()
                    start = end
        total = count = None
        for x, valid in zip(xs, valids):
            keep = valid[..., None]
            n = keep.sum(1).to(x.dtype)  # [B, 1]
            pooled = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(1) / n.clamp(min=1)
            has = (n > 0).to(x.dtype)
            total, count = (pooled, has) if total is None else (total + pooled, count + has)
        return self.norm(total / count.clamp(min=1))
