"""Pretrained weights for the medical encoders, from local files only (nothing is downloaded).

What lives here (the encoders themselves are in ``image_encoders`` and ``text_encoder``):

- the key layouts of torchvision's own ResNet / DenseNet weight files (``resnet18-f37072fd.pth``,
  ``densenet121-a639ec97.pth``: DenseNet's files still carry the old ``norm.1`` / ``conv.2`` key
  names, renamed here as torchvision does) and of torchxrayvision's DenseNet-121, recognised by
  their keys so that a file of another architecture is refused with what it is and what was expected;
- ``FrozenStatsBatchNorm2d``: BatchNorm that always normalises with its (pretrained) running
  statistics, held as constants rather than buffers, so sub-batches of any size (even 1) work,
  Opacus takes exact per-sample gradients through it, and the federated layer's
  BatchNorm -> GroupNorm swap for local DP (which only swaps ``_BatchNorm``) leaves it, and its
  pretrained statistics, in place;
- the grey-input adaptation of a 3-channel first convolution;
- (torchxrayvision's cache folder, file names and safe reader are in ``xrv_weights``);
- ``folder_digest``: one SHA-256 over a Hugging Face model folder.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdomain import ConfigError
from mmdomain.models.weights import state_mismatch

# ImageNet statistics of torchvision's ``IMAGENET1K_*`` weights (inputs in [0, 1]); a grey image
# uses their means, the statistics of an R = G = B image under the same weights.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY_MEAN = sum(IMAGENET_MEAN) / 3
GREY_STD = sum(IMAGENET_STD) / 3


# -- BatchNorm --------------------------------------------------------------------------------------
_STATS = ("running_mean", "running_var", "num_batches_tracked")


class FrozenStatsBatchNorm2d(nn.modules.batchnorm._NormBase):
    """BatchNorm2d that always normalises with fixed running statistics (eval-mode behaviour, in
    training too) and never updates them; its affine ``weight`` / ``bias`` stay parameters, trained
    or not by the encoder's ``train`` policy (``norms`` counts them: this is a ``_NormBase``).

    The statistics are constants of the pretrained weights, not buffers: nothing in training
    changes them, so they are no function of the private data, and Opacus (which refuses a
    trainable layer holding buffers, since BatchNorm's are) computes this layer's per-sample
    gradients exactly (``register_opacus_rules``). They are still in the state dict under
    ``nn.BatchNorm2d``'s keys (``weight``, ``bias``, ``running_mean``, ``running_var``,
    ``num_batches_tracked``), so torchvision files load as they are and checkpoints and
    federated rounds carry them, and they follow ``.to()``. Each sample is normalised on its own:
    sub-batches of 1 work. Not a ``_BatchNorm``, so Opacus' BatchNorm fixer (the federated
    layer's swap to a fresh GroupNorm under local DP) leaves it, pretrained statistics and all."""

    def __init__(self, num_features: int, eps: float = 1e-5, **_: Any):
        super().__init__(num_features, eps=eps, momentum=0.0, affine=True, track_running_stats=False)
        for name in _STATS:  # _NormBase registered them as None buffers; they live in _stats
            self._buffers.pop(name, None)
        self._stats = {"running_mean": torch.zeros(num_features), "running_var": torch.ones(num_features),
                       "num_batches_tracked": torch.tensor(0, dtype=torch.long)}
        register_opacus_rules()

    running_mean = property(lambda self: self._stats["running_mean"])
    running_var = property(lambda self: self._stats["running_var"])
    num_batches_tracked = property(lambda self: self._stats["num_batches_tracked"])

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, statistics frozen"

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"FrozenStatsBatchNorm2d: expected a 4D input, got {x.dim()}D")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    def _apply(self, fn, recurse: bool = True):  # .to(), .cuda(), .half(): the statistics follow
        super()._apply(fn, recurse)
        self._stats = {k: fn(v) for k, v in self._stats.items()}
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name in _STATS:
            destination[prefix + name] = self._stats[name] if keep_vars else self._stats[name].detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for name in _STATS:
            key = prefix + name
            if key not in state_dict:
                if strict and name != "num_batches_tracked":  # files before PyTorch 0.4.1 have no counter
                    missing_keys.append(key)
                continue
            value, own = state_dict.pop(key), self._stats[name]
            if not isinstance(value, Tensor) or value.shape != own.shape:
                error_msgs.append(f"size mismatch for {key}: copying a param with shape "
                                  f"{tuple(getattr(value, 'shape', ()))} from checkpoint, the shape in current model "
                                  f"is {tuple(own.shape)}.")
                continue
            self._stats[name] = value.detach().to(device=own.device, dtype=own.dtype).clone()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> "FrozenStatsBatchNorm2d":
        new = cls(bn.num_features, eps=bn.eps).to(device=bn.weight.device, dtype=bn.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(bn.weight)
            new.bias.copy_(bn.bias)
        for name in _STATS:
            new._stats[name] = getattr(bn, name).detach().clone()
        new.weight.requires_grad_(bn.weight.requires_grad)
        new.bias.requires_grad_(bn.bias.requires_grad)
        return new


def freeze_batchnorm_stats(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` under ``module`` by a ``FrozenStatsBatchNorm2d`` (same values)."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm2d:
                setattr(parent, name, FrozenStatsBatchNorm2d.from_batchnorm(child))
    return module


def _frozen_bn_grad_sample(layer: FrozenStatsBatchNorm2d, activations: list[Tensor], backprops: Tensor) -> dict:
    x = activations[0]
    scale = torch.rsqrt(layer.running_var + layer.eps)[None, :, None, None]
    out = {}
    if layer.weight.requires_grad:
        out[layer.weight] = ((x - layer.running_mean[None, :, None, None]) * scale * backprops).flatten(2).sum(2)
    if layer.bias.requires_grad:
        out[layer.bias] = backprops.flatten(2).sum(2)
    return out


def register_opacus_rules() -> bool:
    """Give Opacus its per-sample-gradient rule for ``FrozenStatsBatchNorm2d`` once Opacus is
    loaded (nothing imports Opacus for this: the encoders call it when built and in ``train()``,
    which the federated DP-SGD path calls after loading Opacus). True when registered."""
    if "opacus.grad_sample" not in sys.modules:
        return False
    from opacus.grad_sample import GradSampleModule, register_grad_sampler

    if FrozenStatsBatchNorm2d not in GradSampleModule.GRAD_SAMPLERS:
        register_grad_sampler(FrozenStatsBatchNorm2d)(_frozen_bn_grad_sample)
    return True


# -- first convolution for grey input ---------------------------------------------------------------
GREY_MODES = ("sum", "mean")


def adapt_first_conv(weight: Tensor, in_channels: int, grey: str, what: str) -> Tensor:
    """A 3-channel first-conv weight ``[O, 3, k, k]`` for ``in_channels`` inputs.

    ``grey="sum"`` (default): the sum over the RGB kernels, i.e. the network's response to the
    grey image shown as R = G = B (up to the small differences between ImageNet's three channel
    statistics and their mean, which normalises the grey channel), so the BatchNorm after it sees
    activations of the scale it was trained on. ``grey="mean"``: their mean, a third of that
    response (which the pretrained BatchNorm statistics then under-scale; for fine-tuning that
    re-learns them)."""
    if weight.shape[1] == in_channels:
        return weight
    if in_channels == 1 and weight.shape[1] == 3:
        return weight.sum(1, keepdim=True) if grey == "sum" else weight.mean(1, keepdim=True)
    raise ConfigError(f"{what}: the file's first convolution takes {weight.shape[1]} channels; "
                      f"this encoder takes {in_channels}")


# -- key layouts ------------------------------------------------------------------------------------
def natural(key: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key))


def examples(keys: Iterable[str], n: int = 3) -> list[str]:
    """A few keys to name in an error: convolution weights first, in network order."""
    return sorted(keys, key=lambda k: (not k.endswith("weight") or "conv" not in k, natural(k)))[:n]


RESNETS = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet34": ("basic", (3, 4, 6, 3)),
           "resnet50": ("bottleneck", (3, 4, 6, 3)), "resnet101": ("bottleneck", (3, 4, 23, 3)),
           "resnet152": ("bottleneck", (3, 8, 36, 3))}
DENSENETS = {"densenet121": ((6, 12, 24, 16), 32, 64), "densenet161": ((6, 12, 36, 24), 48, 96),
             "densenet169": ((6, 12, 32, 32), 32, 64), "densenet201": ((6, 12, 48, 32), 32, 64)}
_OLD_DENSE = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def resnet_arch_of(state: dict[str, Tensor]) -> str | None:
    """Which torchvision ResNet a state dict is (``resnet50``...), a description when none; None
    when it is no ResNet at all."""
    if "conv1.weight" not in state or "layer1.0.conv1.weight" not in state:
        return None
    counts = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    kind = "bottleneck" if any(re.match(r"layer\d+\.\d+\.conv3\.", k) for k in state) else "basic"
    for name, layout in RESNETS.items():
        if layout == (kind, counts):
            width = state["layer1.0.conv1.weight"].shape[0]
            return name if width == 64 else f"{name}-like (width {width})"
    return f"ResNet with {kind} blocks {list(counts)}"


def rename_old_densenet_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision's published DenseNet files name ``norm.1``; its modules today ``norm1``."""
    out = {}
    for k, v in state.items():
        m = _OLD_DENSE.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out


def densenet_arch_of(state: dict[str, Tensor]) -> str | None:
    if "features.conv0.weight" not in state:
        return None
    blocks = tuple(len({m.group(1) for k in state if (m := re.match(rf"features\.denseblock{i}\.denselayer(\d+)\.", k))})
                   for i in range(1, 5))
    conv2 = state.get("features.denseblock1.denselayer1.conv2.weight")
    growth = int(conv2.shape[0]) if conv2 is not None else 0
    init = int(state["features.conv0.weight"].shape[0])
    for name, layout in DENSENETS.items():
        if layout == (blocks, growth, init):
            return name
    return f"DenseNet with blocks {list(blocks)}, growth {growth}, {init} initial features"


def strip_prefixes(state: dict[str, Tensor], prefixes: Iterable[str]) -> dict[str, Tensor]:
    """Drop one common wrapper prefix (``model.``, ``backbone.``...) when every key has it."""
    for p in prefixes:
        if state and all(k.startswith(p) for k in state):
            return {k[len(p):]: v for k, v in state.items()}
    return state


def compare_keys(own: dict[str, Tensor], state: dict[str, Tensor]) -> tuple[list[str], list[str], list[tuple]]:
    """The core's ``state_mismatch``, keys in natural order (``layer2`` before ``layer10``)."""
    return state_mismatch(own, state, key=natural)


def describe_mismatch(missing: list[str], unexpected: list[str], shapes: list[tuple]) -> str:
    def some(keys: list[str], what: str) -> str:
        first, *rest = examples(keys, 3)
        more = f" (and {len(keys) - 1} more, e.g. {', '.join(rest)})" if len(keys) > 1 else ""
        return f"{first} {what}{more}"

    parts = []
    if unexpected:
        parts.append(some(unexpected, "not expected"))
    if missing:
        parts.append(some(missing, "missing"))
    if shapes:
        k, got, want = shapes[0]
        more = f" (and {len(shapes) - 1} more keys of another shape)" if len(shapes) > 1 else ""
        parts.append(f"{k} has shape {got} in the file, {want} in the encoder{more}")
    return "; ".join(parts)


# -- digests ----------------------------------------------------------------------------------------
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")
_DIGESTS: dict[tuple, str] = {}


def folder_digest(path: str | Path, only: Iterable[str] | None = None) -> str:
    """SHA-256 over a model folder: every file under it (hidden ones, e.g. ``.cache``, left out;
    with ``only``, just the files of those names), sorted by relative path, each as its path, a
    NUL, its size, a NUL and its bytes. Two folders with the same digest hold the same config,
    weights and tokenizer files. Remembered per process while no file's size or time changes."""
    root = Path(path)
    names = set(only) if only is not None else None
    files = sorted((p for p in root.rglob("*") if p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(root).parts)
                    and (names is None or p.name in names)),
                   key=lambda p: p.relative_to(root).as_posix())
    key = (str(root.resolve()), tuple((f.relative_to(root).as_posix(), f.stat().st_size, f.stat().st_mtime_ns)
                                      for f in files))
    if key in _DIGESTS:
        return _DIGESTS[key]
    h = hashlib.sha256()
    for f in files:
        rel = f.relative_to(root).as_posix()
        h.update(rel.encode() + b"\0" + str(f.stat().st_size).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]
