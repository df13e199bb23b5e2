"""``torchgeo_resnet``: a ResNet encoder with torchgeo's pretrained weights, read strictly offline.

Options (``encoders.s2`` or ``encoders.s1`` of a model config)::

    name = "torchgeo_resnet"
    options.weights      = "ResNet18_Weights.SENTINEL2_ALL_MOCO"   # "<EnumName>.<MEMBER>" of torchgeo.models
    options.weights_path = "/path/file.pth"    # optional: the file itself instead of the torch hub cache
    options.out_dim      = 128                 # a Linear (dense: 1x1 conv) projection replaces the classifier
    options.bands        = ["B02", "B03", ...] # the configured input bands (default: the modality's, in
                                               # bands.S2_BANDS order for s2, VV/VH for s1)
    options.fill_missing = "refuse" | "zeros"  # a band the weights need but the input lacks (see below)
    options.dn_offset    = 0.0                 # S2 only: DN = 10000 * reflectance + dn_offset (see below)
    options.weights_sha256 = "..."             # optional: refuse a file with another SHA-256
    options.load         = true                # false: build only; the core's ``weights = path`` loads it

Without ``weights`` the encoder is the same ResNet-18, randomly initialised, on the configured
bands (S2 reflectance as is; S1 dB normalised with SSL4EO-S12's statistics): a baseline, no file.

**Where the file comes from.** Never from the network: the file is
``torch.hub.get_dir()/checkpoints/<the file name at the end of the enum member's url>``
(``$TORCH_HOME/hub/checkpoints/...``), exactly where torchgeo's own ``get_state_dict`` would cache
it, or ``weights_path``. A missing file is a ``ConfigError`` naming the full expected path and the
url to download on a machine with internet and copy there; torchgeo's ``get_state_dict`` (which
would download) is never called. The file is read with ``torch.load(weights_only=True)`` (the
core's ``read_state_dict``: no code runs) and must be a state dict of the timm ResNet torchgeo
builds (``timm.create_model(meta["model"], in_chans=meta["in_chans"])``, as
``torchgeo.models.resnet18/50`` do); only the classifier ``fc.weight``/``fc.bias`` may be absent or
extra (dropped: the projection to ``out_dim`` replaces it). Any other missing, unexpected or
differently shaped tensor (e.g. a file for another number of input channels) is a ``ConfigError``
naming the file and what was expected.

**Band order and scale.** The weights' band order is ``meta["bands"]`` (names such as ``B1``,
``B8a`` are matched to ours, ``B01``, ``B8A``, by name). Each weight channel takes our band of the
same name, whatever our order; bands of ours the weights do not take are dropped. A weight band we
do not have (``B10``, cirrus, for the 13-band L1C weights ``*_ALL_*``: L2A has no B10) is REFUSED
with a ``ConfigError`` naming both band lists, unless ``fill_missing = "zeros"``: then that channel
is 0 *after* the weights' normalisation (the training mean for statistics-normalised weights,
DN 0 for the /10000 ones). That is an APPROXIMATION: the network sees a band it was trained with
as constant; expect some loss of accuracy (B10 carries cirrus signal only).

- Sentinel-2: our tensors are L2A reflectance ``rho = (DN + BOA_ADD_OFFSET) / 10000``. torchgeo's
  S2 weights normalise raw DN (``transforms``: ``Normalize(0, 10000)`` or per-band DN statistics).
  The encoder converts back: ``DN = 10000 * rho + dn_offset``, then applies the weights' own
  ``Normalize`` chain, composed into one per-channel ``x * scale + shift``. ``dn_offset`` defaults to
  0: SSL4EO-S12 (the MoCo/DINO/DeCUR/... S2 weights) was sampled in 2021, before processing
  baseline 04.00 introduced the +1000 DN offset, so their DN are ``10000 * rho``; set
  ``dn_offset = 1000`` to reproduce post-2022 DN. The *_ALL_* weights were trained on L1C
  (top-of-atmosphere) reflectance, ours is L2A (bottom-of-atmosphere): same scale, a known domain
  shift that fine-tuning absorbs. Weights whose transforms take 8-bit images (``/255``: SeCo RGB,
  Satlas, GASSL) have no reflectance scale and are refused.
- Sentinel-1: our S1 is VV/VH backscatter in dB, clipped to ``bands.S1_DB_RANGE``. SSL4EO-S12's
  ``SENTINEL1_GRD_*`` (MoCo, DeCUR, SoftCon) weights take dB too (GEE ``S1_GRD``; torchgeo's
  transforms normalise with dB statistics, mean -12.59/-20.26, std 5.26/5.91), so the encoder
  clips and applies exactly that normalisation. Weights with no normalisation in torchgeo
  (``SENTINEL1_GRD_CLOSP``/``GEOCLOSP``: ``nn.Identity``) declare no scale and are refused.

torchgeo's ``Resize``/``CenterCrop`` are not applied: the encoder pools globally and takes the
patches as they come (>= 32 px gives layer4 a 1x1 map).

**Training.** ``blocks()`` = stem (conv1 + bn1), layer1..layer4, projection, for ``train = "last:N"``.
BatchNorm layers of blocks with no trainable parameter stay in eval mode (``FusionModel.train``; their pretrained
running statistics are kept); with ``train = "all"`` the backbone's BatchNorm needs sub-batches
of more than one row per modality.

**Digest.** The loaded file's SHA-256 is ``encoder.weights_sha256`` and the buffer
``weights_digest`` (32 bytes, in every state dict and so in every checkpoint, FL round and
rebuild; ``digest_hex(module)`` reads it back). ``options.weights_sha256`` refuses any other file.
For the digest in the model config's own ``weights_sha256`` field (as the core records for
``weights = path``), give the file at the core level and ``options.load = false``::

    encoders.s2 = {name = "torchgeo_resnet", weights = hub_path("ResNet18_Weights.SENTINEL2_ALL_MOCO"),
                   options = {weights = "ResNet18_Weights.SENTINEL2_ALL_MOCO", load = false, ...}}

the core then calls ``load_pretrained(state_dict, path)`` and records the SHA-256 itself.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmdomain import ConfigError, DataError
from mmdomain.models.weights import (
    check_digest,
    describe_mismatch,
    read_state_dict,
    sha256_of,
    state_mismatch,
)
from mmdomain.registry import ModalitySpec

from .bands import S1_DB_RANGE, S1_POLARISATIONS, S2_BANDS, s2_band_subset

FILL = ("refuse", "zeros")
HEAD_KEYS = {"fc.weight", "fc.bias"}


def _weights_enum(text: str):
    """The torchgeo ``Weights`` of ``"<EnumName>.<MEMBER>"`` (aliases such as ``SENTINEL1_GRD_MOCO`` too)."""
    import torchgeo.models as tgm

    m = re.fullmatch(r"\s*(\w+_Weights)\.(\w+)\s*", str(text))
    enum = getattr(tgm, m.group(1), None) if m else None
    if enum is None or not re.fullmatch(r"ResNet\d+_Weights", m.group(1)):
        raise ConfigError(f"torchgeo_resnet: weights {text!r} is not '<ResNetNN_Weights>.<MEMBER>' of torchgeo.models "
                          "(e.g. 'ResNet18_Weights.SENTINEL2_ALL_MOCO', 'ResNet50_Weights.SENTINEL1_GRD_MOCO')")
    try:
        return enum[m.group(2)]
    except KeyError:
        names = [n for n in enum.__members__ if n.startswith("SENTINEL")]
        raise ConfigError(f"torchgeo_resnet: {m.group(1)} has no member {m.group(2)!r}; the Sentinel ones: "
                          f"{', '.join(names)}") from None


def hub_path(weights: str) -> Path:
    """Where the file of ``weights`` (``"<EnumName>.<MEMBER>"``) must lie: torch's hub cache
    (``$TORCH_HOME/hub/checkpoints/``) + the file name at the end of its url."""
    w = _weights_enum(weights)
    return Path(torch.hub.get_dir()) / "checkpoints" / w.url.rsplit("/", 1)[-1].split("?")[0]


def _read(path: Path, where: str) -> dict[str, Tensor]:
    """The core's ``read_state_dict``, with any unpickling failure it lets through made a ``ConfigError``."""
    try:
        return read_state_dict(path, where)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. IndexError from the weights-only unpickler on garbage
        raise ConfigError(f"{where}: {path} is not a readable weights file ({type(exc).__name__}: {exc}); expected "
                          "a torch state dict of torchgeo's weights") from None


