"""Local DP-SGD on a site: per-sample gradients clipped to ``local-clip-norm``, Gaussian noise
``local-noise-multiplier x clip`` on their sum, privacy tracked by Opacus' RDP accountant.

Per-sample gradients are taken one sample at a time (micro-batches of 1) rather than through
Opacus' GradSampleModule: the fusion heads use bare learned parameters (missing-modality tokens)
that GradSampleModule cannot hook, and these models are small. The model must be built with
``encode_absent=True`` (``task.model_config`` does that when ``local-dp`` is on). Batches are
shuffled fixed-size, accounted as Poisson sampling at rate batch/len (the usual approximation).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from mmdomain.data.sample import Batch


def _one(batch: Batch, i: int) -> Batch:
    inputs = {m: (v[i:i + 1] if isinstance(v, Tensor) else [v[i]]) for m, v in batch.inputs.items()}
    return Batch(inputs, {m: p[i:i + 1] for m, p in batch.present.items()},
                 batch.target[i:i + 1] if batch.target is not None else None, batch.meta[i:i + 1])


def private_training(model, loader, optimizer, settings, *, device: torch.device,
                     extra_loss: Callable | None = None) -> dict[str, Any]:
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    clip, sigma = settings.local_clip_norm, settings.local_noise_multiplier
    q = min(1.0, loader.batch_size / max(1, len(loader.dataset)))
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    total, seen, steps = 0.0, 0, 0
    for _ in range(settings.local_epochs):
        for step, batch in enumerate(loader):
            batch = batch.to(device)
            summed = [torch.zeros_like(p) for p in params]
            for i in range(len(batch)):
                one = _one(batch, i)
                loss = model.loss(model(one), one)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]
                norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads))
                factor = min(1.0, clip / (float(norm) + 1e-12))
                for s, g in zip(summed, grads):
                    s.add_(g, alpha=factor)
                total += float(loss.detach())
                seen += 1
            optimizer.zero_grad(set_to_none=True)
            for p, s in zip(params, summed):
                p.grad = (s + torch.randn_like(s) * sigma * clip) / len(batch)
            if extra_loss is not None:  # FedProx term: depends on weights only, not on data
                prox = torch.autograd.grad(extra_loss(model), params, allow_unused=True)
                for p, g in zip(params, prox):
                    if g is not None:
                        p.grad = p.grad + g
            optimizer.step()
            accountant.step(noise_multiplier=sigma, sample_rate=q)
            steps += 1
            if settings.max_steps and step + 1 >= settings.max_steps:
                break
    return {"train-loss": total / max(seen, 1), "train-samples": seen,
            "local-epsilon": float(accountant.get_epsilon(delta=settings.target_delta)) if steps else 0.0}
