"""BatchNorm -> GroupNorm for per-sample-gradient training (``ModelConfig.batch_norm = "group"``).

DP-SGD clips each sample's gradient, and a BatchNorm's batch statistics mix the samples of a batch,
so no layer that trains may use them. Opacus' own fixer (``opacus.validators.batch_norm.fix``)
swaps each one for a GroupNorm of the same channels. A frozen encoder keeps its BatchNorms: it runs
in eval mode on its stored (pretrained) statistics, which mixes nothing. The model config records
the choice, so that a checkpoint of such a model rebuilds the same layers (``load_checkpoint``).
"""

from __future__ import annotations

from typing import Iterable

from torch import nn


def batch_to_group_norm(modules: Iterable[nn.Module]) -> int:
    """Replace every BatchNorm under ``modules`` (None: skipped) by Opacus' GroupNorm; a replaced BatchNorm whose
    parameters were frozen gives a frozen GroupNorm. Returns how many were replaced."""
    from opacus.validators.batch_norm import fix

    replaced = 0
    for root in (m for m in modules if m is not None):
        for module in list(root.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.modules.batchnorm._BatchNorm):
                    trained = child.weight is None or child.weight.requires_grad
                    setattr(module, name, fix(child).requires_grad_(trained))
                    replaced += 1
    return replaced
