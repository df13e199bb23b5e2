"""Personalisation (issue #16 item 3): what of the model stays at the site, and each site's
personalised model.

``personalise`` in the run config:

- ``fedbn`` (Li et al. 2021): every normalisation layer (BatchNorm, GroupNorm, LayerNorm,
  InstanceNorm: their weights, biases and running statistics) stays at the site. A site never
  sends them and keeps its own from round to round; the server averages the rest.
- ``fedper`` (Arivazhagan et al. 2019), modality-aware: the fusion and task heads stay at the site,
  the encoders are shared (each averaged over the sites holding its modality, as always).
- ``finetune``: everything is shared during training; after the last round each site fine-tunes the
  global model on its own training split for ``finetune-epochs`` epochs. With ``finetune-select =
  "val-loss"`` the site keeps, of the global model (epoch 0) and each epoch's model, the one with the
  lowest loss on its own validation split (early stopping: where fine-tuning does not help a site, it
  keeps the global model); ``"last"`` (the default) keeps the last epoch's.
- ``ditto`` (Li et al. 2021): everything is shared and trained as usual; each round a site also
  trains a model of its own, from its own of the last round (round 1: the global model), on the
  same local epochs with ``ditto-lambda / 2 ||v - w||^2`` pulling it toward the global model ``w``
  it was sent. Twice a site's compute; the global model is FedAvg's.

Each site's personalised model is the global model with what it kept (fedbn, fedper), the fine-tuned
global model (finetune) or its own model (ditto). It never leaves the site: the server asks each
site to score it on its own test split (``evaluate`` with ``personalised``), and only those metrics
come back. A site given ``personal-dir`` in its node config writes it there
(``personal-<run id>.safetensors``). Fine-tuning and Ditto's own model are not private training even in a local-DP
run: the model they change stays at the site.

``local_keys`` is the one rule of what stays: the server drops those names from what it expects
back (a reply carrying one is rejected), each site from what it sends.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from .groups import GROUP_FUSION, GROUP_TASK, param_group

NORMS = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)
STATE = "mmdomain-personal"  # the site's kept arrays in its Flower context state


def local_keys(model: torch.nn.Module, method: str) -> frozenset[str]:
    """The state_dict entries of ``model`` that ``method`` keeps at each site instead of sending them
    (fedbn, fedper; none for '', finetune and ditto, which share the whole model)."""
    from .task import shared_keys

    shared = set(shared_keys(model))
    if method == "fedbn":
        keys = {f"{name}.{k}" for name, module in model.named_modules() if isinstance(module, NORMS)
                for k in module.state_dict()}
    elif method == "fedper":
        keys = {k for k in shared if param_group(k) in (GROUP_FUSION, GROUP_TASK)}
    else:
        keys = set()
    return frozenset(keys & shared)


def restore(model: torch.nn.Module, state) -> bool:
    """Put the site's kept arrays (from an earlier round) into ``model``; False when it has none yet."""
    from .records import arrays_to_numpy
    from .task import set_weights

    if STATE not in state.array_records:
        return False
    set_weights(model, arrays_to_numpy(state.array_records[STATE]))
    return True


def keep(model: torch.nn.Module, keys: frozenset[str], state) -> None:
    """Store ``model``'s ``keys`` in the site's context state, for its next round and its evaluation."""
    from .records import numpy_to_arrays

    if keys:
        sd = model.state_dict()
        state[STATE] = numpy_to_arrays({k: sd[k].detach().cpu().numpy().copy() for k in sorted(keys)})


def _own(settings, **changes):
    """How a site trains a model that never leaves it: not privately (no release to protect) and
    without FedProx's pull toward the start (Ditto brings its own pull)."""
    return dataclasses.replace(settings, local_dp=False, strategy="fedavg", **changes)


def ditto(global_weights: dict[str, Any], settings, registry, data, state, seed: int) -> dict[str, Any]:
    """Ditto's step at a site: its own model (kept in ``state``; round 1 the global one) trained on
    ``data`` with the pull toward ``global_weights``, the global model as this round sent it."""
    from .task import build, set_weights, shared_keys, train_site

    model = build(settings, registry)
    set_weights(model, global_weights)
    restore(model, state)
    stats = train_site(model, data, _own(settings), seed=seed, proximal=(settings.ditto_lambda, global_weights))
    keep(model, frozenset(shared_keys(model)), state)
    return {"personal-train-loss": float(stats["train-loss"])}


def personalised(model: torch.nn.Module, settings, state, train_data, seed: int, val_data=None) -> dict[str, Any]:
    """Turn ``model`` (holding the global weights) into this site's personalised model, in place;
    returns what was done (numbers only, they leave the site with the metrics). ``val_data``: the
    site's validation split, which ``finetune-select = "val-loss"`` chooses the epoch on."""
    from .task import EVAL_ERRORS, train_site

    if settings.personalise == "finetune":
        if len(train_data) == 0:
            return {"personal-epochs": 0}
        by_val = settings.finetune_select == "val-loss"
        select = None
        if by_val and val_data is not None and len(val_data):
            try:
                select = _ByValidationLoss(model, val_data, settings)
            except EVAL_ERRORS:  # a validation split too small to score: fine-tune as "last" does, and say so
                pass
        stats = train_site(model, train_data, _own(settings, local_epochs=settings.finetune_epochs), seed=seed,
                           after_epoch=select)
        done = {"personal-epochs": settings.finetune_epochs, "personal-train-loss": float(stats["train-loss"])}
        if select is not None:
            done.update(select.restore_best())
        elif by_val:
            done["personal-select-skipped"] = 1
        return done
    return {"personal-kept": int(restore(model, state))}


class _ByValidationLoss:
    """Early stopping of a site's fine-tuning: the loss on its validation split of the model before
    fine-tuning (epoch 0) and after each epoch; ``restore_best`` puts back the lowest (ties: the
    earlier epoch)."""

    def __init__(self, model: torch.nn.Module, val_data, settings):
        self.model, self.val_data, self.settings = model, val_data, settings
        self.best_epoch, self.best_loss, self.best_state = 0, self._loss(), self._state()
        self.start_loss = self.best_loss

    def _loss(self) -> float:  # the next epoch puts the model back in train mode (train_one_epoch)
        from .task import evaluate_site

        return float(evaluate_site(self.model, self.val_data, self.settings)["loss"])

    def _state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def __call__(self, epoch: int) -> None:
        loss = self._loss()
        if loss < self.best_loss:
            self.best_epoch, self.best_loss, self.best_state = epoch, loss, self._state()

    def restore_best(self) -> dict[str, float]:
        self.model.load_state_dict(self.best_state)
        self.model.eval()
        return {"personal-epochs": self.best_epoch, "personal-val-loss": self.best_loss,
                "personal-val-loss-start": self.start_loss}


def save(model: torch.nn.Module, folder: str, run_id: int, registry) -> Path:
    """The personalised model in the final model's format, in the site's own ``personal-dir``."""
    from mmdomain.checkpoint import save_checkpoint

    out = Path(folder).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(model, out / f"personal-{run_id}.safetensors", registry)
