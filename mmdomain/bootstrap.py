"""Is model A better than models B, C, ... on this test set, or just lucky? A paired bootstrap.

``predictions`` runs a model over a loader once and keeps what its task scores, row by row.
``paired_bootstrap`` resamples the test rows with replacement and recomputes one metric for
every model on the same resample, so the margin ``reference - max(others)`` keeps the pairing
(a hard resample is hard for every model). It reports the point margin, a percentile interval
and the share of resamples in which the reference beats every other model.

It quantifies test-set sampling only; training randomness needs repeated runs (seeds).
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable

import numpy as np
import torch
from torch import Tensor

from .data.availability import scored_rows
from .data.sample import Batch
from .errors import MMDomainError
from .models.compose import FusionModel
from .tasks.base import Task
from .training import autocast


@torch.no_grad()
def predictions(model: FusionModel, loader: Iterable[Batch], *, device: torch.device | None = None,
                bf16: bool = True) -> tuple[Tensor, Tensor]:
    """``(preds, target)`` on the CPU, one row per scored sample, in the loader's order.

    Rows with none of the model's modalities are skipped, as ``evaluate`` skips them. Tasks
    not scored row by row (contrastive retrieval ranks a whole set) cannot be bootstrapped.
    """
    device = device or next(model.parameters()).device
    model.eval()
    preds, target = [], []
    for batch in loader:
        batch = batch.to(device)
        keep = scored_rows(batch.present, model.modalities)
        if not bool(keep.any()):
            continue
        with autocast(device, bf16):
            out = model(batch)
        args = model.task.metric_inputs(out.output, batch.target, batch.present)
        if args is None or not isinstance(args[0], Tensor) or args[1] is None:
            raise MMDomainError(f"bootstrap: task {type(model.task).__name__} is not scored row by row")
        idx = keep.nonzero().squeeze(1)
        preds.append(args[0][idx].float().cpu())
        target.append(args[1][idx].cpu())
    if not preds:
        raise MMDomainError("bootstrap: the test set has no sample with any of the model's modalities")
    return torch.cat(preds), torch.cat(target)


def _score(metric, preds: Tensor, target: Tensor) -> float:
    metric.reset()
    metric.update(preds, target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(metric.compute())


def paired_bootstrap(task: Task, metric: str, reference: Tensor, others: dict[str, Tensor], target: Tensor,
                     *, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Bootstrap ``reference - max(others)`` of ``metric`` (a name from ``task.make_metrics()``).

    ``reference`` and each of ``others`` are predictions on the same rows, whose truth is
    ``target``. Resamples on which the metric is undefined (e.g. a label with no positive)
    are left out and counted. Higher is taken to be better.
    """
    collection = task.make_metrics()
    if metric not in collection:
        raise MMDomainError(f"bootstrap: unknown metric {metric!r}; the task has {sorted(collection.keys())}")
    if not others:
        raise MMDomainError("bootstrap: nothing to compare the reference with")
    n = len(target)
    for name, p in {"reference": reference, **others}.items():
        if len(p) != n:
            raise MMDomainError(f"bootstrap: {name} has {len(p)} predictions for {n} test rows")
    m = collection[metric]
    point = {name: _score(m, p, target) for name, p in others.items()}
    ref = _score(m, reference, target)
    rng = np.random.default_rng(seed)
    margins, wins, undefined = [], 0, 0
    for _ in range(resamples):
        idx = torch.from_numpy(rng.integers(0, n, n))
        r = _score(m, reference[idx], target[idx])
        best = max(_score(m, p[idx], target[idx]) for p in others.values())
        if not (math.isfinite(r) and math.isfinite(best)):
            undefined += 1
            continue
        margins.append(r - best)
        wins += r > best
    if not margins:
        raise MMDomainError(f"bootstrap: {metric} is undefined on every resample of these {n} rows")
    lo, hi = np.quantile(margins, [(1 - level) / 2, (1 + level) / 2])
    return {"metric": metric, "rows": n, "reference": ref, "others": point, "margin": ref - max(point.values()),
            "interval": [float(lo), float(hi)], "level": level, "beats_all_share": wins / len(margins),
            "resamples": len(margins), "undefined_resamples": undefined}
