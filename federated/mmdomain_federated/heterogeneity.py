"""How different the sites are (issue #16 item 2), from what their readiness reports say.

Site side (``profile``, in the train split of the readiness report): from up to ``rows`` seeded
rows of the split, the label counts (positives per label for a multi-label target, rows per class
for a class index; Laplace-noised and suppressed below ``SUPPRESS_BELOW`` like every count of the
report) and, per modality, per-channel mean and standard deviation of the input values (a text
modality: of its length in words), each mean noised by Laplace noise of ``noise_scale`` times the
channel's standard deviation over the rows read, i.e. about what ``noise_scale`` records move it,
and rounded; a modality held by fewer than ``SUPPRESS_BELOW`` of the rows read is left out.

Server side (``divergences``, no site data): each site against the rest of the federation
pooled: the Jensen-Shannon divergence (base 2, 0 = the same, 1 = disjoint) of the label
distributions and of the availability-pattern distributions (from the noised counts; a suppressed
cell counts as ``SUPPRESSED_AS``), and per modality the Hellinger distance (0-1) between the
site's and the rest's per-channel normal approximations (the rest's moments pooled over its
sites), averaged over the channels. Only already noised and suppressed numbers go in, so the
divergences disclose nothing more than the report.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Iterable, Mapping

from .task import SUPPRESS_BELOW

SUPPRESSED_AS = (SUPPRESS_BELOW - 1) / 2  # a "<5" cell: the middle of 0..4
KINDS = ("labels", "patterns")


# --- site side -------------------------------------------------------------------------------------

def profile(dataset, modalities: Iterable[str], *, rows: int, rng: random.Random, noise_scale: float,
            noisy: Callable[[int, random.Random, float], int | str]) -> dict[str, Any]:
    """Label counts and per-modality input statistics of up to ``rows`` rows of ``dataset``."""
    import torch

    picked = sorted(rng.sample(range(len(dataset)), min(rows, len(dataset))))
    labels: list[float] | None = None
    kind = None
    sums: dict[str, list[torch.Tensor]] = {m: [] for m in modalities}
    for i in picked:
        sample = dataset[i]
        kind, labels = _count_label(sample.target, kind, labels)
        for m in modalities:
            value = sample.inputs.get(m)
            if isinstance(value, str):
                sums[m].append(torch.tensor([[float(len(value.split()))]], dtype=torch.float64))
            elif isinstance(value, torch.Tensor) and value.dim() >= 1 and value.is_floating_point():
                sums[m].append(value.detach().to(torch.float64).reshape(value.shape[0], -1))
    out: dict[str, Any] = {"rows": noisy(len(picked), rng, noise_scale)}
    if labels is not None and kind is not None:
        out["labels"] = {"kind": kind, "counts": [noisy(round(c), rng, noise_scale) for c in labels]}
    out["inputs"] = {m: _moments(values, rng, noise_scale, noisy) for m, values in sums.items()
                     if len(values) >= SUPPRESS_BELOW}
    return out


def _count_label(target, kind: str | None, counts: list[float] | None):
    """Add one row's target: a 1-D vector of several labels (multi-label; positives = 1, unknown
    < 0 skipped) or a class index (0-d or one element); other targets are not counted."""
    import torch

    if not isinstance(target, torch.Tensor):
        return kind, counts
    if target.dim() == 1 and target.numel() > 1:
        row, this = [float(v == 1) for v in target.tolist()], "multi-label"
    elif target.numel() == 1 and not target.is_floating_point():
        index = int(target.reshape(()).item())
        if index < 0:
            return kind, counts
        row, this = [0.0] * (index + 1), "classes"
        row[index] = 1.0
    else:
        return kind, counts
    if kind not in (None, this):
        return kind, counts
    counts = counts or []
    counts += [0.0] * (len(row) - len(counts))
    return this, [c + (row[j] if j < len(row) else 0.0) for j, c in enumerate(counts)]


def _moments(values: list, rng: random.Random, noise_scale: float, noisy) -> dict[str, Any]:
    import torch

    flat = torch.cat(values, dim=1) if len({v.shape[0] for v in values}) == 1 else None
    if flat is None:  # rows of different channel counts: one channel over every value
        flat = torch.cat([v.reshape(1, -1) for v in values], dim=1)
    mean, std = flat.mean(dim=1), flat.std(dim=1, unbiased=False)
    noised = [float(m) + _laplace(rng, noise_scale * float(s) / len(values)) for m, s in zip(mean, std)]
    return {"rows": noisy(len(values), rng, noise_scale), "mean": [round(v, 4) for v in noised], "std": [round(float(s), 4) for s in std]}


def _laplace(rng: random.Random, scale: float) -> float:
    if scale <= 0:
        return 0.0
    u = rng.random() - 0.5
    return -scale * math.copysign(1.0, u) * math.log(1 - 2 * abs(u))


# --- server side -----------------------------------------------------------------------------------

def divergences(report: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """``{site: {"labels": JS, "patterns": JS, "input <modality>": Hellinger}}``, each site
    against the other reporting sites pooled; None where a site or the rest lacks the numbers.
    Sites that failed or refused the readiness query are left out."""
    train = {site: _train(rep) for site, rep in report.items()}
    train = {site: t for site, t in train.items() if t is not None}
    labels = {s: _counts(((t.get("profile") or {}).get("labels") or {}).get("counts")) for s, t in train.items()}
    patterns = {s: _pattern_counts(t.get("patterns")) for s, t in train.items()}
    inputs = {s: (t.get("profile") or {}).get("inputs") or {} for s, t in train.items()}
    modalities = sorted({m for v in inputs.values() for m in v})
    out: dict[str, dict[str, float | None]] = {}
    for site in train:
        rest = [s for s in train if s != site]
        row: dict[str, float | None] = {
            "labels": _js_against(labels, site, rest),
            "patterns": _js_against(patterns, site, rest),
        }
        for m in modalities:
            row[f"input {m}"] = _hellinger_against(inputs, m, site, rest)
        out[site] = row
    return out


def _train(rep: Any) -> dict[str, Any] | None:
    if not isinstance(rep, Mapping) or "error" in rep or "refused" in rep:
        return None
    train = (rep.get("splits") or {}).get("train")
    return train if isinstance(train, Mapping) and "error" not in train else None


def _cell(value: Any) -> float:
    if isinstance(value, str):  # "<5"
        return SUPPRESSED_AS
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0 else 0.0


def _counts(cells: Any) -> list[float] | None:
    return [_cell(c) for c in cells] if isinstance(cells, list) and cells else None


def _pattern_counts(cells: Any) -> dict[str, float] | None:
    return {str(p): _cell(c) for p, c in cells.items()} if isinstance(cells, Mapping) and cells else None


def _js_against(dists: Mapping[str, Any], site: str, rest: list[str]) -> float | None:
    mine = dists.get(site)
    others = [dists[s] for s in rest if dists.get(s) is not None]
    if mine is None or not others:
        return None
    if isinstance(mine, Mapping):  # patterns: align the keys
        keys = sorted(set(mine).union(*others))
        p = [mine.get(k, 0.0) for k in keys]
        q = [sum(o.get(k, 0.0) for o in others) for k in keys]
    else:  # label counts: align by index
        width = max(len(mine), *(len(o) for o in others))
        p = mine + [0.0] * (width - len(mine))
        q = [sum(o[j] if j < len(o) else 0.0 for o in others) for j in range(width)]
    return js_divergence(p, q)


def js_divergence(p: list[float], q: list[float]) -> float | None:
    """Jensen-Shannon divergence, base 2, of two count vectors (normalised here); None when either is empty."""
    sp, sq = sum(p), sum(q)
    if sp <= 0 or sq <= 0:
        return None
    p, q = [x / sp for x in p], [x / sq for x in q]
    m = [(a + b) / 2 for a, b in zip(p, q)]

    def kl(a: list[float]) -> float:
        return sum(x * math.log2(x / y) for x, y in zip(a, m) if x > 0)

    return max(0.0, min(1.0, (kl(p) + kl(q)) / 2))


def _hellinger_against(inputs: Mapping[str, Mapping[str, Any]], modality: str, site: str,
                       rest: list[str]) -> float | None:
    mine = inputs[site].get(modality)
    others = [inputs[s][modality] for s in rest if modality in inputs[s]]
    if not mine or not others or any(len(o["mean"]) != len(mine["mean"]) for o in others):
        return None
    distances = []
    for c in range(len(mine["mean"])):
        weights = [max(_cell(o["rows"]), 1.0) for o in others]
        total = sum(weights)
        mean = sum(w * o["mean"][c] for w, o in zip(weights, others)) / total
        var = sum(w * (o["std"][c] ** 2 + (o["mean"][c] - mean) ** 2) for w, o in zip(weights, others)) / total
        distances.append(hellinger_normal(mine["mean"][c], mine["std"][c], mean, math.sqrt(var)))
    return sum(distances) / len(distances)


def hellinger_normal(mu1: float, sd1: float, mu2: float, sd2: float) -> float:
    """Hellinger distance between N(mu1, sd1^2) and N(mu2, sd2^2), in 0-1 (a floor on the standard
    deviations keeps a constant channel finite)."""
    sd1, sd2 = max(sd1, 1e-6), max(sd2, 1e-6)
    var = sd1 ** 2 + sd2 ** 2
    h2 = 1 - math.sqrt(2 * sd1 * sd2 / var) * math.exp(-((mu1 - mu2) ** 2) / (4 * var))
    return math.sqrt(max(0.0, min(1.0, h2)))


def describe(div: Mapping[str, Mapping[str, float | None]]) -> list[str]:
    """One line per site: ``site-0: labels JS 0.041, patterns JS 0.120, input s2 Hellinger 0.310``."""
    lines = []
    for site, row in div.items():
        parts = [f"{k} {'JS' if k in KINDS else 'Hellinger'} {'-' if v is None else f'{v:.3f}'}"
                 for k, v in row.items()]
        lines.append(f"site {site}: " + ", ".join(parts))
    return lines
