"""Local DP-SGD on a site, with Opacus: Poisson-sampled batches (rate batch/len), per-sample
gradients from ``GradSampleModule``'s layer hooks, each clipped to ``local-clip-norm``, Gaussian
noise ``local-noise-multiplier x clip`` on their sum (``DPOptimizer``), privacy tracked by
Opacus' RDP accountant.

Per-sample gradients, the fastest path that works for the model (chosen on its first batch, kept):

1. Opacus' layer hooks, when every trainable parameter sits in a layer Opacus has a rule for (its
   own Linear, Conv, norms, Embedding...; the fusion heads' ``MissingToken`` rule is registered here);
2. else, or when the hooks cannot run (MONAI's ResNet adds its residual in place onto a hooked
   layer's output), ``torch.func``: ``vmap`` over the gradient of one sample's loss through the whole
   model (``functional_call`` with the trainable parameters; dropout drawn per sample). This covers
   ``nn.MultiheadAttention`` (cross-attention fusion, the tiny text transformer) and Hugging Face
   BERT encoders alike;
3. else (a model whose forward branches on tensor values, which ``vmap`` cannot trace), each
   sample's gradient alone, one sample at a time: exact and slow, the checked fallback.

All three fill the same ``grad_sample``; the rest (clipping, noise, accountant, sampling) is
Opacus'. Opacus' own functorch fallback is not relied on: it replays a layer on its first input
only, and without its keyword arguments (masks).

What the model must allow (checked before training, a ``ConfigError`` otherwise):

- every layer sees the whole batch: the model is built with ``encode_absent=True``
  (``task.model_config`` does that when ``local-dp`` is on);
- the task has ``sample_losses``, each sample's loss on its own (a loss normalised over the batch
  couples samples; contrastive losses compare them, so they have none).

Not ``PrivacyEngine.make_private``: its Poisson loader reads ``dataset[0]`` as a tuple of tensors
and builds empty batches only of tensors, dicts and lists, which a ``Sample``/``Batch`` is not.
The same parts are put together here. Sampling and noise use generators seeded from the OS, not
from the run's seed: the server knows that seed and could replay both. The FedProx term depends
on the weights only, so its gradient is added after clipping and noise.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from opacus.grad_sample import GradSampleModule, register_grad_sampler
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap
from torch.utils.data import DataLoader

from mmdomain.data.sample import Batch
from mmdomain.errors import ConfigError
from mmdomain.fusion.base import MissingToken, mask_like
from mmdomain.models import balance
from mmdomain.tasks.base import Task

from .budget import local_epsilon, local_steps, plan_local


# A layer whose inputs need no gradient (the first conv, an embedding) gets its per-sample rule
# from the output's gradient, as it should; torch warns about that on every such layer.
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with respect "
                        "to module outputs since no inputs require gradients")


@register_grad_sampler(MissingToken)
def missing_token_grad_sample(layer: MissingToken, activations: list[Tensor], backprops: Tensor) -> dict:
    """A sample's gradient for the token: the output's gradient summed over the positions where
    the token stood in (``backprops`` is channels-last ``[B, *S, D]``, like the output)."""
    _, present = activations
    absent_only = torch.where(mask_like(present, backprops), 0.0, backprops)
    return {layer.weight: absent_only.reshape(len(backprops), -1, backprops.shape[-1]).sum(1)}


def unsupported_layers(model: nn.Module) -> list[str]:
    """Layers holding trainable parameters that Opacus has no per-sample-gradient rule for."""
    return [f"{name or '(model)'} ({type(m).__name__})" for name, m in model.named_modules()
            if any(p.requires_grad for p in m.parameters(recurse=False))
            and type(m) not in GradSampleModule.GRAD_SAMPLERS]


def check_model(model: nn.Module) -> None:
    if not model.config.encode_absent:
        raise ConfigError("local-dp: the model must be built with encode_absent=True (task.model_config does it)")
    if model.config.batch_norm != "group":
        raise ConfigError("local-dp: the model must be built with batch_norm='group' (task.model_config does it)")
    balance.check_per_sample(model.config.balance)
    if getattr(type(model.task), "sample_losses", Task.sample_losses) is Task.sample_losses:
        raise ConfigError(f"local-dp: task {model.config.task.name!r} has no per-sample loss (sample_losses); "
                          "DP-SGD needs one")


def _one(batch: Batch, i: int) -> Batch:
    inputs = {m: (v[i:i + 1] if isinstance(v, Tensor) else [v[i]]) for m, v in batch.inputs.items()}
    return Batch(inputs, {m: p[i:i + 1] for m, p in batch.present.items()},
                 batch.target[i:i + 1] if batch.target is not None else None, batch.meta[i:i + 1])


def one_sample_at_a_time(model: nn.Module, batch: Batch, params: list[nn.Parameter]) -> Tensor:
    """Each sample's gradient alone into ``p.grad_sample`` (what the hooks would give); the losses."""
    per_param: list[list[Tensor]] = [[] for _ in params]
    losses = []
    for i in range(len(batch)):
        one = _one(batch, i)
        loss = model.sample_losses(model(one), one).sum()
        for acc, g, p in zip(per_param, torch.autograd.grad(loss, params, allow_unused=True), params):
            acc.append(g if g is not None else torch.zeros_like(p))
        losses.append(loss.detach())
    for p, acc in zip(params, per_param):
        p.grad_sample = torch.stack(acc)
    return torch.stack(losses)


