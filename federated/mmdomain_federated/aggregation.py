"""Modality-aware aggregation, reply checks, update screening and central-DP noise (numpy; Krum's
selection is Flower's).

Sites may hold different modality sets. Each parameter belongs to a group and each site's
parameters of a group are weighted by the one rule in ``groups`` (``groups.weight``):
- ``encoder:<m>`` is averaged only over the sites that hold modality ``m``, weighted by how many
  of their training samples have ``m``;
- ``fusion`` over the sites holding >= 2 modalities (those that learn how to combine them;
  all contributing sites when none does), weighted by sample count;
- ``task`` over every site that trained, weighted by sample count.
A site that holds one modality still contributes to that modality's encoder.

A site is not trusted with the server's state (``check_update``, ``Caps``, ``screen``,
``cap_shares``): its arrays must be the ones it was sent (names, shapes, dtypes of the global
model, whole groups), its counts finite, non-negative integers within ``max-site-samples``, and
within what its readiness report declared (plus the report's noise margin) when there is one;
its update's norm, per parameter group, within ``outlier-factor`` x the median of the other
sites' (with 2 sites: the other's); and no single site has more than ``max-site-weight`` of a
group's average (with >= 3 contributors). ``aggregation = "median" | "trimmed-mean"`` average
each coordinate robustly instead (unweighted: a forged count buys nothing); ``"krum"`` (multi-Krum,
Blanchard et al. 2017, with Flower's selection, ``krum_selection``) averages, per parameter group,
the ``n - f`` updates closest to their neighbours, unweighted. Per group, not over whole updates:
sites send different groups (a site without the image modality sends no image encoder), so the
distance between two whole updates is not defined, and each group's contributors are the
modality-aware ones.

Central DP (``dp=DPNoise(...)``): each site's whole update (delta from the global model) is
clipped to L2 norm ``clip``; per parameter the deltas are *summed*, Gaussian noise with std
``noise_multiplier * clip`` is added, and the sum is divided by the number of contributors
(post-processing). One site changes the concatenated sums by at most ``clip``, so this is the
Gaussian mechanism with that noise multiplier, whatever the modality pattern; weights are equal
per site (as Flower's RDP accounting assumes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .groups import fusion_from, held, param_group, weight

#: The readiness report's counts carry Laplace noise of scale 2 (``readiness.readiness``); a true
#: count lies below the reported one + this margin but with probability 0.5 exp(-30 / 2) ~ 1e-7.
READINESS_MARGIN = 30
#: ``aggregation`` values that average robustly (unweighted): per coordinate, or (krum) by selection per group.
ROBUST = ("median", "trimmed-mean", "krum")


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


class BadReply(ValueError):
    """A site's reply that does not fit what the server sent or expects; the message says what
    (names of the model's own arrays and counts only, never a string the site chose)."""


@dataclass
class Caps:
    """The most a site may report: ``ceiling`` (``max-site-samples``) for any count, and, for a
    site whose readiness report declared its splits (``declared``: site -> split -> ``{"n": cap,
    "modalities": {m: cap}}``), what it declared there plus ``READINESS_MARGIN``.
    ``modalities``: the model's modalities (empty: not checked)."""

    ceiling: int = 1_000_000
    declared: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)
    modalities: tuple[str, ...] = ()

    def limit(self, site: Any, split: str, modality: str | None = None) -> tuple[int, str]:
        """The cap on a count of ``site``'s ``split`` (of one ``modality``) and where it comes from."""
        entry = self.declared.get(_node(site), {}).get(split)
        if entry is None:
            return self.ceiling, "max-site-samples"
        cap = entry["n"] if modality is None else entry["modalities"].get(modality, READINESS_MARGIN)
        return min(cap, self.ceiling), "its readiness report"


def _node(site: Any) -> Any:
    try:
        return int(site)
    except (TypeError, ValueError):
        return site


