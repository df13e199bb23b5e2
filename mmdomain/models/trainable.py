"""Which parameters of an encoder train: the ``train`` policy of its model-config entry.

    train = "all"       every parameter (the default)
    train = "none"      frozen: the encoder runs without gradients and costs no privacy budget
    train = "norms"     only normalisation layers and biases (BitFit-style)
    train = "last:N"    only the last N blocks (``encoder.blocks()`` when it has one, else its
                        top-level children that hold parameters, in order)
    train = "lora:R"    low-rank adapters of rank R (peft) on every Linear/Conv layer; the base
                        weights stay frozen

A frozen parameter has ``requires_grad=False``: optimizers skip it, DP-SGD takes no per-sample
gradient of it, and federated rounds need not carry it (sites check it by hash instead).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError

_POLICY = re.compile(r"^(all|none|norms|last:(\d+)|lora:(\d+))$")
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.modules.normalization.RMSNorm)
LORA_TARGETS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class TrainPolicy:
    kind: str  # all | none | norms | last | lora
    n: int = 0  # blocks (last) or rank (lora)

    @classmethod
    def parse(cls, text: str, where: str = "train") -> "TrainPolicy":
        m = _POLICY.match(str(text).strip())
        if not m:
            raise ConfigError(f"{where}: {text!r} is not a training policy; use all, none, norms, last:N or lora:R")
        kind = m.group(1).split(":")[0]
        n = int(m.group(2) or m.group(3) or 0)
        if kind in ("last", "lora") and n < 1:
            raise ConfigError(f"{where}: {text!r} needs N >= 1")
        return cls(kind, n)


def blocks_of(module: nn.Module) -> list[nn.Module]:
    """The encoder's blocks in input-to-output order: its own ``blocks()`` if it defines one,
    else its top-level children that hold parameters (descending through single wrappers)."""
    if hasattr(module, "blocks") and callable(module.blocks):
        return list(module.blocks())
    children = [c for c in module.children() if any(True for _ in c.parameters())]
    while len(children) == 1 and list(children[0].children()):
        children = [c for c in children[0].children() if any(True for _ in c.parameters())]
    return children


def _lora(module: nn.Module, rank: int, where: str) -> nn.Module:
    from peft import LoraConfig, inject_adapter_in_model

    targets = [name for name, m in module.named_modules() if isinstance(m, LORA_TARGETS)]
    if not targets:
        raise ConfigError(f"{where}: lora needs Linear or Conv layers; this encoder has none")
    module.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, lora_dropout=0.0), module)
    for name, p in module.named_parameters():
        p.requires_grad_("lora_" in name)
    return module


def apply_policy(module: nn.Module, policy: str | TrainPolicy, where: str = "train") -> nn.Module:
    """Set ``requires_grad`` on ``module``'s parameters by ``policy``; returns the module (LoRA
    adds its adapters in place)."""
    p = policy if isinstance(policy, TrainPolicy) else TrainPolicy.parse(policy, where)
    if p.kind == "all":
        module.requires_grad_(True)
    elif p.kind == "none":
        module.requires_grad_(False)
    elif p.kind == "norms":
        module.requires_grad_(False)
        for sub in module.modules():
            if isinstance(sub, NORM_TYPES):
                sub.requires_grad_(True)
            bias = getattr(sub, "bias", None)
            if isinstance(bias, nn.Parameter):
                bias.requires_grad_(True)
    elif p.kind == "last":
        blocks = blocks_of(module)
        if p.n > len(blocks):
            raise ConfigError(f"{where}: last:{p.n} asks for more blocks than the encoder's {len(blocks)}")
        module.requires_grad_(False)
        for block in blocks[-p.n:]:
            block.requires_grad_(True)
    else:
        _lora(module, p.n, where)
    return module


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in module.parameters())


def is_frozen(module: nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters())
