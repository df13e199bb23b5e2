"""What every fusion head shares.

A head maps ``embeddings: dict[str, Tensor]`` (each ``[B, D_m]`` or ``[B, D_m, *spatial]``)
and ``present: dict[str, Tensor]`` (``bool[B]``) to ``[B, out_dim, *spatial]``. Heads work
token-wise over the spatial dims, so the same head serves classification (no spatial
dims) and segmentation (feature maps). Keys are iterated in sorted order. An absent
modality's values never reach the output: heads select with ``torch.where`` rather than
multiply by the mask, so even NaN fill values cannot leak.

A learned missing-modality token is a layer of its own (``MissingToken``), not a bare parameter
of the head: per-sample-gradient DP (Opacus) works layer by layer and needs a rule for each.
"""

from __future__ import annotations

import re
from typing import Mapping, TypeVar

import torch
from torch import Tensor, nn


class FusionHead(nn.Module):
    out_dim: int

    def __init__(self, dims: dict[str, int]):
        super().__init__()
        if not dims:
            raise ValueError("a fusion head needs at least one modality")
        self.names = sorted(dims)
        self.dims = {m: int(dims[m]) for m in self.names}

    def forward(self, embeddings: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:  # pragma: no cover
        raise NotImplementedError


def channels_last(x: Tensor) -> Tensor:
    """``[B, D, *S] -> [B, *S, D]`` (a no-op for ``[B, D]``)."""
    return x.movedim(1, -1) if x.dim() > 2 else x


def channels_first(x: Tensor) -> Tensor:
    return x.movedim(-1, 1) if x.dim() > 2 else x


def mask_like(present: Tensor, x_last: Tensor) -> Tensor:
    """``bool[B]`` broadcast to ``[B, *S, 1]`` for a channels-last tensor."""
    return present.view(present.shape[0], *([1] * (x_last.dim() - 1)))


class MissingToken(nn.Module):
    """A learned embedding standing in for an absent modality: ``forward(x, present)`` keeps
    the rows of ``x`` (channels-last ``[B, *S, D]``) where ``present`` (``bool[B]``) is set and
    puts the token in the others."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor, present: Tensor) -> Tensor:
        return torch.where(mask_like(present, x), x, self.weight.to(x.dtype))


_LEGACY_TOKEN = re.compile(r"(?:^|\.)missing\.[^.]+$")
_V = TypeVar("_V")


def upgrade_token_names(weights: Mapping[str, _V]) -> dict[str, _V]:
    """Weights named before the missing-modality tokens became :class:`MissingToken` layers
    (``fusion.missing.<m>``) renamed to today's ``fusion.missing.<m>.weight``; others unchanged."""
    return {(k + ".weight" if _LEGACY_TOKEN.search(k) else k): v for k, v in weights.items()}


def modality_dropout(present: dict[str, Tensor], p: float, generator=None) -> dict[str, Tensor]:
    """Drop each present modality with probability ``p``, never all of a sample's.

    A sample that would lose every modality keeps one of its present ones, chosen at
    random, so training sees every availability pattern and no empty sample.
    """
    if p <= 0:
        return present
    names = sorted(present)
    stack = torch.stack([present[m] for m in names], dim=1)  # [B, M]
    keep = torch.rand(stack.shape, generator=generator, device=stack.device) >= p
    dropped = stack & keep
    empty = dropped.sum(1) == 0
    if bool(empty.any()):
        scores = torch.rand(stack.shape, generator=generator, device=stack.device).masked_fill(~stack, -1.0)
        pick = torch.nn.functional.one_hot(scores.argmax(1), len(names)).bool() & stack
        dropped = torch.where(empty[:, None], pick, dropped)
    return {m: dropped[:, i] for i, m in enumerate(names)}