def declared_caps(report: Mapping[str, Any], ceiling: int, modalities: tuple[str, ...] = ()) -> Caps:
    """``Caps`` from the server's readiness record (``{site: report}``, as ``readiness.json``):
    per split a site reported, its noised counts + ``READINESS_MARGIN`` (a suppressed cell,
    ``"<5"``, is at most 4 + the margin). Splits with an error, and malformed entries, are not
    declared (``ceiling`` applies)."""
    declared: dict[int, dict[str, dict[str, Any]]] = {}
    for site, rep in report.items():
        splits = rep.get("splits") if isinstance(rep, dict) else None
        if not isinstance(splits, dict):
            continue
        for split, entry in splits.items():
            n = _declared(entry.get("n")) if isinstance(entry, dict) else None
            mods = entry.get("modalities") if isinstance(entry, dict) else None
            if n is None or not isinstance(mods, dict):
                continue
            caps = {m: _declared(c) for m, c in mods.items()}
            if any(c is None for c in caps.values()):
                continue
            declared.setdefault(_node(site), {})[str(split)] = {"n": n, "modalities": caps}
    return Caps(ceiling, declared, tuple(modalities))


def _declared(cell: Any) -> int | None:
    """A readiness cell (a noised count, or ``"<5"``) as a cap, None when it is neither."""
    if isinstance(cell, str) and cell.startswith("<") and cell[1:].isdigit():
        return int(cell[1:]) - 1 + READINESS_MARGIN
    if isinstance(cell, int) and not isinstance(cell, bool) and cell >= 0:
        return cell + READINESS_MARGIN
    return None


def count(name: str, value: Any, ceiling: int) -> int:
    """A count a site reported, as an int: a finite, non-negative whole number <= ``ceiling``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise BadReply(f"{name} is not a number")
    v = float(value)
    if not math.isfinite(v) or v < 0 or v != int(v):
        raise BadReply(f"{name} is {v!r}: counts are finite non-negative integers")
    if v > ceiling:
        raise BadReply(f"{name} {int(v)} is above max-site-samples ({ceiling})")
    return int(v)


def check_update(weights: Mapping[str, np.ndarray], global_weights: Mapping[str, np.ndarray]
                 ) -> dict[str, np.ndarray]:
    """``weights`` in the global model's shapes, or ``BadReply`` unless every array is one the
    server sent (``global_weights``), with its shape and dtype, and each parameter group present is
    there whole (as a site sends it). A 0-d array travels as shape (1,) (``records.numpy_to_arrays``):
    the two are the same shape here."""
    unknown = [k for k in weights if k not in global_weights]
    if unknown:  # the names are the site's: not echoed
        raise BadReply(f"{len(unknown)} arrays that are not parameters the server sent")
    out = {}
    for k, w in weights.items():
        g = global_weights[k]
        if not isinstance(w, np.ndarray):
            raise BadReply(f"{k!r} is not an array")
        if w.shape != g.shape and not (w.size == g.size == 1 and max(w.ndim, g.ndim) == 1):
            raise BadReply(f"{k!r} has shape {w.shape}, the model's is {g.shape}")
        if w.dtype != g.dtype:
            raise BadReply(f"{k!r} has dtype {w.dtype}, the model's is {g.dtype}")
        out[k] = w.reshape(g.shape)
    groups = {param_group(k) for k in weights}
    partial = sorted(g for g in groups if any(param_group(k) == g and k not in weights for k in global_weights))
    if partial:
        raise BadReply(f"parameter group {partial[0]} sent in part")
    return out


def _is_float(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.floating)


def update_norm(update: SiteUpdate, global_weights: dict[str, np.ndarray]) -> float:
    """L2 norm of the update's float deltas (all its groups)."""
    return float(np.sqrt(sum(n * n for n in group_norms(update, global_weights).values())))


def group_norms(update: SiteUpdate, global_weights: dict[str, np.ndarray]) -> dict[str, float]:
    """Per parameter group the update sent, the L2 norm of its float deltas from the global model."""
    sq: dict[str, float] = {}
    for k, w in update.weights.items():
        if k in global_weights and _is_float(w):
            d = w.astype(np.float64) - global_weights[k].astype(np.float64)
            sq[param_group(k)] = sq.get(param_group(k), 0.0) + float(np.sum(d * d))
    return {g: math.sqrt(v) for g, v in sq.items()}