def _band_key(name: str) -> str:
    """``B1`` / ``B01`` / ``b8a`` -> ``B01`` / ``B01`` / ``B8A``; ``VV`` -> ``VV``."""
    n = str(name).strip().upper()
    m = re.fullmatch(r"B0*(\d+)(A?)", n)
    if not m:
        return n
    return f"B{int(m.group(1))}A" if m.group(2) else f"B{int(m.group(1)):02d}"


def _normalize_chain(w, where: str) -> tuple[list[float], list[float]]:
    """The weights' ``Normalize`` layers composed: channel c of the input x maps to x*scale+shift."""
    c = int(w.meta["in_chans"])
    scale, shift = [1.0] * c, [0.0] * c
    mods = list(w.transforms) if isinstance(w.transforms, nn.Sequential) else [w.transforms]
    norms = 0
    for mod in mods:
        kind = type(mod).__name__
        if kind in ("Resize", "CenterCrop", "Identity"):
            continue
        if kind != "Normalize":
            raise ConfigError(f"{where}: the weights' transforms hold {kind}, which this encoder does not reproduce")
        mean, std = list(mod.mean), list(mod.std)
        mean, std = (mean * c if len(mean) == 1 else mean), (std * c if len(std) == 1 else std)
        if any(abs(s - 255) < 1e-6 or abs(s - 1 / 255) < 1e-9 for s in std):
            raise ConfigError(f"{where}: these weights take 8-bit images (their transforms divide by 255), not "
                              "reflectance; use an SSL4EO-S12 / SeCo-Eco / CLOSP weight (e.g. "
                              "ResNet18_Weights.SENTINEL2_ALL_MOCO, ResNet50_Weights.SENTINEL2_ALL_SECO_ECO)")
        for i in range(c):  # ((x*a + b) - mean) / std
            scale[i], shift[i] = scale[i] / std[i], (shift[i] - mean[i]) / std[i]
        norms += 1
    if norms == 0 and not any(b.startswith("B") for b in w.meta.get("bands") or ()):
        raise ConfigError(f"{where}: torchgeo declares no normalisation for these weights, so their input scale "
                          "(dB or linear) is unknown; use ResNet50_Weights.SENTINEL1_GRD_MOCO / _DECUR / _SOFTCON")
    return scale, shift


