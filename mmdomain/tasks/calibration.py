"""Calibration of the classification tasks: temperatures per availability pattern.

A model that lacks a modality should be less sure. Temperature scaling (Guo et al., 2017) divides
the logits by one scalar fitted on held-out rows (minimum validation NLL); here there is one per availability pattern
(``"dicom_image"``, ``"dicom_image+report"``...), each fitted on the validation rows of that
pattern, and ``"*"`` on all rows for patterns with too few (or unseen). Ranking metrics (AUROC)
are unchanged by it; expected calibration error (``ece``, in every classification task's
metrics) is what it lowers.

The temperatures live in the task's options (``calibration = {pattern: T}``), so they travel in
the checkpoint's model config and need no tensor: ``fit_temperatures`` computes them,
``calibrate`` sets them on a model.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.availability import row_patterns, scored_rows

if TYPE_CHECKING:  # pragma: no cover
    from ..data.sample import Batch
    from ..models.compose import FusionModel

ALL = "*"  # the temperature of every row whose pattern has none of its own
MIN_ROWS = 30  # validation rows a pattern needs for its own temperature
BOUNDS = (0.05, 20.0)


def row_temperatures(calibration: Mapping[str, float] | None, present: Mapping[str, Tensor],
                     like: Tensor) -> Tensor | None:
    """``[B, 1]`` temperatures for the rows of a batch (None when the task is uncalibrated)."""
    if not calibration:
        return None
    default = float(calibration.get(ALL, 1.0))
    patterns = row_patterns(present) if present else [ALL] * like.shape[0]
    values = [float(calibration.get(p, default)) for p in patterns]
    return torch.tensor(values, dtype=like.dtype, device=like.device).unsqueeze(1)


def check_calibration(calibration: Mapping[str, float] | None) -> dict[str, float] | None:
    """The option as given, or ``ValueError`` naming a bad entry."""
    if calibration is None:
        return None
    if not isinstance(calibration, Mapping):
        raise ValueError(f"calibration must be a table of pattern = temperature, got {type(calibration).__name__}")
    out = {}
    for pattern, t in calibration.items():
        if not isinstance(pattern, str) or not isinstance(t, (int, float)) or not BOUNDS[0] <= t <= BOUNDS[1]:
            raise ValueError(f"calibration: {pattern!r} = {t!r}; temperatures are numbers in "
                             f"[{BOUNDS[0]}, {BOUNDS[1]}] keyed by availability pattern or '*'")
        out[pattern] = float(t)
    return out


def _nll(logits: Tensor, target: Tensor, multilabel: bool) -> Tensor:
    if multilabel:
        known = target >= 0
        raw = F.binary_cross_entropy_with_logits(logits, target.clamp(min=0).float(), reduction="none")
        return (raw * known).sum() / known.sum().clamp(min=1)
    return F.cross_entropy(logits, target.long())


@torch.no_grad()
def _fit_one(logits: Tensor, target: Tensor, multilabel: bool) -> float:
    """The temperature minimising the validation NLL: a log-spaced grid over ``BOUNDS``, then a
    golden-section search between the best point's neighbours (NLL is unimodal in log T)."""
    grid = torch.linspace(math.log(BOUNDS[0]), math.log(BOUNDS[1]), 41)
    losses = torch.stack([_nll(logits / float(g.exp()), target, multilabel) for g in grid])
    i = int(losses.argmin())
    lo, hi = float(grid[max(i - 1, 0)]), float(grid[min(i + 1, len(grid) - 1)])

    def f(log_t: float) -> float:
        return float(_nll(logits / math.exp(log_t), target, multilabel))

    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(24):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = f(b)
    t = math.exp((lo + hi) / 2)
    return min(max(t, BOUNDS[0]), BOUNDS[1]) if math.isfinite(t) else 1.0


@torch.no_grad()
def _collect(model: FusionModel, loader: Iterable[Batch], device: torch.device) -> tuple[Tensor, Tensor, list[str]]:
    model.eval()
    logits, target, patterns = [], [], []
    for batch in loader:
        batch = batch.to(device)
        keep = scored_rows(batch.present, model.modalities)
        if not bool(keep.any()):
            continue
        out = model(batch).output.float()
        idx = keep.nonzero().squeeze(1)
        logits.append(out[idx].cpu())
        target.append(batch.target[idx].cpu())
        pats = row_patterns({m: batch.present[m] for m in model.modalities})
        patterns += [pats[i] for i in idx.tolist()]
    if not logits:
        raise ValueError("calibration: the validation split has no row with any of the model's modalities")
    return torch.cat(logits), torch.cat(target), patterns


def fit_temperatures(model: FusionModel, loader: Iterable[Batch], *, min_rows: int = MIN_ROWS,
                     device: torch.device | None = None) -> dict[str, float]:
    """``{"*": T, pattern: T_p...}`` fitted on ``loader`` (the validation split) for ``model``."""
    if model.task.kind != "classification":
        raise ValueError(f"calibration applies to classification tasks, not {model.task.kind!r}")
    device = device or next(model.parameters()).device
    logits, target, patterns = _collect(model, loader, device)
    return temperatures_for(logits, target, patterns, multilabel=not hasattr(model.task, "num_classes"),
                            min_rows=min_rows)


def temperatures_for(logits: Tensor, target: Tensor, patterns: list[str], *, multilabel: bool,
                     min_rows: int = MIN_ROWS) -> dict[str, float]:
    """One temperature for all rows (``"*"``) and one per pattern with ``min_rows`` rows or more."""
    out = {ALL: _fit_one(logits, target, multilabel)}
    for p in sorted(set(patterns)):
        rows = torch.tensor([q == p for q in patterns])
        if int(rows.sum()) >= min_rows:
            out[p] = _fit_one(logits[rows], target[rows], multilabel)
    return {k: round(v, 4) for k, v in out.items()}


def calibrate(model: FusionModel, temperatures: Mapping[str, float]) -> None:
    """Set ``temperatures`` on ``model``'s task and in its config (so a saved checkpoint has them)."""
    checked = check_calibration(temperatures)
    model.task.calibration = checked
    model.config.task.options = {**model.config.task.options, "calibration": checked}