def screen(updates: list[SiteUpdate], global_weights: dict[str, np.ndarray], outlier_factor: float = 10.0
           ) -> tuple[list[SiteUpdate], list[tuple[Any, str]]]:
    """Reject updates with NaN/inf, and (``outlier_factor`` > 0) any whose norm in some parameter
    group exceeds ``outlier_factor`` x the median norm of the other updates of that group (with
    two updates: the other one's). Returns ``(accepted, [(site, reason)])``.

    Per group, as sites send different groups (a site without the image modality sends no image
    encoder: its whole-update norm is not comparable). Float arrays only: ``check_update`` has
    made every dtype the global model's, whose non-float arrays (step counters) are averaged by
    their median (``aggregate``). With two updates a site cannot make the other's look like an
    outlier without its own update being ten times smaller, and then nothing large enters."""
    accepted, rejected = [], []
    for u in updates:
        bad = [k for k, w in u.weights.items() if _is_float(w) and not np.all(np.isfinite(w))]
        if bad:
            rejected.append((u.site, f"non-finite values in {len(bad)} arrays (e.g. {bad[0]})"))
        else:
            accepted.append(u)
    if len(accepted) >= 2 and outlier_factor > 0:
        norms = {id(u): group_norms(u, global_weights) for u in accepted}
        keep = []
        for u in accepted:
            reason = None
            for g, n in sorted(norms[id(u)].items()):
                others = [norms[id(v)][g] for v in accepted if v is not u and g in norms[id(v)]]
                ref = float(np.median(others)) if others else 0.0
                if ref > 0 and n > outlier_factor * ref:
                    what = "the other's" if len(others) == 1 else "the median of the others"
                    reason = f"update norm of group {g} {n:.3g} > {outlier_factor:g} x {what} ({ref:.3g})"
                    break
            if reason:
                rejected.append((u.site, reason))
            else:
                keep.append(u)
        accepted = keep
    return accepted, rejected


def cap_shares(weights: list[float], max_share: float) -> np.ndarray:
    """The normalised weights (summing to 1) with no share above ``max_share`` (at least 1 / the
    number of weights): the excess of a capped weight goes to the others in proportion to theirs.
    Applied with >= 3 weights only: with two, any cap below 1 would fix both at 1/2."""
    w = np.asarray(weights, np.float64)
    share = w / w.sum()
    if len(w) < 3 or max_share >= 1:
        return share
    cap = max(max_share, 1.0 / len(w))
    capped = np.zeros(len(w), bool)
    while (over := (share > cap * (1 + 1e-12)) & ~capped).any():
        capped |= over
        rest = np.where(capped, 0.0, w)
        share = np.where(capped, cap, (1.0 - cap * capped.sum()) * rest / rest.sum())
    return share


def contributors(group: str, updates: list[SiteUpdate], plain: bool = False) -> list[tuple[SiteUpdate, float]]:
    """The sites whose ``group`` parameters enter the average, with their weights (``groups.weight``;
    the fusion head comes from every site when none of this round's holds >= 2 modalities)."""
    source = fusion_from(held(u.modality_counts) for u in updates if u.num_examples > 0)
    weighted = [(u, weight(group, u.modality_counts, u.num_examples, plain=plain, fusion_from=source))
                for u in updates]
    return [(u, w) for u, w in weighted if w > 0]


