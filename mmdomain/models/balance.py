"""Remedies for modality imbalance (``ModelConfig.balance``): naive fusion lets the modality that
learns fastest dominate, and the other stays under-trained (fusion can then lose to one modality).

Unimodal auxiliary heads (``aux_weight > 0``): a small head per modality, built by the task
(``Task.unimodal_head``), predicts the target from that modality's embedding alone (the dict
``FusionModel.encode`` returns, so it works with every fusion head). The loss adds ``aux_weight``
times the mean over modalities of each head's loss, taken per row: row ``i`` adds
``(1/M) sum_m [m present in i] * loss_m(i)`` (the task's own ``sample_losses``), so a row without
the modality adds exactly 0 to its head (its embedding is zeroed first, its loss masked with
``where``: no fill value reaches the loss or the gradient). Each modality's term is thus its
per-row loss averaged over the batch with absent rows counting 0: at full availability exactly
the mean of the per-modality losses. Being a sum of per-row terms, it is a row's own
(``sample_losses``), so per-sample-gradient DP-SGD trains the same objective; nothing indexes by
presence, so ``vmap`` traces it. The heads train only (no aux output in eval mode); predictions
stay the fusion head's.

OGM / OGM-GE gradient modulation (``modulation``; Peng et al., "Balanced Multimodal Learning via
On-the-fly Gradient Modulation", CVPR 2022). After each backward pass, before the optimiser step
(``training.train_one_epoch``, the core loop), each modality ``m`` gets a unimodal score on the
batch, ``s_m`` = the mean over the rows having ``m`` of ``exp(-loss)`` of a unimodal prediction:
for multi-class cross-entropy exactly the softmax probability of the true class (the paper's
score), for multi-label the geometric mean over the known labels of the probability given to the
true value. The unimodal prediction is the auxiliary head's when there are heads, else the fusion
model's own with only ``m`` marked present (every head takes any availability; for late fusion
that is the modality's own logit contribution, as in the paper). Its discrepancy ratio
``r_m = s_m / mean_{k != m} s_k`` (two modalities: the paper's ``s_a / s_v``) gives the coefficient
``k_m = 1 - tanh(alpha * max(r_m - 1, 0))``: the dominant modality's encoder gradients are scaled
by ``k_m < 1``, the others' are left as they are. ``ogm-ge`` then adds, as the paper's
generalisation enhancement does, Gaussian noise with each parameter gradient's own standard
deviation to every scored encoder's gradient. The FedProx term's gradient is added after the
modulation (it is not part of the batch's learning signal).

Modulation and per-sample-gradient DP-SGD do not mix: the coefficient is computed from the whole
batch (one row changes every other row's clipped contribution, so the clipping no longer bounds a
row's influence), and applied after the noise it would be a function of un-noised private data.
``FusionModel.sample_losses`` (what every DP-SGD path calls) refuses it (``check_per_sample``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..config import BalanceConfig
from ..errors import ConfigError
from ..fusion.base import mask_like

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..data.sample import Batch
    from ..tasks.base import Task
    from .compose import FusionModel, ModelOutput


def check_task(config: BalanceConfig, task: "Task", task_name: str) -> None:
    """A clear ``ConfigError`` when ``task`` cannot take the remedies ``config`` asks for."""
    if not config.active:
        return
    kind = getattr(task, "kind", "?")
    if not task.needs_target:
        raise ConfigError(f"balance: task {task_name!r} ({kind}) has no target for a modality to predict alone; "
                          "aux_weight and modulation apply to supervised tasks (multiclass, multilabel)")
    if not _has_sample_losses(task):
        raise ConfigError(f"balance: task {task_name!r} ({kind}) has no per-sample loss (sample_losses), "
                          "which the unimodal losses and scores are made of")


def _has_sample_losses(task: "Task") -> bool:
    from ..tasks.base import Task

    return type(task).sample_losses is not Task.sample_losses


def build_heads(config: BalanceConfig, task: "Task", dims: dict[str, int], task_name: str) -> nn.ModuleDict | None:
    """One unimodal head per modality (``aux_weight > 0``), else None; the task checked first."""
    check_task(config, task, task_name)
    if config.aux_weight <= 0:
        return None
    heads = {m: task.unimodal_head(d) for m, d in sorted(dims.items())}
    if any(h is None for h in heads.values()):
        raise ConfigError(f"balance.aux_weight: task {task_name!r} ({getattr(task, 'kind', '?')}) has no unimodal "
                          "head (Task.unimodal_head); auxiliary heads apply to multiclass and multilabel tasks")
    return nn.ModuleDict(heads)


def _pooled(x: Tensor) -> Tensor:
    return x.flatten(2).mean(-1) if x.dim() > 2 else x


def aux_outputs(heads: nn.ModuleDict, embeddings: dict[str, Tensor], present: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each head's output on its modality's embedding, absent rows' embeddings zeroed first."""
    out = {}
    for m, head in heads.items():
        e = _pooled(embeddings[m])
        out[m] = head(torch.where(mask_like(present[m], e), e, torch.zeros((), dtype=e.dtype, device=e.device)))
    return out


