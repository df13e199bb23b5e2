"""Token-level cross-modal attention: every token of one modality (an image feature-map cell, a
report token, an S1 or S2 patch cell) attends to the tokens of the other modalities, so a report
phrase can be related to an image region, and the reverse.

The head takes what the encoders return before pooling (``EncoderSpec.supports_tokens``: their
``tokens(x) -> (seq [B, T, D], valid [B, T])``), which ``FusionModel`` passes as ``tokens``. Each
layer is bidirectional cross-attention on ``torch.nn.functional.scaled_dot_product_attention``
with a boolean mask: a query of modality ``a`` may attend to the valid tokens of every other
present modality and to one learned null key (always there, so a row with one modality, whose
queries have nothing else to attend to, stays defined). Absent modalities and padded text are
thus removed from every key set, exactly (a masked key gets weight 0), and the values at those
positions are zeroed before anything reads them, so no fill value (not even NaN) reaches the
output. The fused vector is the mean over the present modalities of each one's mean over its
valid tokens, normalised.

Called without ``tokens`` (``balance``'s unimodal score of the fusion model, which holds pooled
embeddings only) each modality's pooled embedding is its one token.

``record_attention = True`` keeps the last layer's attention (heads averaged) in
``last_attention``: ``{"a->b": [B, T_a, T_b]}``, how much each token of ``a`` attends to each
token of ``b`` (rows sum to at most 1: the rest went to the null key); explanations overlay the
report->image map on the image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import FusionHead


class _CrossBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.kv = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor, null: Tensor, allowed: Tensor, want_weights: bool) -> tuple[Tensor, Tensor | None]:
        b, t, d = x.shape
        h = self.norm1(x)
        keys = torch.cat([null.to(h.dtype).expand(b, 1, d), h], dim=1)  # the null key first
        q = self.q(h)
        k, v = self.kv(keys).chunk(2, dim=-1)
        split = lambda z: z.view(b, z.shape[1], self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        mask = allowed[:, None]  # [B, 1, T, 1 + T]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.out(a.transpose(1, 2).reshape(b, t, d))
        weights = None
        if want_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
            weights = scores.masked_fill(~mask, float("-inf")).softmax(-1).mean(1)  # [B, T, 1 + T]
        return x + self.mlp(self.norm2(x)), weights


class TokenAttentionFusion(FusionHead):
    uses_tokens = True

    def __init__(self, dims: dict[str, int], dim: int = 128, heads: int = 4, layers: int = 1, dropout: float = 0.1):
        super().__init__(dims)
        if dim % heads:
            raise ValueError(f"token_attention: dim ({dim}) must be divisible by heads ({heads})")
        self.out_dim = dim
        self.proj = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in self.dims.items()})
        self.type_embed = nn.Parameter(torch.randn(len(self.names), dim) * 0.02)
        self.null = nn.Parameter(torch.zeros(dim))
        self.blocks = nn.ModuleList(_CrossBlock(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.record_attention = False
        self.last_attention: dict[str, Tensor] | None = None

    def forward(self, embeddings: dict[str, Tensor], present: dict[str, Tensor],
                tokens: dict[str, tuple[Tensor, Tensor]] | None = None) -> Tensor:
        if tokens is None:
            tokens = {m: (embeddings[m].flatten(2).mean(-1) if embeddings[m].dim() > 2 else embeddings[m],
                          present[m]) for m in self.names}
            tokens = {m: (e[:, None], v[:, None]) for m, (e, v) in tokens.items()}
        seqs, valids, owners, spans, start = [], [], [], {}, 0
        for i, m in enumerate(self.names):
            seq, valid = tokens[m]
            valid = valid.bool() & present[m][:, None]
            seq = torch.where(valid[..., None], seq, torch.zeros((), dtype=seq.dtype, device=seq.device))
            seqs.append(self.proj[m](seq) + self.type_embed[i].to(seq.dtype))
            valids.append(valid)
            owners.append(torch.full((seq.shape[1],), i, device=seq.device))
            spans[m] = (start, start + seq.shape[1])
            start += seq.shape[1]
        x, valid, owner = torch.cat(seqs, dim=1), torch.cat(valids, dim=1), torch.cat(owners)
        other = owner[:, None] != owner[None, :]  # [T, T]: a query attends to the other modalities only
        allowed = F.pad(other[None] & valid[:, None, :], (1, 0), value=True)  # [B, T, 1 + T], null first
        weights = None
        for j, block in enumerate(self.blocks):
            want = self.record_attention and j == len(self.blocks) - 1
            x, weights = block(x, self.null, allowed, want)
        if weights is not None:
            self.last_attention = {f"{a}->{b}": weights[:, sa:ea, 1 + sb:1 + eb].detach()
                                   for a, (sa, ea) in spans.items() for b, (sb, eb) in spans.items() if a != b}
        total = count = None
        for m, (s, e) in spans.items():
            keep = valid[:, s:e, None]
            n = keep.sum(1).to(x.dtype)  # [B, 1]
            pooled = torch.where(keep, x[:, s:e], torch.zeros((), dtype=x.dtype, device=x.device)).sum(1)
            pooled = pooled / n.clamp(min=1)
            has = (n > 0).to(x.dtype)
            total, count = (pooled, has) if total is None else (total + pooled, count + has)
        return self.norm(total / count.clamp(min=1))
