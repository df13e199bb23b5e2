"""Pretrained 2D image encoders for DICOM images, from local weight files only (nothing is downloaded):
torchvision ResNet / DenseNet (``torchvision_resnet``, ``torchvision_densenet``: torchvision's own
state-dict files) and torchxrayvision's DenseNet-121 (``xrv_densenet121``: ``weights_name=`` read
from its cache folder ``~/.torchxrayvision/models_data/``, or ``path=``). Each maps its library's key
layout itself (``load_pretrained``), refuses a file of another architecture or format naming the
file and what was expected, scales its input inside the encoder, adapts the first convolution to
grey input, and exposes ``weights_source`` / ``weights_sha256`` and ``blocks()`` (see ``encoders``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from mmdomain import ConfigError
from mmdomain.models.weights import check_digest, check_fits, sha256_of

from .pretrained import (
    DENSENETS,
    GREY_MEAN,
    GREY_MODES,
    GREY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RESNETS,
    adapt_first_conv,
    compare_keys,
    densenet_arch_of,
    describe_mismatch,
    examples,
    register_opacus_rules,
    rename_old_densenet_keys,
    resnet_arch_of,
    strip_prefixes,
)
from .tv_nets import build_densenet, build_resnet, densenet_features
from .xrv_weights import read_torch_model_file, xrv_weights_file

# -- pretrained 2D image encoders (torchvision, torchxrayvision) ------------------------------------
BN_MODES = ("frozen", "batch")


class _PretrainedImageEncoder(nn.Module):
    """Shared by the torchvision / torchxrayvision encoders: input scaling inside the encoder,
    BatchNorm mode, weight loading. (The model's ``train()``, ``FusionModel.train``, keeps every
    BatchNorm whose parameters are all frozen in eval mode.)

    Inputs are images in [0, 1] (the medical dataset's range), ``[B, C, H, W]``.

    ``bn = "frozen"`` (default): every BatchNorm normalises with the weights' running statistics,
    in training too, and never updates them (``pretrained.FrozenStatsBatchNorm2d``); its affine
    weight and bias train or not by the ``train`` policy. Sub-batches of any size (the present
    rows, even 1) behave, samples never mix (exact per-sample DP-SGD gradients; Opacus gets a
    rule for the layer), and under the federated layer's local DP, which swaps every
    ``_BatchNorm`` for a fresh GroupNorm, these are kept as they are, pretrained statistics and all.
    ``bn = "batch"``: torchvision's own BatchNorm2d: batch statistics while training (a sub-batch
    of 1 at a 1x1 feature map fails, small sub-batches are noisy); a BatchNorm whose parameters
    are all frozen (``train = "none"``, frozen blocks of ``last:N``, ``lora:R``) stays in eval mode
    with its pretrained statistics. Under local DP the federated layer replaces the BatchNorms of
    an encoder that trains by fresh GroupNorms (a wholly frozen encoder keeps them): the pretrained
    normalisation is lost, so use ``bn = "frozen"`` (the default) with local DP."""

    encoder_name = "pretrained"

    def __init__(self, modality, out_dim: int, bn: str, size: int | None):
        super().__init__()
        if modality.kind != "image":
            raise ConfigError(f"{self.encoder_name}: 2D images only; {modality.name!r} is {modality.kind!r}")
        if bn not in BN_MODES:
            raise ConfigError(f"{self.encoder_name}: bn={bn!r}; use one of {BN_MODES}")
        self.out_dim, self.bn, self.size = out_dim, bn, size
        self.in_channels = modality.channels or 1
        self.weights_source: str | None = None
        self.weights_sha256: str | None = None

    # -- inputs ------------------------------------------------------------------------------------
    def prepare(self, x: Tensor) -> Tensor:
        x = x.float()
        if self.size and tuple(x.shape[-2:]) != (self.size, self.size):
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                          antialias=True)
        return self.scale(x)

    def train(self, mode: bool = True) -> "_PretrainedImageEncoder":

        super().train(mode)  # (the model keeps frozen BatchNorms in eval mode: FusionModel.train)
        register_opacus_rules()
        return self

    # -- weights -----------------------------------------------------------------------------------
    def _imagenet_net(self, modality, out_dim: int, arch: str, archs: dict, build, grey: str, normalize: bool,
                      bn: str) -> None:
        """The torchvision network ``arch`` (one of ``archs``, made by ``build``), its projection to
        ``out_dim`` and ImageNet normalisation (grey: the channel means) for inputs in [0, 1]."""
        if arch not in archs:
            raise ConfigError(f"{self.encoder_name}: arch={arch!r}; use one of {sorted(archs)}")
        if grey not in GREY_MODES:
            raise ConfigError(f"{self.encoder_name}: grey={grey!r}; use one of {GREY_MODES}")
        if self.in_channels not in (1, 3):
            raise ConfigError(f"{self.encoder_name}: takes 1 (grey) or 3 (RGB) channels, {modality.name!r} has "
                              f"{self.in_channels}")
        self.arch, self.grey, self.normalize = arch, grey, normalize
        self.net, width = build(arch, self.in_channels, bn == "frozen")
        self.proj = nn.Linear(width, out_dim)
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if self.in_channels == 3 else ((GREY_MEAN,), (GREY_STD,))
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def scale(self, x: Tensor) -> Tensor:
        """The weights' own input normalisation (ImageNet here; torchxrayvision overrides it)."""
        return (x - self.mean) / self.std if self.normalize else x

    def map_library_state(self, state: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
        raise NotImplementedError

    def load_pretrained(self, state: dict[str, Tensor], path: str | Path) -> None:
        """A state dict of this encoder itself (keys ``net.*``, ``proj.*``) loads as it is; otherwise
        the library's layout (``map_library_state``), the classifier dropped (``proj`` replaces it)."""

        path = Path(path)
        if any(k.startswith(("net.", "proj.")) for k in state):
            check_fits(self, state, path, self.encoder_name)
            self.load_state_dict(state)
        else:
            self.net.load_state_dict(self.map_library_state(state, path))
        self.weights_source, self.weights_sha256 = str(path), sha256_of(path)

    def _fit(self, path: Path, state: dict[str, Tensor], found: str, wanted: str, hint: str = "") -> None:
        """Refuse ``state`` unless it is exactly ``self.net``'s keys and shapes (BatchNorm step
        counters, which files older than PyTorch 0.4.1 lack, are filled in)."""

        own = self.net.state_dict()
        for k in own:
            if k.endswith("num_batches_tracked") and k not in state:
                state[k] = own[k].clone()
        missing, unexpected, shapes = compare_keys(own, state)
        if missing or unexpected or shapes:
            head = (f"{found} weights given to a {wanted} encoder" if found != wanted
                    else f"{found} weights that do not fit this {wanted} encoder")
            raise ConfigError(f"{self.encoder_name}: {path}: {head}: {describe_mismatch(missing, unexpected, shapes)}"
                              + (f"; {hint}" if hint else ""))


class TorchvisionResNetEncoder(_PretrainedImageEncoder):
    """torchvision ResNet (``arch`` resnet18 / resnet34 / resnet50 / resnet101 / resnet152), for
    torchvision's ImageNet weight files (``resnet18-f37072fd.pth``...: keys ``conv1.weight``,
    ``bn1.*``, ``layer1.0.conv1.weight``..., ``fc.*``), given as ``weights = "file"``.

    Grey input (1 channel): the file's RGB first convolution becomes one channel by ``grey = "sum"``
    (default: the response to the grey image shown as R = G = B) or ``"mean"`` (a third of it);
    see ``pretrained.adapt_first_conv``. ``normalize`` (default on) applies the weights' own
    ImageNet normalisation inside the encoder, to inputs in [0, 1]: per channel for RGB, the
    channel means (mean 0.449, std 0.226) for grey. ``size`` resizes (bilinear) to size x size
    first (default: as given; ImageNet weights were trained at 224). The ImageNet classifier
    ``fc`` is dropped: a Linear projection to ``out_dim`` replaces it. ``bn``: see
    ``_PretrainedImageEncoder``."""

    encoder_name = "torchvision_resnet"

    def __init__(self, modality, out_dim: int = 128, arch: str = "resnet18", grey: str = "sum",
                 normalize: bool = True, bn: str = "frozen", size: int | None = None):

        super().__init__(modality, out_dim, bn, size)
        self._imagenet_net(modality, out_dim, arch, RESNETS, build_resnet, grey, normalize, bn)

    def blocks(self) -> list[nn.Module]:
        """The stem (conv1 + bn1), layer1..layer4, the projection."""
        n = self.net
        return [nn.Sequential(n.conv1, n.bn1), n.layer1, n.layer2, n.layer3, n.layer4, self.proj]

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.net(self.prepare(x)))

    def map_library_state(self, state: dict[str, Tensor], path: Path) -> dict[str, Tensor]:

        state = strip_prefixes(state, ("model.", "backbone.", "encoder.", "resnet."))
        found = resnet_arch_of(state)
        if found is None:
            raise ConfigError(f"{self.encoder_name}: {path} is not torchvision ResNet weights (expected keys "
                              f"conv1.weight, bn1.*, layer1.0.conv1.weight, ..., fc.*; the file has e.g. "
                              f"{examples(state)})")
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        w = state["conv1.weight"]
        if w.dim() != 4 or w.shape[1] != 3:
            raise ConfigError(f"{self.encoder_name}: {path}: its first convolution conv1 takes {w.shape[1]} "
                              "channel(s); torchvision's ImageNet weights take 3 (RGB)")
        state["conv1.weight"] = adapt_first_conv(w, self.in_channels, self.grey, f"{self.encoder_name}: {path}")
        hint = f'use arch = "{found}"' if found in RESNETS and found != self.arch else ""
        self._fit(path, state, found, self.arch, hint)
        return state