class NotVectorisable(RuntimeError):
    """The model's forward cannot run under ``vmap`` (the reason is the message)."""


def vectorised(model: nn.Module, batch: Batch, params: list[nn.Parameter]) -> Tensor:
    """Each sample's gradient into ``p.grad_sample`` by ``torch.func`` (``vmap`` of ``grad``: the
    model's own forward on a batch of one, every sample at once); the losses. ``NotVectorisable``
    when the model cannot be traced so (nothing is written then)."""
    names = {id(p): n for n, p in model.named_parameters()}
    trainable = {names[id(p)]: p.detach() for p in params}
    batch = model.tokenize(batch)  # text as token ids: vmap maps over tensors only
    if any(not isinstance(v, Tensor) for v in batch.inputs.values()) or batch.target is None:
        raise NotVectorisable("the batch holds inputs that are not tensors or no target")
    meta = [{}]

    def loss_of_one(weights, inputs, present, target):
        one = Batch({m: x.unsqueeze(0) for m, x in inputs.items()}, {m: p.unsqueeze(0) for m, p in present.items()},
                    target.unsqueeze(0), meta)
        return model.sample_losses(functional_call(model, weights, (one,)), one).sum()

    per_sample = vmap(grad_and_value(loss_of_one), in_dims=(None, 0, 0, 0), randomness="different")
    try:
        grads, losses = per_sample(trainable, batch.inputs, batch.present, batch.target)
    except (RuntimeError, NotImplementedError, ValueError) as exc:
        raise NotVectorisable(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    for p in params:
        p.grad_sample = grads[names[id(p)]]
    return losses.detach()


def _hook_failure(exc: RuntimeError) -> bool:
    return "BackwardHookFunction" in str(exc)


class PerSampleGradients:
    """The per-sample gradient path of one training run: ``hooks`` (Opacus), ``vmap`` (torch.func)
    or ``one-at-a-time``, from the fastest the model allows; a path that fails on a batch is given
    up for the next one on that batch and the rest of the run (``fallbacks`` says why)."""

    def __init__(self, model: nn.Module, *, hooks: bool = True):
        self.model = model
        self.hooked: GradSampleModule | None = None
        self.fallbacks: list[str] = []
        if hooks and not unsupported_layers(model):
            self.hooked = GradSampleModule(model)  # hooks on model's own layers: its parameters get .grad_sample
            self.hooked.forbid_grad_accumulation()
            self.path = "hooks"
        else:
            self.path = "vmap"

    def __call__(self, batch: Batch, dp: DPOptimizer, params: list[nn.Parameter]) -> Tensor:
        """Each sample's gradient into ``p.grad_sample``; the per-sample losses."""
        if self.path == "hooks":
            try:
                losses = self.model.sample_losses(self.hooked(batch), batch)
                losses.mean().backward()  # Opacus undoes the mean: grad_sample is each sample's own
                return losses
            except RuntimeError as exc:
                if not _hook_failure(exc):
                    raise
                self._give_up("hooks", exc)
                dp.zero_grad(set_to_none=True)
        if self.path == "vmap":
            try:
                return vectorised(self.model, batch, params)
            except NotVectorisable as exc:
                self._give_up("vmap", exc)
        return one_sample_at_a_time(self.model, batch, params)

    def _give_up(self, path: str, exc: Exception) -> None:
        if path == "hooks":
            self.hooked.cleanup()  # this model defeats the hooks
            self.hooked = None
            self.path = "vmap"
        else:
            self.path = "one-at-a-time"
        self.fallbacks.append(f"{path}: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}")

    def cleanup(self) -> None:
        if self.hooked is not None:
            self.hooked.cleanup()  # hooks and per-sample attributes off the model's layers
            self.hooked = None


class _CollateOrNone:
    """The loader's collate; ``None`` for an empty Poisson batch."""

    def __init__(self, collate: Callable):
        self.collate = collate

    def __call__(self, samples: list):
        return self.collate(samples) if samples else None


def poisson_loader(loader: DataLoader, sample_rate: float, generator: torch.Generator,
                   steps: int | None = None) -> DataLoader:
    """``loader``'s dataset and collate, ``steps`` batches (default ``1/sample_rate``, Opacus'
    epoch) each drawn by Poisson sampling at ``sample_rate`` (each sample in each with that chance)."""
    sampler = UniformWithReplacementSampler(num_samples=len(loader.dataset), sample_rate=sample_rate,
                                            generator=generator, steps=steps)
    return DataLoader(loader.dataset, batch_sampler=sampler, collate_fn=_CollateOrNone(loader.collate_fn),
                      pin_memory=loader.pin_memory)


def site_noise(settings, n: int, batch_size: int) -> float:
    """This site's noise multiplier: planned from ``target-epsilon`` over the whole training
    (rounds x local epochs, from the site's own ``n``; ``budget.plan_local``), else the configured one."""
    if settings.target_epsilon > 0:
        return plan_local(settings.target_epsilon, settings.target_delta, n=n, batch_size=batch_size,
                          epochs=settings.local_epochs, rounds=settings.num_server_rounds).noise_multiplier
    return settings.local_noise_multiplier


def private_training(model, loader: DataLoader, optimizer: torch.optim.Optimizer, settings, *,
                     device: torch.device, extra_loss: Callable | None = None, server_round: int = 1) -> dict[str, Any]:
    """``settings.local_epochs`` of DP-SGD on ``model``'s trainable parameters (trained in place,
    names unchanged; frozen encoders cost no privacy); ``loader`` gives the dataset, collate and
    mean batch size. Returns train-loss, train-samples, the noise used and ``local-epsilon``: what
    the site has spent by the end of ``server_round`` (at ``settings.target_delta``), counting every
    earlier round as this one's steps (an over-estimate for a site that missed a round)."""
    model.train()
    check_model(model)
    n = len(loader.dataset)
    rate, round_steps = local_steps(n, loader.batch_size, settings.local_epochs)  # as the planner counts them
    noise_multiplier = site_noise(settings, n, loader.batch_size)
    sampling, noise = torch.Generator(), torch.Generator(device=device)
    sampling.seed(), noise.seed()
    batches = poisson_loader(loader, rate, sampling, round_steps)
    per_sample = PerSampleGradients(model)
    dp = DPOptimizer(optimizer, noise_multiplier=noise_multiplier,
                     max_grad_norm=settings.local_clip_norm, expected_batch_size=rate * n, generator=noise)
    params = dp.params
    total, seen, steps = 0.0, 0, 0
    try:
        for step, batch in enumerate(batches):  # local_epochs passes: ceil(local_epochs / rate) batches
            dp.zero_grad(set_to_none=True)
            size = 0 if batch is None else len(batch)
            if size:
                batch = batch.to(device, non_blocking=True)
                losses = per_sample(batch, dp, params)
                total += float(losses.detach().sum())
                seen += size
            _noised_step(model, dp, params, size, extra_loss)
            steps += 1
            if settings.max_steps and step + 1 >= settings.max_steps:
                break
    finally:
        per_sample.cleanup()
        for p in params:
            if hasattr(p, "grad_sample"):
                del p.grad_sample  # the vmap and one-sample-at-a-time paths set it too
    spent = local_epsilon(noise_multiplier, rate, steps * max(server_round, 1), settings.target_delta) if steps else 0.0
    return {"train-loss": total / max(seen, 1), "train-samples": seen, "local-noise-multiplier": noise_multiplier,
            "local-epsilon": spent, "per-sample-path": per_sample.path}


def _noised_step(model, dp: DPOptimizer, params: list[nn.Parameter], size: int, extra_loss: Callable | None) -> None:
    """Clip each sample, sum, add noise, divide by the expected batch, account; then the FedProx
    gradient (weights only, after the noise) and the optimizer's step."""
    for p in params:  # a layer this batch did not reach (an empty batch; a modality no sample has)
        if p.grad_sample is None:
            p.grad_sample = p.new_zeros((size, *p.shape))
    dp.pre_step()
    if extra_loss is not None:
        for p, g in zip(params, torch.autograd.grad(extra_loss(model), params, allow_unused=True)):
            if g is not None:
                p.grad += g
    dp.original_optimizer.step()