def unimodal_fallback(output: Tensor, aux: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
    """``output`` with each row that holds exactly one modality ``m`` replaced by ``aux[m]``'s row
    (``missing.unimodal_fallback``, evaluation only); rows with two or more modalities unchanged."""
    count = torch.stack([present[m] for m in aux]).sum(0)
    for m, a in aux.items():
        output = torch.where(mask_like(present[m] & (count == 1), output), a.to(output.dtype), output)
    return output


def aux_sample_losses(task: "Task", aux: dict[str, Tensor], target: Tensor, present: dict[str, Tensor]) -> Tensor:
    """``[B]``: row ``i``'s ``(1/M) sum_m [m present] * loss_m(i)`` (0 for an absent modality)."""
    total = None
    for m, output in aux.items():
        losses = task.sample_losses(output, target, present)
        term = torch.where(present[m], losses, torch.zeros((), dtype=losses.dtype, device=losses.device))
        total = term if total is None else total + term
    return total / len(aux)


def check_per_sample(config: BalanceConfig) -> None:
    """Refuse gradient modulation where each sample's loss is trained on its own (DP-SGD)."""
    if config.modulation != "none":
        raise ConfigError(f"balance.modulation = {config.modulation!r} cannot be used with per-sample-gradient "
                          "training (local DP-SGD): its coefficient comes from the whole batch, so a row's clipped "
                          "gradient would depend on the other rows and the privacy bound would not hold; set "
                          "balance.modulation = 'none' (the auxiliary heads, aux_weight, do work with DP-SGD)")


@torch.no_grad()
def unimodal_scores(model: "FusionModel", out: "ModelOutput", batch: "Batch") -> dict[str, Tensor]:
    """``s_m`` per modality with rows in the batch (a 0-d tensor each): the mean over the rows
    having ``m`` of ``exp(-loss)`` of the unimodal prediction (aux head, else the fusion model
    with only ``m`` present)."""
    present, task = out.present, model.task
    scores = {}
    for m in model.modalities:
        has = present[m]
        count = has.sum()
        if out.aux is not None:
            pred = out.aux[m]
        else:  # after backward, outside autocast: in float32, as the heads' weights are
            embeddings = {k: e.float() for k, e in out.embeddings.items()}
            alone = {k: (v if k == m else torch.zeros_like(v)) for k, v in present.items()}
            pred = task(model.fusion(embeddings, alone), embeddings, alone)
        likelihood = torch.exp(-task.sample_losses(pred, batch.target, present).float())
        scores[m] = (torch.where(has, likelihood, 0.0).sum() / count.clamp(min=1), count > 0)
    return {m: s for m, (s, has_rows) in scores.items() if bool(has_rows)}


def ogm_coefficients(scores: dict[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """``k_m = 1 - tanh(alpha * max(r_m - 1, 0))`` with ``r_m = s_m / mean_{k != m} s_k``; a
    modality alone in the batch has nothing to be compared with (none then: no modulation)."""
    if len(scores) < 2:
        return {}
    total = sum(scores.values())
    coefficients = {}
    for m, s in scores.items():
        others = (total - s) / (len(scores) - 1)
        ratio = s / others.clamp(min=1e-12)
        coefficients[m] = 1 - torch.tanh(alpha * (ratio - 1).clamp(min=0))
    return coefficients


@torch.no_grad()
def modulate(model: "FusionModel", out: "ModelOutput", batch: "Batch") -> dict[str, Tensor]:
    """Scale each scored encoder's gradients by its coefficient (``ogm-ge``: plus Gaussian noise of
    each gradient's own standard deviation); the coefficients. Call between backward and step."""
    config = model.config.balance
    if config.modulation == "none" or batch.target is None:
        return {}
    coefficients = ogm_coefficients(unimodal_scores(model, out, batch), config.alpha)
    for m, k in coefficients.items():
        for p in model.encoders[m].parameters():
            if p.grad is None:
                continue
            spread = p.grad.std() if config.modulation == "ogm-ge" and p.grad.numel() > 1 else None
            p.grad.mul_(k.to(p.grad.dtype))
            if spread is not None:
                p.grad.add_(torch.randn_like(p.grad) * (spread + 1e-8))
    return coefficients