def robust_mean(values: np.ndarray, how: str, trim_fraction: float) -> np.ndarray:
    """Per coordinate over axis 0: the median, or the mean after dropping the ``trim_fraction``
    largest and as many smallest values (at least one each with >= 3 values; none with 2)."""
    if how == "median":
        return np.median(values, axis=0)
    k = values.shape[0]
    t = max(1, int(trim_fraction * k)) if k >= 3 else 0
    t = min(t, (k - 1) // 2)
    return np.sort(values, axis=0)[t:k - t].mean(axis=0)


def krum_selection(group: str, sites: list[SiteUpdate], global_weights: dict[str, np.ndarray], byzantine: int
                   ) -> list[SiteUpdate] | None:
    """Multi-Krum over ``sites``' updates of ``group``: the ``n - f`` (``f = byzantine``) whose
    summed squared distance to their ``n - f - 2`` nearest others is smallest (Flower's
    ``select_multikrum`` on the group's float deltas from the global model). None when the group
    has ``n <= 2f + 2`` contributors, where Krum's bound does not hold."""
    from flwr.app import Array, ArrayRecord, RecordDict
    from flwr.serverapp.strategy.multikrum import select_multikrum

    if len(sites) <= 2 * byzantine + 2:
        return None
    keys = sorted(k for k in global_weights if param_group(k) == group and _is_float(global_weights[k]))
    contents = [RecordDict({"delta": ArrayRecord({"d": Array(np.concatenate(
        [(u.weights[k].astype(np.float64) - global_weights[k].astype(np.float64)).ravel() for k in keys]))})})
        for u in sites]
    chosen = {id(c) for c in select_multikrum(contents, num_malicious_nodes=byzantine,
                                              num_nodes_to_select=len(sites) - byzantine)}
    return [u for u, c in zip(sites, contents) if id(c) in chosen]


def aggregate(global_weights: dict[str, np.ndarray], updates: list[SiteUpdate], *, plain: bool = False,
              dp: DPNoise | None = None, max_share: float = 1.0, robust: str = "",
              trim_fraction: float = 0.2, byzantine: int = 1, notes: list[str] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, list[Any]]]:
    """New global weights, and for each group the sites that entered its average. ``max_share``:
    the largest share one site may have in a group's weighted average (``cap_shares``);
    ``robust``: ``median`` or ``trimmed-mean`` per coordinate over the same sites, or ``krum``
    (``krum_selection``, ``byzantine`` = f: the mean of the selected updates; a group with too few
    contributors for Krum takes the coordinate median), unweighted. ``notes``: what Krum left out."""
    notes = notes if notes is not None else []
    # one order whatever order the replies came in (Flower samples nodes in a random order): float
    # sums in another order differ in the last bits, which training then amplifies; same seed, same model
    updates = sorted(updates, key=lambda u: str(u.site))
    selected: dict[str, list[SiteUpdate]] = {}
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
        if robust == "krum" and group not in selected:
            sites = [u for u, _ in contrib]
            chosen = krum_selection(group, sites, global_weights, byzantine)
            if chosen is None:
                notes.append(f"krum: group {group} has {len(sites)} sites, Krum with f={byzantine} needs "
                             f"> {2 * byzantine + 2}: coordinate median instead")
            elif left := [u.site for u in sites if all(u is not c for c in chosen)]:
                notes.append(f"krum: group {group}: left out site {', '.join(map(str, left))}")
            selected[group] = chosen or []
        if not _is_float(g):  # integer buffers (e.g. BatchNorm step counters): the median, no one site sets it
            stacked = np.stack([u.weights[key] for u, _ in contrib])
            new[key] = np.floor(np.median(stacked, axis=0)).astype(g.dtype)
            continue
        g64 = g.astype(np.float64)
        if dp is not None:
            s = sum(scale[id(u)] * (u.weights[key].astype(np.float64) - g64) for u, _ in contrib)
            s = s + dp.rng.normal(0.0, dp.noise_multiplier * dp.clip, size=g.shape)
            new[key] = (g64 + s / len(contrib)).astype(g.dtype)
        elif robust == "krum" and selected[group]:
            new[key] = np.mean([u.weights[key].astype(np.float64) for u in selected[group]], axis=0).astype(g.dtype)
        elif robust:
            stacked = np.stack([u.weights[key].astype(np.float64) for u, _ in contrib])
            how = "median" if robust == "krum" else robust
            new[key] = robust_mean(stacked, how, trim_fraction).astype(g.dtype)
        else:
            shares = cap_shares([w for _, w in contrib], max_share)
            avg = sum(s * u.weights[key].astype(np.float64) for (u, _), s in zip(contrib, shares))
            new[key] = avg.astype(g.dtype)
    return new, used
