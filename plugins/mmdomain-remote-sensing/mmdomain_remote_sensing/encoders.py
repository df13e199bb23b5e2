"""Encoders: a multispectral CNN for S2 and a SAR CNN for S1, each normalising with per-band
statistics held as buffers (so they travel in the checkpoint). A site's own statistics
(``stats.band_stats``) reach them as ``mean``/``std`` options through ``models.model_for(stats=...)``.

The S2 encoder's input channels are its ``bands`` (default: the 12 L2A bands, or the ``s2``
modality's channels); a dataset read with ``s2_bands=`` needs the same ``bands`` here, which
``models.model_for(data options)`` sets. A batch with another channel count is a ``ConfigError``."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import Tensor, nn

from mmdomain import ConfigError, DataError
from mmdomain.models.encoders import cells_as_tokens
from mmdomain.registry import ModalitySpec

from .bands import S1_DB_RANGE, S1_DEFAULT_MEAN, S1_DEFAULT_STD, S2_BANDS, s2_band_subset, s2_default_stats


def _stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.GroupNorm(min(8, c_out), c_out), nn.GELU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.GroupNorm(min(8, c_out), c_out),
                         nn.GELU())


class _Normalised(nn.Module):
    def _set_stats(self, mean, std, channels: int, default_mean, default_std) -> None:
        mean = list(mean if mean is not None else default_mean)
        std = list(std if std is not None else default_std)
        if len(mean) != channels or len(std) != channels:
            raise ConfigError(f"{type(self).__name__}: mean/std need {channels} values, got {len(mean)}/{len(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).clamp(min=1e-6).view(1, -1, 1, 1))

    def _pool_or_map(self, h: Tensor) -> Tensor:
        return self.head(h) if self.dense else self.head(h.mean((2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        return self._pool_or_map(self._features(x))

    def tokens(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The last feature map's cells as tokens (the token-level fusion head's input)."""
        return cells_as_tokens(self.head, self._features(x), self.dense)


def _s2_inputs(modality: ModalitySpec, bands, in_channels: int | None) -> tuple[tuple[str, ...] | None, int]:
    """The S2 bands (None: unnamed) and channel count an encoder takes, from its options."""
    try:
        names = s2_band_subset(bands, where="s2_cnn: bands") if bands is not None else None
    except DataError as exc:
        raise ConfigError(str(exc)) from None
    if names is not None and in_channels is not None and in_channels != len(names):
        raise ConfigError(f"s2_cnn: in_channels {in_channels} but {len(names)} bands named ({', '.join(names)})")
    c = len(names) if names is not None else in_channels or modality.channels or len(S2_BANDS)
    return (names if names is not None else S2_BANDS if c == len(S2_BANDS) else None), c


class MultispectralCNN(_Normalised):
    """S2 encoder. ``backbone="small"`` (default): a spectral 1x1 mixing layer then strided conv
    stages with GroupNorm (sub-batches of 1 are fine), ~0.3 M parameters at width 32. Any timm model
    name (e.g. ``"resnet18"``) builds that backbone with ``in_chans`` = the band count, random init
    unless ``weights`` names a local state-dict file; nothing is downloaded.

    ``bands`` names the input bands (as the dataset's ``s2_bands``; their declared statistics are the
    default ``mean``/``std``); ``in_channels`` alone takes that many unnamed bands (mean 0, std 1)."""

    def __init__(self, modality: ModalitySpec, out_dim: int = 128, width: int = 32, depth: int = 3,
                 dense: bool = False, backbone: str = "small", weights: str | None = None,
                 bands: list[str] | None = None, in_channels: int | None = None,
                 mean: list[float] | None = None, std: list[float] | None = None):
        super().__init__()
        self.bands, c = _s2_inputs(modality, bands, in_channels)
        self.in_channels = c
        default = s2_default_stats(self.bands) if self.bands is not None else ((0.0,) * c, (1.0,) * c)
        self._set_stats(mean, std, c, *default)
        self.dense, self.out_dim = dense, out_dim
        if backbone == "small":
            layers: list[nn.Module] = [nn.Conv2d(c, width, 1), nn.GELU()]
            ch = width
            for i in range(depth):
                layers.append(_stage(ch, width * 2 ** i, 2))
                ch = width * 2 ** i
            self.body = nn.Sequential(*layers)
        else:
            self.body, ch = _timm_body(backbone, c, dense)
        if weights:
            _load_weights(self.body, weights)
        self.head = nn.Conv2d(ch, out_dim, 1) if dense else nn.Linear(ch, out_dim)

    def _features(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.in_channels:
            named = f" ({', '.join(self.bands)})" if self.bands else ""
            raise ConfigError(f"s2_cnn takes {self.in_channels} bands{named}, the s2 input has {x.shape[1]}: give "
                              "encoders.s2.options.bands the dataset's s2_bands (models.model_for(data options) does)")
        h = self.body((x - self.mean) / self.std)
        if isinstance(h, (list, tuple)):
            h = h[-1]
        return h


class SARCNN(_Normalised):
    """S1 encoder over dB backscatter: clip to the dB range, add the VV-VH cross-pol ratio as a
    channel, normalise, a 5x5 first layer (speckle is a pixel-scale texture), conv stages."""

    def __init__(self, modality: ModalitySpec, out_dim: int = 128, width: int = 32, depth: int = 3,
                 dense: bool = False, mean: list[float] | None = None, std: list[float] | None = None):
        super().__init__()
        c = modality.channels or 2
        self._set_stats(mean, std, c, S1_DEFAULT_MEAN if c == 2 else (0.0,) * c,
                        S1_DEFAULT_STD if c == 2 else (1.0,) * c)
        self.dense, self.out_dim = dense, out_dim
        extra = 1 if c == 2 else 0
        layers: list[nn.Module] = [nn.Conv2d(c + extra, width, 5, padding=2), nn.GELU()]
        ch = width
        for i in range(depth):
            layers.append(_stage(ch, width * 2 ** i, 2))
            ch = width * 2 ** i
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(ch, out_dim, 1) if dense else nn.Linear(ch, out_dim)

    def _features(self, x: Tensor) -> Tensor:
        x = x.clamp(*S1_DB_RANGE)
        z = (x - self.mean) / self.std
        if x.shape[1] == 2:
            z = torch.cat([z, (x[:, :1] - x[:, 1:2] - 7.0) / 4.0], 1)  # cross-pol ratio in dB
        return self.body(z)


def _timm_body(name: str, channels: int, dense: bool) -> tuple[nn.Module, int]:
    try:
        import timm
    except ImportError:  # pragma: no cover - timm is in the project's requirements
        raise ConfigError(f"backbone {name!r} needs timm; install it or use backbone='small'") from None
    kw = {}
    if name.startswith("resnet"):
        kw["norm_layer"] = functools.partial(nn.GroupNorm, 8)  # present-row sub-batches may be of size 1
    try:
        model = timm.create_model(name, pretrained=False, in_chans=channels, features_only=True, out_indices=(-1,),
                                  **kw)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"backbone {name!r}: timm could not build it ({exc})") from None
    return model, model.feature_info.channels()[-1]


def _load_weights(module: nn.Module, path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"weights {path}: no such file (weights are never downloaded; give a local path)")
    state = torch.load(p, map_location="cpu", weights_only=True)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if len(missing) == len(list(module.state_dict())):
        raise ConfigError(f"weights {path}: no tensor matched the backbone")
