"""Modality-aware aggregation, update screening and central-DP noise (numpy only).

Sites may hold different modality sets. Each parameter belongs to a group and each site's
parameters of a group are weighted by the one rule in ``groups`` (``groups.weight``):
- ``encoder:<m>`` is averaged only over the sites that hold modality ``m``, weighted by how many
  of their training samples have ``m``;
- ``fusion`` over the sites holding >= 2 modalities (those that learn how to combine them;
  all contributing sites when none does), weighted by sample count;
- ``task`` over every site that trained, weighted by sample count.
A site that holds one modality still contributes to that modality's encoder.

Central DP (``dp=DPNoise(...)``): each site's whole update (delta from the global model) is
clipped to L2 norm ``clip``; per parameter the deltas are *summed*, Gaussian noise with std
``noise_multiplier * clip`` is added, and the sum is divided by the number of contributors
(post-processing). One site changes the concatenated sums by at most ``clip``, so this is the
Gaussian mechanism with that noise multiplier, whatever the modality pattern; weights are equal
per site (as Flower's RDP accounting assumes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .groups import fusion_from, held, param_group, weight


@dataclass
class SiteUpdate:
    site: Any
    weights: dict[str, np.ndarray]
    modality_counts: dict[str, int]
    num_examples: int
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class DPNoise:
    noise_multiplier: float
    clip: float
    rng: np.random.Generator


def _is_float(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.floating)


def update_norm(update: SiteUpdate, global_weights: dict[str, np.ndarray]) -> float:
    sq = 0.0
    for k, w in update.weights.items():
        if k in global_weights and _is_float(w):
            d = w.astype(np.float64) - global_weights[k].astype(np.float64)
            sq += float(np.sum(d * d))
    return float(np.sqrt(sq))


def screen(updates: list[SiteUpdate], global_weights: dict[str, np.ndarray], outlier_factor: float = 10.0
           ) -> tuple[list[SiteUpdate], list[tuple[Any, str]]]:
    """Reject updates with NaN/inf, and (with >= 3 updates) any whose norm exceeds
    ``outlier_factor`` x the median norm of the others. Returns ``(accepted, [(site, reason)])``."""
    accepted, rejected = [], []
    for u in updates:
        bad = [k for k, w in u.weights.items() if _is_float(w) and not np.all(np.isfinite(w))]
        if bad:
            rejected.append((u.site, f"non-finite values in {len(bad)} arrays (e.g. {bad[0]})"))
        else:
            accepted.append(u)
    if len(accepted) >= 3 and outlier_factor > 0:
        norms = {id(u): update_norm(u, global_weights) for u in accepted}
        keep = []
        for u in accepted:
            others = np.median([norms[id(v)] for v in accepted if v is not u])
            if others > 0 and norms[id(u)] > outlier_factor * others:
                rejected.append((u.site, f"update norm {norms[id(u)]:.3g} > {outlier_factor:g} x median of the "
                                         f"others ({others:.3g})"))
            else:
                keep.append(u)
        accepted = keep
    return accepted, rejected


def contributors(group: str, updates: list[SiteUpdate], plain: bool = False) -> list[tuple[SiteUpdate, float]]:
    """The sites whose ``group`` parameters enter the average, with their weights (``groups.weight``;
    the fusion head comes from every site when none of this round's holds >= 2 modalities)."""
    source = fusion_from(held(u.modality_counts) for u in updates if u.num_examples > 0)
    weighted = [(u, weight(group, u.modality_counts, u.num_examples, plain=plain, fusion_from=source))
                for u in updates]
    return [(u, w) for u, w in weighted if w > 0]


def aggregate(global_weights: dict[str, np.ndarray], updates: list[SiteUpdate], *, plain: bool = False,
              dp: DPNoise | None = None) -> tuple[dict[str, np.ndarray], dict[str, list[Any]]]:
    """New global weights, and for each group the sites that entered its average."""
    if dp is not None:
        scale = {}
        for u in updates:
            n = update_norm(u, global_weights)
            scale[id(u)] = min(1.0, dp.clip / n) if n > 0 else 1.0
    new: dict[str, np.ndarray] = {}
    used: dict[str, list[Any]] = {}
    for key, g in global_weights.items():
        group = param_group(key)
        contrib = [(u, w) for u, w in contributors(group, updates, plain) if key in u.weights]
        if not contrib:
            new[key] = g
            continue
        used.setdefault(group, [u.site for u, _ in contrib])
        if not _is_float(g):  # integer buffers (e.g. BatchNorm step counters): the largest
            new[key] = np.max(np.stack([u.weights[key] for u, _ in contrib]), axis=0).astype(g.dtype)
            continue
        g64 = g.astype(np.float64)
        if dp is None:
            total = sum(w for _, w in contrib)
            avg = sum((w / total) * u.weights[key].astype(np.float64) for u, w in contrib)
            new[key] = avg.astype(g.dtype)
        else:
            s = sum(scale[id(u)] * (u.weights[key].astype(np.float64) - g64) for u, _ in contrib)
            s = s + dp.rng.normal(0.0, dp.noise_multiplier * dp.clip, size=g.shape)
            new[key] = (g64 + s / len(contrib)).astype(g.dtype)
    return new, used
