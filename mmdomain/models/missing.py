"""Missing-modality methods beyond modality dropout (``ModelConfig.missing``), for every fusion head.

Cross-modal feature imputation (``impute_weight > 0``; in the spirit of Ma et al., "SMIL",
AAAI 2021 and of feature hallucination): a small translator per ordered modality pair
(``translators[b][a]``: modality ``a``'s embedding to ``b``'s, linear or one hidden layer) works
channels-last, so it serves pooled ``[B, D]`` and dense ``[B, D, *S]`` embeddings alike. Where a
row lacks ``b`` but has another modality, ``b``'s embedding becomes the mean of the translations
from the modalities the row has, and the fusion head is told ``b`` is present; the rows that
have ``b`` keep their own (``torch.where``: an absent embedding's values never reach the output).
That holds in training (rows thinned by modality dropout included) and at inference, so a model
scored with fewer modalities than it was trained with sees embeddings of the kind it learned
from. Training adds ``impute_weight`` x each row's mean, over the ordered pairs it holds both
modalities of, of the squared error between the translation and the real embedding (the target
detached: the translator learns to predict the embedding, the encoder of ``b`` is not pulled
toward what is easy to predict). A row holding fewer than two modalities adds 0.

Distillation from a full-modality teacher (``distill_weight > 0``, with ``modality_dropout``):
the teacher is the model itself on the rows as they came (every modality they have), run without
gradient; the student is the same model on the rows modality dropout thinned. On each thinned
row the student's output is pulled toward the teacher's with the task's ``distill_losses`` (the
KL divergence of the softened predictions, x ``T**2`` as in Hinton et al. 2015); rows dropout left
whole add 0. The encoders then run on the rows as they came (the thinned rows' embeddings feed the
teacher, and only the teacher: the student's heads mask them out), which costs the encoding that
dropout otherwise saves.

Both terms are sums of per-row terms (what ``FusionModel.sample_losses`` returns for per-sample
gradient DP); both are refused for tasks without a target (contrastive pretraining).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..config import MissingConfig
from ..errors import ConfigError
from ..fusion.base import channels_first, channels_last, mask_like

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..tasks.base import Task


def check_task(config: MissingConfig, task: "Task", task_name: str) -> None:
    """A clear ``ConfigError`` when ``task`` cannot take the methods ``config`` asks for."""
    if not config.active:
        return
    kind = getattr(task, "kind", "?")
    if not task.needs_target:
        raise ConfigError(f"missing: task {task_name!r} ({kind}) has no target; imputation and distillation apply "
                          "to supervised tasks (multiclass, multilabel, segmentation)")
    from ..tasks.base import Task

    if config.distill and type(task).distill_losses is Task.distill_losses:
        raise ConfigError(f"missing.distill_weight: task {task_name!r} ({kind}) has no distillation loss "
                          "(Task.distill_losses)")


def build_translators(config: MissingConfig, dims: dict[str, int]) -> nn.ModuleDict | None:
    """``translators[b][a]`` for every ordered pair of distinct modalities (``impute_weight > 0``)."""
    if not config.impute:
        return None

    def one(src: int, dst: int) -> nn.Module:
        if config.impute_hidden <= 0:
            return nn.Linear(src, dst)
        return nn.Sequential(nn.Linear(src, config.impute_hidden), nn.GELU(), nn.Linear(config.impute_hidden, dst))

    names = sorted(dims)
    return nn.ModuleDict({b: nn.ModuleDict({a: one(dims[a], dims[b]) for a in names if a != b}) for b in names})


def _zero(x: Tensor) -> Tensor:
    return torch.zeros((), dtype=x.dtype, device=x.device)


def _translations(translators: nn.ModuleDict, embeddings: dict[str, Tensor], present: dict[str, Tensor], b: str):
    """Channels-last translations into ``b`` from each other modality, each zero where its source is absent."""
    for a, translator in translators[b].items():
        x = channels_last(embeddings[a])
        mask = mask_like(present[a], x)
        y = translator(torch.where(mask, x, _zero(x)))
        yield a, torch.where(mask_like(present[a], y), y, _zero(y)), mask


def impute(translators: nn.ModuleDict, embeddings: dict[str, Tensor],
           present: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Embeddings with each absent one filled by the mean translation from the present ones, and
    the presence the fusion head sees (a modality counts as present where it was filled in)."""
    filled, seen = {}, {}
    for b in sorted(translators):
        total = count = None
        for _, y, mask in _translations(translators, embeddings, present, b):
            n = mask.to(y.dtype)
            total, count = (y, n) if total is None else (total + y, count + n)
        own = channels_last(embeddings[b])
        guess = (total / count.clamp(min=1)).to(own.dtype)
        filled[b] = channels_first(torch.where(mask_like(present[b], own), own, guess))
        others = torch.stack([present[a] for a in translators[b]], dim=1).any(1)
        seen[b] = present[b] | others
    return filled, seen


def impute_sample_losses(translators: nn.ModuleDict, embeddings: dict[str, Tensor],
                         present: dict[str, Tensor]) -> Tensor:
    """``[B]``: each row's mean over the ordered pairs it holds both modalities of of the squared
    error (mean over features and cells) between translation and the (detached) real embedding."""
    total = pairs = None
    for b in sorted(translators):
        target = channels_last(embeddings[b]).detach().float()
        for a, y, _ in _translations(translators, embeddings, present, b):
            both = present[a] & present[b]
            err = (y.float() - target).pow(2).flatten(1).mean(1)
            err = torch.where(both, err, torch.zeros((), dtype=err.dtype, device=err.device))
            total, pairs = (err, both.float()) if total is None else (total + err, pairs + both.float())
    return total / pairs.clamp(min=1)


def thinned_rows(observed: dict[str, Tensor], kept: dict[str, Tensor]) -> Tensor:
    """``bool[B]``: the rows from which modality dropout removed a modality."""
    return torch.stack([observed[m] & ~kept[m] for m in sorted(observed)], dim=1).any(1)


def distill_sample_losses(task: "Task", student, teacher, thinned: Tensor, temperature: float) -> Tensor:
    """``[B]``: the task's distillation loss on the thinned rows, 0 on the others."""
    losses = task.distill_losses(student, teacher.detach(), temperature)
    return torch.where(thinned, losses, torch.zeros((), dtype=losses.dtype, device=losses.device))