class TorchvisionDenseNetEncoder(_PretrainedImageEncoder):
    """torchvision DenseNet (``arch`` densenet121 / 161 / 169 / 201), for torchvision's ImageNet
    weight files (``densenet121-a639ec97.pth``: keys ``features.conv0.weight``,
    ``features.norm0.*``, ``features.denseblock1.denselayer1.norm.1.weight``... in the old dotted
    form those files still have, or ``norm1`` as torchvision names them today; ``classifier.*``),
    given as ``weights = "file"``. Grey input, ``normalize``, ``size``, ``bn``, the projection:
    as ``torchvision_resnet``."""

    encoder_name = "torchvision_densenet"
    first_conv_channels = 3  # the files this encoder reads: ImageNet, RGB

    def __init__(self, modality, out_dim: int = 128, arch: str = "densenet121", grey: str = "sum",
                 normalize: bool = True, bn: str = "frozen", size: int | None = None):

        super().__init__(modality, out_dim, bn, size)
        self._imagenet_net(modality, out_dim, arch, DENSENETS, build_densenet, grey, normalize, bn)

    def blocks(self) -> list[nn.Module]:
        """The stem (conv0 + norm0), each dense block with its transition (the last with norm5), the projection."""
        f = dict(self.net.features.named_children())
        out: list[nn.Module] = [nn.Sequential(f["conv0"], f["norm0"])]
        i = 1
        while f"denseblock{i}" in f:
            out.append(nn.Sequential(f[f"denseblock{i}"], f.get(f"transition{i}", f["norm5"])))
            i += 1
        return out + [self.proj]

    def forward(self, x: Tensor) -> Tensor:

        return self.proj(densenet_features(self.net, self.prepare(x)))

    def _wrong_first_conv(self, path: Path, channels: int) -> str:
        return (f"{self.encoder_name}: {path}: its first convolution features.conv0 takes {channels} channel(s); "
                "torchvision's ImageNet weights take 3 (RGB); 1-channel DenseNet-121 weights are "
                "torchxrayvision's: use the xrv_densenet121 encoder")

    def map_library_state(self, state: dict[str, Tensor], path: Path) -> dict[str, Tensor]:

        state = rename_old_densenet_keys(strip_prefixes(state, ("model.", "backbone.", "encoder.", "densenet.")))
        found = densenet_arch_of(state)
        if found is None:
            raise ConfigError(f"{self.encoder_name}: {path} is not DenseNet weights (expected keys "
                              "features.conv0.weight, features.norm0.*, features.denseblock1.denselayer1.norm1.* "
                              f"(or norm.1), ..., classifier.*; the file has e.g. {examples(state)})")
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        w = state["features.conv0.weight"]
        if w.dim() != 4 or w.shape[1] != self.first_conv_channels:
            raise ConfigError(self._wrong_first_conv(path, int(w.shape[1]) if w.dim() > 1 else 0))
        state["features.conv0.weight"] = adapt_first_conv(w, self.in_channels, self.grey, f"{self.encoder_name}: {path}")
        hint = f'use arch = "{found}"' if found in DENSENETS and found != self.arch else ""
        self._fit(path, state, found, self.arch, hint)
        return state