class TorchGeoResNet(nn.Module):
    """A timm ResNet with torchgeo's pretrained weights from a local file; see the module docstring."""

    def __init__(self, modality: ModalitySpec, weights: str | None = None, out_dim: int = 128,
                 weights_path: str | None = None, bands: list[str] | None = None, fill_missing: str = "refuse",
                 dn_offset: float = 0.0, weights_sha256: str | None = None, load: bool = True, dense: bool = False):
        super().__init__()
        import timm

        if fill_missing not in FILL:
            raise ConfigError(f"torchgeo_resnet: fill_missing {fill_missing!r}; use one of {FILL}")
        if not weights:  # the random-init baseline: same architecture, no file
            if weights_path:
                raise ConfigError("torchgeo_resnet: weights_path needs options.weights, the torchgeo weights it "
                                  "holds (their bands, scale and architecture), e.g. 'ResNet18_Weights.SENTINEL2_ALL_MOCO'")
            self._baseline(modality, out_dim, bands, dense)
            return
        w = _weights_enum(weights)
        self.weights_name, self.url = str(weights).strip(), w.url
        member = self.weights_name.split(".", 1)[1]
        self.sensor = "s2" if "SENTINEL2" in member else "s1" if "SENTINEL1" in member else None
        where = f"torchgeo_resnet {self.weights_name}"
        if self.sensor is None:
            raise ConfigError(f"{where}: only Sentinel-2 and Sentinel-1 weights are supported (SENTINEL2_*, SENTINEL1_*)")
        self.expected_sha256, self.dn_offset = weights_sha256, float(dn_offset)
        self.path = Path(weights_path) if weights_path else hub_path(self.weights_name)

        # the bands we are given, and the weights' bands
        ours = self._our_bands(modality, bands, where)
        theirs = tuple(_band_key(b) for b in w.meta["bands"])
        if len(theirs) != int(w.meta["in_chans"]):
            raise ConfigError(f"{where}: torchgeo declares {w.meta['in_chans']} channels but {len(theirs)} bands")
        missing = [b for b in theirs if b not in ours]
        if missing and fill_missing == "refuse":
            raise ConfigError(f"{where}: the weights take bands {', '.join(theirs)}; the input has "
                              f"{', '.join(ours)}: {', '.join(missing)} missing. Read the data with those bands, "
                              "or set fill_missing='zeros' (an approximation: the band is a constant 0 after "
                              "normalisation)")
        self.bands, self.weight_bands, self.filled = ours, theirs, tuple(missing)
        self.in_channels = len(ours)
        scale, shift = _normalize_chain(w, where)
        index = [ours.index(b) if b in ours else -1 for b in theirs]
        keep = torch.tensor([i >= 0 for i in index], dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("index", torch.tensor([max(i, 0) for i in index], dtype=torch.long), persistent=False)
        self.register_buffer("keep", keep, persistent=False)
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("weights_digest", torch.zeros(32, dtype=torch.uint8))
        self.weights_sha256: str | None = None

        self.arch, self.dense, self.out_dim = w.meta["model"], dense, out_dim
        self.net = timm.create_model(self.arch, pretrained=False, in_chans=int(w.meta["in_chans"]), num_classes=0)
        ch = self.net.num_features
        self.head = nn.Conv2d(ch, out_dim, 1) if dense else nn.Linear(ch, out_dim)
        if load:
            if not self.path.is_file():
                raise ConfigError(self._missing_message())
            self.load_pretrained(_read(self.path, where), self.path)

    def _baseline(self, modality: ModalitySpec, out_dim: int, bands, dense: bool) -> None:
        import timm

        self.weights_name, self.url, self.path, self.expected_sha256 = None, None, None, None
        self.sensor = "s1" if modality.name == "s1" or (modality.channels == 2 and bands is None) else "s2"
        self.dn_offset = 0.0
        ours = self._our_bands(modality, bands, "torchgeo_resnet")
        self.bands = self.weight_bands = ours
        self.filled, self.in_channels = (), len(ours)
        if self.sensor == "s2":  # reflectance as is: DN / 10000
            scale, shift = [1e-4] * len(ours), [0.0] * len(ours)
        else:  # SSL4EO-S12's dB statistics
            stats = {"VV": (-12.59, 5.26), "VH": (-20.26, 5.91)}
            scale = [1 / stats[b][1] for b in ours]
            shift = [-stats[b][0] / stats[b][1] for b in ours]
        self.register_buffer("index", torch.arange(len(ours)), persistent=False)
        self.register_buffer("keep", torch.ones(1, len(ours), 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("weights_digest", torch.zeros(32, dtype=torch.uint8))
        self.weights_sha256 = self.weights_source = None
        self.arch, self.dense, self.out_dim = "resnet18", dense, out_dim
        self.net = timm.create_model(self.arch, pretrained=False, in_chans=len(ours), num_classes=0)
        self.head = nn.Conv2d(self.net.num_features, out_dim, 1) if dense else nn.Linear(self.net.num_features, out_dim)

    def _our_bands(self, modality: ModalitySpec, bands, where: str) -> tuple[str, ...]:
        if self.sensor == "s2":
            if bands is None:
                if modality.channels not in (None, len(S2_BANDS)):
                    raise ConfigError(f"{where}: the {modality.name} input has {modality.channels} channels; name "
                                      "them with options.bands (the dataset's s2_bands)")
                return S2_BANDS
            try:
                return s2_band_subset(bands, where=f"{where}: bands")
            except DataError as exc:
                raise ConfigError(str(exc)) from None
        names = tuple(str(b).strip().upper() for b in (bands or S1_POLARISATIONS))
        if not names or any(b not in S1_POLARISATIONS for b in names) or len(set(names)) != len(names):
            raise ConfigError(f"{where}: bands {list(names)}; Sentinel-1 bands are {', '.join(S1_POLARISATIONS)}")
        return names

    def _missing_message(self) -> str:
        return (f"torchgeo_resnet {self.weights_name}: weights file {self.path} not found. Nothing is downloaded: "
                f"on a machine with internet, download {self.url} and copy it to {self.path} (torch hub cache: "
                "$TORCH_HOME/hub/checkpoints/), or give options.weights_path")

    def load_pretrained(self, state: dict[str, Tensor], path) -> None:
        """Load a torchgeo ResNet state dict (the core calls this for ``weights = path``)."""
        path = Path(path)
        where = f"torchgeo_resnet {self.weights_name}"
        digest = sha256_of(path)
        check_digest(digest, self.expected_sha256, where, path)
        state = {k: v for k, v in state.items() if k not in HEAD_KEYS}
        mismatch = state_mismatch(self.net.state_dict(), state)
        if any(mismatch):
            raise ConfigError(f"{where}: {path} is not the {self.arch} with {self.net.conv1.in_channels} input "
                              f"channels ({', '.join(self.weight_bands)}) these weights are: "
                              + describe_mismatch(*mismatch, own="expected"))
        self.net.load_state_dict(state, strict=True)
        self.weights_sha256, self.weights_source = digest, str(path)
        self.weights_digest.copy_(torch.tensor(list(bytes.fromhex(digest)), dtype=torch.uint8))

    def blocks(self) -> list[nn.Module]:
        n = self.net
        return [nn.ModuleList([n.conv1, n.bn1]), n.layer1, n.layer2, n.layer3, n.layer4, self.head]

    def prepare(self, x: Tensor) -> Tensor:
        """Our input (reflectance or dB, in ``bands`` order) -> the weights' input, in their band order."""
        if x.shape[1] != self.in_channels:
            raise ConfigError(f"torchgeo_resnet takes {self.in_channels} bands ({', '.join(self.bands)}), the input "
                              f"has {x.shape[1]}: give options.bands the dataset's bands")
        if self.sensor == "s2":
            x = x * 10000.0 + self.dn_offset  # reflectance -> DN (see the module docstring)
        else:
            x = x.clamp(*S1_DB_RANGE)
        return (x.index_select(1, self.index) * self.scale + self.shift) * self.keep

    def forward(self, x: Tensor) -> Tensor:
        n = self.net
        h = n.maxpool(n.act1(n.bn1(n.conv1(self.prepare(x)))))
        h = n.layer4(n.layer3(n.layer2(n.layer1(h))))
        return self.head(h) if self.dense else self.head(h.mean((2, 3)))


def digest_hex(module: nn.Module) -> str | None:
    """The SHA-256 recorded in a ``torchgeo_resnet``'s ``weights_digest`` buffer (None: none loaded)."""
    b = bytes(module.weights_digest.tolist())
    return None if not any(b) else b.hex()


def build(modality: ModalitySpec, **options: Any) -> TorchGeoResNet:
    return TorchGeoResNet(modality, **options)