class XrvDenseNetEncoder(TorchvisionDenseNetEncoder):
    """torchxrayvision's DenseNet-121 chest X-ray weights (1 channel, 224 x 224, 18 pathologies),
    loaded into a torchvision DenseNet-121 by our own code (torchxrayvision is not imported).

    Where the weights come from (all local; nothing is downloaded):

    - ``weights_name = "densenet121-res224-all"`` (or ``-nih``, ``-pc``, ``-chex``, ``-rsna``,
      ``-mimic_nb``, ``-mimic_ch``, or the short ``"all"``...): the file torchxrayvision keeps in its
      cache folder, ``~/.torchxrayvision/models_data/`` (``cache_dir=`` another folder), e.g.
      ``nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt``;
      a missing file is an error saying where it is expected and how to get it there;
    - ``path = "file"``: that file;
    - ``weights = "file"`` (the core's loader, SHA-256 recorded in the model config): a plain state
      dict in torchxrayvision's key names, e.g. written once by ``pretrained.convert_xrv_weights``
      (torchxrayvision's own files are pickled whole models, which the core's
      ``weights_only`` loader refuses).

    torchxrayvision's files are pickled models: they are read with ``weights_only`` and every
    class they name as an inert placeholder (``pretrained.read_torch_model_file``), so no code
    of the file runs; only the tensors are kept. Without any of these the encoder has random
    weights (the architecture only, e.g. for a checkpoint to fill).

    Inputs in [0, 1] are scaled to torchxrayvision's [-1024, 1024] (``normalize``) and resized to
    224 x 224 (``size``; bilinear, as torchxrayvision does). Its 18-pathology classifier and
    operating-point thresholds are dropped: a projection to ``out_dim`` replaces them. ``bn``: see
    ``_PretrainedImageEncoder``. ``path_sha256``: refuse a file with another SHA-256."""

    encoder_name = "xrv_densenet121"
    first_conv_channels = 1

    def __init__(self, modality, out_dim: int = 128, weights_name: str | None = None, path: str | None = None,
                 cache_dir: str | None = None, path_sha256: str | None = None, normalize: bool = True,
                 bn: str = "frozen", size: int | None = 224):
        if (modality.channels or 1) != 1:
            raise ConfigError(f"xrv_densenet121: torchxrayvision's weights take 1 channel; {modality.name!r} has "
                              f"{modality.channels}")
        super().__init__(modality, out_dim, arch="densenet121", normalize=normalize, bn=bn, size=size)
        if weights_name and path:
            raise ConfigError("xrv_densenet121: give weights_name= or path=, not both")
        if weights_name or path:

            file = Path(path).expanduser() if path else xrv_weights_file(weights_name, cache_dir)
            if not file.is_file():
                raise ConfigError(f"xrv_densenet121: weights file {file} not found (weights are read from local "
                                  "files only; copy torchxrayvision's .pt file there, or use weights_name= for its "
                                  "cache folder ~/.torchxrayvision/models_data/)")
            self.load_pretrained(read_torch_model_file(file, "xrv_densenet121"), file)
            check_digest(self.weights_sha256, path_sha256, "xrv_densenet121", file)

    def scale(self, x: Tensor) -> Tensor:
        return (2.0 * x - 1.0) * 1024.0 if self.normalize else x

    def _wrong_first_conv(self, path: Path, channels: int) -> str:
        return (f"{self.encoder_name}: {path}: its first convolution features.conv0 takes {channels} channel(s); "
                "torchxrayvision's DenseNet-121 takes 1 (these look like torchvision's ImageNet weights: use the "
                "torchvision_densenet encoder)")
