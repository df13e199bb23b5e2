"""An open_clip image / text pair from ONE local model folder (nothing is downloaded):
``openclip_image`` (the image tower), ``openclip_text`` (the text tower) and ``openclip_tokenizer``
(the tokenizer of that text tower), each given ``path =`` the same folder.

The folder has the layout of open_clip's Hugging Face hub repositories (what
``hf download <repo> --local-dir <path>`` writes, e.g. for ``laion/CLIP-ViT-B-32-laion2B-s34B-b79K``):

- ``open_clip_config.json``: ``{"model_cfg": {"embed_dim", "vision_cfg", "text_cfg", ...},
  "preprocess_cfg": {"mean", "std", "interpolation", "resize_mode", ...}}``;
- the weights of the whole pair, ``open_clip_model.safetensors`` (read first) or
  ``open_clip_pytorch_model.bin`` (a torch pickle, read with ``weights_only``: no code in it runs),
  under open_clip's own key names (``visual.*``, ``token_embedding.weight``, ``transformer.*``...
  or ``text.*``), as ``open_clip.create_model(...).state_dict()`` writes them.

The model is built by open_clip itself (``create_model("local-dir:<path>")``, with no weights and
no tower's default weights: nothing names a hub, no ``pretrained=`` tag), its text tower as a
separate module (``force_custom_text``, the file's keys mapped by open_clip's own
``convert_to_custom_text_state_dict``). The weight file is then checked against the WHOLE pair's
architecture (both towers: a file of another model, another width, depth or patch size is
refused naming the file and the architecture the config describes) and loaded; each encoder keeps
its own tower. A Hugging Face text tower (``text_cfg.hf_model_name``, e.g. BiomedCLIP's PubMedBERT)
takes its ``config.json`` from the folder, else from the Hugging Face cache, never from the hub.

Provenance: ``weights_source`` is the weight file and ``weights_sha256`` its SHA-256, the same for
both towers of the pair, which the core records in the model config (``started_from``): every
site can check that it starts from the same file, and a checkpoint says what it started from.
``path_sha256 =`` refuses a folder whose weight file has another digest.

Train policies: ``blocks()`` is the tower's stem (patch / token embeddings), each transformer
block (the last one with the tower's final norm and projection, as open_clip's own ``lock``
groups them), then this encoder's projection: ``last:1`` trains the projection only, ``last:2``
the last transformer block too. (``lora:R`` adapts every Linear; the attention's ``out_proj`` of
``nn.MultiheadAttention`` is not called as a module, so its adapter stays at zero and only the
MLPs and projections adapt.)

Without ``path`` the encoders are a tiny random open_clip ViT / text transformer (the
architecture only; what the contract tests and a checkpoint to fill need).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdomain import ConfigError
from mmdomain.models.weights import check_digest, read_state_dict, sha256_of

from .pretrained import TOKENIZER_FILES, compare_keys, describe_mismatch, folder_digest, freeze_batchnorm_stats, \
    register_opacus_rules

CONFIG_FILE = "open_clip_config.json"
#: the weight files of an open_clip hub folder, in the order they are looked for (safetensors first,
#: as open_clip does); ``model.safetensors`` / ``pytorch_model.bin`` in such repositories are the
#: transformers port of the model, another key layout, and are not read
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CONFIG_BYTES = 1 << 20  # an open_clip_config.json is a few hundred bytes
BN_MODES = ("frozen", "batch")
_HINT = ("on a machine with internet access, `hf download <repo> --local-dir {path}` (huggingface_hub's CLI; "
         "`huggingface-cli download` in older versions), <repo> an open_clip model on the Hugging Face hub, e.g. "
         "laion/CLIP-ViT-B-32-laion2B-s34B-b79K, then copy the folder here")
#: the random architecture when no folder is given (tiny: a stand-in for a checkpoint to fill)
TINY_CFG = {"embed_dim": 64,
            "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
            "text_cfg": {"context_length": 64, "width": 64, "heads": 2, "layers": 2}}
_DIGESTS: dict[tuple, str] = {}


def _open_clip():
    import open_clip

    return open_clip


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """open_clip logs through the root logger (``logging.info`` / ``logging.warning``: "Model
    initialized randomly" before this module loads the weights); those records are dropped, and
    the root logger is not configured by them (the module-level calls ``basicConfig`` when the
    root has no handler)."""
    root = logging.getLogger()
    package = str(Path(_open_clip().__file__).parent)
    null = logging.NullHandler() if not root.handlers else None
    drop = logging.Filter()
    drop.filter = lambda record: not str(record.pathname).startswith(package)  # type: ignore[method-assign]
    if null:
        root.addHandler(null)
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
        if null:
            root.removeHandler(null)


def _sha256(path: Path) -> str:
    """The file's SHA-256, remembered per process while its size and time are unchanged (the two
    towers of a pair read the same, possibly large, file)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_of(path)
    return _DIGESTS[key]


# -- the folder -------------------------------------------------------------------------------------
def model_folder(path: str | Path, where: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{where}: {folder} is not a local open_clip model folder (nothing is downloaded): "
                          f"copy an open_clip model folder there, with {CONFIG_FILE} and {' or '.join(WEIGHT_FILES)}; "
                          "to get one: " + _HINT.format(path=folder))
    return folder


def read_config(folder: Path, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model_cfg, preprocess_cfg)`` of the folder's ``open_clip_config.json``."""
    cfg_path = folder / CONFIG_FILE
    expected = ('expected a JSON object {"model_cfg": {"embed_dim": ..., "vision_cfg": {...}, "text_cfg": {...}}, '
                '"preprocess_cfg": {...}} as open_clip writes it')
    if not cfg_path.is_file():
        raise ConfigError(f"{where}: {cfg_path} not found: the folder {folder} is no open_clip model folder "
                          f"({CONFIG_FILE} and the weights belong there); to get one: " + _HINT.format(path=folder))
    if cfg_path.stat().st_size > CONFIG_BYTES:
        raise ConfigError(f"{where}: {cfg_path} is {cfg_path.stat().st_size} bytes, not an open_clip config "
                          f"(at most {CONFIG_BYTES}); {expected}")
    try:
        data = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where}: {cfg_path} is not valid JSON ({exc}); {expected}") from None
    model_cfg = data.get("model_cfg") if isinstance(data, dict) else None
    if not isinstance(model_cfg, dict) or not all(isinstance(model_cfg.get(k), dict)
                                                  for k in ("vision_cfg", "text_cfg")) \
            or not isinstance(model_cfg.get("embed_dim"), int):
        raise ConfigError(f"{where}: {cfg_path} holds no open_clip model config; {expected}")
    pre = data.get("preprocess_cfg", {})
    if not isinstance(pre, dict):
        raise ConfigError(f"{where}: {cfg_path}: preprocess_cfg is not an object; {expected}")
    return model_cfg, pre


def weights_file(folder: Path, where: str) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(f"{where}: no weight file in {folder}: expected {folder / WEIGHT_FILES[0]} or "
                      f"{folder / WEIGHT_FILES[1]} (the open_clip weights of the pair {CONFIG_FILE} describes; "
                      "read from local files only). To get it there: " + _HINT.format(path=folder))


def describe_architecture(model_cfg: dict[str, Any]) -> str:
    """The pair an ``open_clip_config.json`` describes, in words (for errors)."""
    v, t = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    if v.get("timm_model_name"):
        vision = f"timm {v['timm_model_name']} at {v.get('image_size', 224)}"
    elif isinstance(v.get("layers"), (list, tuple)):
        vision = (f"ModifiedResNet layers {list(v['layers'])}, width {v.get('width', 64)}, "
                  f"image {v.get('image_size', 224)}")
    else:
        vision = (f"ViT image {v.get('image_size', 224)}, patch {v.get('patch_size', 16)}, "
                  f"width {v.get('width', 768)}, {v.get('layers', 12)} layers")
    if t.get("hf_model_name"):
        text = f"Hugging Face {t['hf_model_name']}"
    else:
        text = (f"transformer width {t.get('width', 512)}, {t.get('layers', 12)} layers, context "
                f"{t.get('context_length', 77)}, vocabulary {t.get('vocab_size', 49408)}")
    return f"embed_dim {model_cfg.get('embed_dim')}; image tower: {vision}; text tower: {text}"


def _hf_text_config(folder: Path, name: str, where: str) -> str:
    """Where a Hugging Face text tower's ``config.json`` is read from: the folder, else the
    Hugging Face cache (never the hub)."""
    if (folder / "config.json").is_file():
        return str(folder)
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
    except Exception:  # noqa: BLE001 - e.g. a name that is no repository id
        cached = None
    if isinstance(cached, str) and Path(cached).is_file():
        return str(Path(cached).parent)
    raise ConfigError(f"{where}: the text tower of {folder / CONFIG_FILE} is the Hugging Face model {name!r}, whose "
                      f"config.json is neither in {folder} nor in the Hugging Face cache (nothing is downloaded); "
                      f"copy it into the folder: on a machine with internet access `hf download {name} config.json "
                      f"--local-dir {folder}`")


def _build(folder: Path | None, model_cfg: dict[str, Any], where: str) -> nn.Module:
    """The open_clip model (``CustomTextCLIP``, or ``CoCa``) of ``model_cfg``, random values; no
    weights of any kind are fetched (``pretrained_image`` / ``pretrained_text`` off, timm and
    Hugging Face towers from their configs only)."""
    oc = _open_clip()
    vision_cfg = {**model_cfg["vision_cfg"], "timm_model_pretrained": False}
    text_cfg = {**model_cfg["text_cfg"], "hf_model_pretrained": False}
    if text_cfg.get("hf_model_name"):
        text_cfg["hf_model_name"] = _hf_text_config(folder, text_cfg["hf_model_name"], where) if folder else None
    try:
        with _quiet():
            if folder is None:
                return oc.CustomTextCLIP(**{**model_cfg, "vision_cfg": vision_cfg, "text_cfg": text_cfg})
            return oc.create_model(f"local-dir:{folder}", load_weights=False, pretrained_image=False,
                                   pretrained_text=False, force_custom_text=True, device="cpu", precision="fp32",
                                   vision_cfg=vision_cfg, text_cfg=text_cfg)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure is the config's
        if isinstance(exc, (MemoryError, KeyboardInterrupt)):
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        source = folder / CONFIG_FILE if folder else "the random architecture"
        raise ConfigError(f"{where}: open_clip cannot build the model of {source} ({type(exc).__name__}: "
                          f"{first[:200]})") from None


_ZIP, _PICKLE = b"PK\x03\x04", 0x80  # torch.save's zip format; a pickle (legacy torch.save) from protocol 2 on


def read_weights(file: Path, where: str, expected: str) -> dict[str, Tensor]:
    """The tensors of an open_clip weight file: safetensors, or a torch pickle read with
    ``weights_only`` (``mmdomain.models.weights.read_state_dict``), its format checked first, so
    a file of another kind (an HTML error page saved under the name, a truncated download) is
    refused naming the file and what was expected."""
    with open(file, "rb") as f:
        head = f.read(9)
    if file.suffix == ".safetensors":
        size = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
        ok = len(head) == 9 and head[8:9] == b"{" and 0 < size <= file.stat().st_size - 8
        kind = "a safetensors file"
    else:
        ok = head.startswith(_ZIP) or (len(head) > 1 and head[0] == _PICKLE)
        kind = "a torch weights file (torch.save's zip or pickle format)"
    if not ok:
        raise ConfigError(f"{where}: {file} is not a readable weights file: not {kind}; expected {expected}")
    try:
        return read_state_dict(file, where)
    except ConfigError as exc:
        text = str(exc)
        if "Weights only load failed" in text:  # torch's first line would suggest weights_only=False
            text = (f"{where}: {file} is not a readable weights file: it holds Python objects other than tensors "
                    "(read with weights_only, nothing in it runs)")
        raise ConfigError(f"{text}; expected {expected}") from None


_LOGIT = ("logit_scale", "logit_bias")
_OLD_TEXT = ("text_projection", "positional_embedding", "token_embedding", "transformer", "ln_final")


def _file_key(key: str, converted: bool) -> str:
    """A key of the custom-text model as the file names it (``text.transformer.x`` ->
    ``transformer.x`` for files in CLIP's layout)."""
    if converted and key.startswith("text.") and key[5:].startswith(_OLD_TEXT):
        return key[5:]
    return key


def load_pair(path: str | Path, where: str, path_sha256: str | None = None
              ) -> tuple[nn.Module, dict[str, Any], Path, str]:
    """The open_clip model of the folder ``path`` with its weights: ``(model, preprocess_cfg,
    weight file, its SHA-256)``. The file must fit the whole pair (both towers)."""
    oc = _open_clip()
    from open_clip.model import convert_to_custom_text_state_dict

    folder = model_folder(path, where)
    model_cfg, _ = read_config(folder, where)
    file = weights_file(folder, where)
    digest = _sha256(file)
    check_digest(digest, path_sha256, where, file)
    model = _build(folder, model_cfg, where)
    state = read_weights(file, where, f"the open_clip state dict of the pair {folder / CONFIG_FILE} describes")
    state = oc.factory.convert_state_dict(model, state)  # open_clip's own third-party layouts (MobileCLIP)
    converted = "text_projection" in state and not hasattr(model, "text_projection")
    state = convert_to_custom_text_state_dict(state)  # CLIP's layout: the text tower's keys under text.
    # the layout open_clip writes for this config: CLIP's (text keys at the top) unless its text tower is custom
    clip_layout = not (model_cfg.get("custom_text") or model_cfg["text_cfg"].get("hf_model_name")
                       or "multimodal_cfg" in model_cfg)
    own = {k: v for k, v in model.state_dict().items() if k not in _LOGIT}
    position_ids = "text.transformer.embeddings.position_ids"  # older transformers' buffer: dropped, as open_clip does
    if position_ids not in own:
        state.pop(position_ids, None)
    theirs = {k: v for k, v in state.items() if k not in _LOGIT}
    missing, unexpected, shapes = compare_keys(own, theirs)
    if missing or unexpected or shapes:
        missing = [_file_key(k, clip_layout) for k in missing]
        unexpected = [_file_key(k, converted) for k in unexpected]
        shapes = [(_file_key(k, converted), got, want) for k, got, want in shapes]
        raise ConfigError(f"{where}: {file} does not fit the open_clip model {folder / CONFIG_FILE} describes "
                          f"({describe_architecture(model_cfg)}): " + describe_mismatch(missing, unexpected, shapes))
    model.load_state_dict(theirs, strict=False)  # logit_scale / logit_bias: neither tower's
    return model, oc.get_model_preprocess_cfg(model), file, digest


def pair_or_tiny(tower: nn.Module, path: str | None, where: str, path_sha256: str | None, **tiny: int
                 ) -> tuple[nn.Module, dict[str, Any]]:
    """The folder's pair (``load_pair``; ``tower.weights_source`` / ``weights_sha256`` set to its
    file and digest), or without ``path`` a tiny random one (``_tiny(**tiny)``, both None)."""
    tower.weights_source, tower.weights_sha256 = None, None
    if not path:
        return _tiny(**tiny)
    model, pre, file, digest = load_pair(path, where, path_sha256)
    tower.weights_source, tower.weights_sha256 = str(file), digest
    return model, pre


def _tiny(vocab_size: int = 49408, pad_id: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    oc = _open_clip()
    from dataclasses import asdict

    cfg = {**TINY_CFG, "text_cfg": {**TINY_CFG["text_cfg"], "vocab_size": vocab_size, "pad_id": pad_id}}
    model = _build(None, cfg, "openclip (random)")
    pre = {**asdict(oc.transform.PreprocessCfg()), "size": model.visual.image_size}
    return model, pre


# -- blocks -----------------------------------------------------------------------------------------
class ParamGroup(nn.Module):
    """Some of a tower's parameters as one block for ``last:N``: those of several modules and
    those that belong to no module of their own (ViT's class and position embeddings, its
    ``proj``...). Made on the fly by ``blocks()``, never a child of the encoder: the same
    Parameter objects, no copies."""

    def __init__(self, params: Sequence[nn.Parameter]):
        super().__init__()
        self.params = nn.ParameterList(params)


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj


_LAYERS = ("transformer.resblocks", "transformer.encoder.layer", "transformer.encoder.layers", "transformer.layers",
           "transformer.layer", "trunk.blocks", "trunk.stages", "trunk.layers")
#: a tower's parameters before its blocks: patch / token / position embeddings, a ResNet stem
_STEM = {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "class_embedding", "positional_embedding", "ln_pre",
         "token_embedding", "cls_emb", "embeddings", "patch_embed", "cls_token", "pos_embed", "reg_token", "stem",
         "norm_pre", "patch_dropout"}


def tower_blocks(tower: nn.Module) -> list[nn.Module]:
    """A tower's stem, its blocks (the last with everything after it: final norm, pooling,
    projection), in input-to-output order; the whole tower as one block when it has none we know."""
    layers: list[nn.Module] = []
    if all(isinstance(getattr(tower, f"layer{i}", None), nn.Module) for i in range(1, 5)):  # ModifiedResNet
        layers = [getattr(tower, f"layer{i}") for i in range(1, 5)]
    for dotted in _LAYERS:
        found = _get(tower, dotted)
        if not layers and isinstance(found, (nn.ModuleList, nn.Sequential)) and len(found):
            layers = list(found)
    if not layers:
        return [ParamGroup(list(tower.parameters()))]
    inside = {id(p) for m in layers for p in m.parameters()}
    stem, head = [], []
    for name, p in tower.named_parameters():
        if id(p) in inside:
            continue
        parts = name.split(".")
        first = parts[1] if parts[0] in ("trunk", "transformer") and len(parts) > 1 else parts[0]
        (stem if first in _STEM else head).append(p)
    last = ParamGroup([*layers[-1].parameters(), *head])
    out = [ParamGroup(stem), *layers[:-1], last]
    return [b for b in out if any(True for _ in b.parameters())]


# -- the encoders -----------------------------------------------------------------------------------
def _first(out: Any) -> Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out  # (pooled, tokens) of CoCa / output_tokens towers


def _probe(tower: nn.Module, x: Tensor, where: str, source: str | None) -> int:
    """A tower's embedding width, from one forward pass (towers that do not say it)."""
    mode = tower.training
    try:
        with torch.no_grad():
            return int(_first(tower.eval()(x)).shape[-1])
    except Exception as exc:  # noqa: BLE001 - a config open_clip builds but cannot run
        if isinstance(exc, (MemoryError, KeyboardInterrupt)):
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError(f"{where}: the tower of {source or 'the random model'} does not run on an input of shape "
                          f"{tuple(x.shape)} ({type(exc).__name__}: {first[:200]}); check its config") from None
    finally:
        tower.train(mode)


class OpenClipImageEncoder(nn.Module):
    """The image tower of a local open_clip pair (``path =`` its folder; see the module), projected
    to ``out_dim``.

    Inputs are the modality's images in [0, 1], ``[B, C, H, W]``: grey (1 channel) is shown to the
    tower as R = G = B (3 channels as they are), resized to the tower's image size as the folder's
    ``preprocess_cfg`` says (``resize_mode`` shortest side + centre crop, ``longest`` + pad, or
    ``squash``; its ``interpolation``), then normalised by its ``mean`` / ``std`` (open_clip's
    OpenAI defaults when the folder names none): the transform open_clip applies, inside the
    encoder. The tower's embedding (``embed_dim``) goes through a trainable Linear to ``out_dim``;
    ``project = False`` keeps the pair's own embedding space (``out_dim`` must then be the tower's
    width). ``bn``: a BatchNorm tower (ModifiedResNet) normalises with the file's statistics
    (``"frozen"``, default; see ``pretrained.FrozenStatsBatchNorm2d``) or batch statistics
    (``"batch"``). ``path_sha256`` refuses another weight file."""

    encoder_name = "openclip_image"

    def __init__(self, modality, out_dim: int = 128, path: str | None = None, path_sha256: str | None = None,
                 project: bool = True, bn: str = "frozen"):
        super().__init__()
        where = self.encoder_name
        if modality.kind != "image":
            raise ConfigError(f"{where}: 2D images only; {modality.name!r} is {modality.kind!r}")
        if bn not in BN_MODES:
            raise ConfigError(f"{where}: bn={bn!r}; use one of {BN_MODES}")
        self.in_channels = modality.channels or 1
        if self.in_channels not in (1, 3):
            raise ConfigError(f"{where}: takes 1 (grey) or 3 (RGB) channels, {modality.name!r} has {self.in_channels}")
        model, pre = pair_or_tiny(self, path, where, path_sha256, vocab_size=8)  # (a tiny pair's text: dropped)
        self.visual = model.visual
        del model
        size = pre.get("size", getattr(self.visual, "image_size", 224))
        self.size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
        self.interpolation = "bicubic" if pre.get("interpolation", "bicubic") == "bicubic" else "bilinear"
        self.resize_mode = pre.get("resize_mode", "shortest")
        self.fill = float(pre.get("fill_color", 0)) / 255.0
        mean, std = pre.get("mean"), pre.get("std")
        if mean is None or std is None:
            oc = _open_clip()
            mean, std = oc.OPENAI_DATASET_MEAN, oc.OPENAI_DATASET_STD
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        if bn == "frozen":
            freeze_batchnorm_stats(self.visual)
        width = getattr(self.visual, "output_dim", None)
        if not isinstance(width, int):  # e.g. a timm tower: its width from one forward pass
            width = _probe(self.visual, torch.zeros(1, 3, *self.size), where, self.weights_source)
        self.embed_dim = width
        if not project and out_dim != width:
            raise ConfigError(f"{where}: project=false keeps the tower's {width}-dim embedding; set out_dim = {width}")
        self.proj = nn.Linear(width, out_dim) if project else nn.Identity()
        self.out_dim = out_dim

    def train(self, mode: bool = True) -> "OpenClipImageEncoder":
        super().train(mode)
        register_opacus_rules()
        return self

    def blocks(self) -> list[nn.Module]:
        """The tower's stem, its blocks (the last with its final norm and projection), the projection."""
        return tower_blocks(self.visual) + ([self.proj] if isinstance(self.proj, nn.Linear) else [])

    def prepare(self, x: Tensor) -> Tensor:
        x = x.float()
        h, w = x.shape[-2:]
        th, tw = self.size
        if (h, w) != (th, tw):
            if self.resize_mode == "squash":
                x = self._resize(x, (th, tw))
            else:
                scale = (max if self.resize_mode == "shortest" else min)(th / h, tw / w)
                x = self._resize(x, (max(1, round(h * scale)), max(1, round(w * scale))))
                x = _center(x, (th, tw), self.fill)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    def _resize(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        return F.interpolate(x, size=size, mode=self.interpolation, align_corners=False, antialias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(_first(self.visual(self.prepare(x))))


def _center(x: Tensor, size: tuple[int, int], fill: float) -> Tensor:
    """Centre crop (a larger side) and pad (a smaller one, with ``fill``) to ``size``."""
    th, tw = size
    h, w = x.shape[-2:]
    top, left = (h - th) // 2, (w - tw) // 2
    if top > 0 or left > 0:
        x = x[..., max(top, 0): max(top, 0) + min(h, th), max(left, 0): max(left, 0) + min(w, tw)]
    h, w = x.shape[-2:]
    if (h, w) != (th, tw):
        pt, pl = (th - h) // 2, (tw - w) // 2
        x = F.pad(x, (pl, tw - w - pl, pt, th - h - pt), value=fill)
    return x


class OpenClipTextEncoder(nn.Module):
    """The text tower of a local open_clip pair (``path =`` its folder; see the module), projected
    to ``out_dim``. Its ids come from ``openclip_tokenizer`` with the same ``path`` (the model's own
    tokenizer: CLIP's BPE with start / end tokens, or the folder's Hugging Face tokenizer); a
    tokenizer with a larger vocabulary than the tower's is refused. Ids are cut or padded to the
    tower's ``context_length`` (CLIP's causal mask is of that size; padding after the end token
    changes nothing). ``project`` and ``path_sha256``: as ``openclip_image``."""

    encoder_name = "openclip_text"

    def __init__(self, modality, vocab_size: int, pad_id: int = 0, out_dim: int = 128, path: str | None = None,
                 path_sha256: str | None = None, project: bool = True):
        super().__init__()
        where = self.encoder_name
        model, _ = pair_or_tiny(self, path, where, path_sha256, vocab_size=vocab_size, pad_id=pad_id)
        self.text = model.text
        del model
        oc = _open_clip()
        self.padded = isinstance(self.text, oc.transformer.TextTransformer)  # fixed-size causal mask
        self.context_length = int(getattr(self.text, "context_length", 0) or 512)
        self.pad_id = int(getattr(self.text, "pad_id", pad_id)) if self.padded else pad_id
        tower_vocab = int(getattr(self.text, "vocab_size", 0) or vocab_size)
        if vocab_size > tower_vocab:
            raise ConfigError(f"{where}: the tokenizer has {vocab_size} ids, the text tower of "
                              f"{self.weights_source or 'the random model'} {tower_vocab}: use openclip_tokenizer "
                              "with the same path")
        if self.padded:
            width = self.text.width if self.text.text_projection is None else self.text.output_dim
        else:
            width = getattr(self.text, "output_dim", None)
            if not isinstance(width, int):
                width = _probe(self.text, torch.full((1, 8), pad_id), where, self.weights_source)
        self.embed_dim = int(width)
        if not project and out_dim != self.embed_dim:
            raise ConfigError(f"{where}: project=false keeps the tower's {self.embed_dim}-dim embedding; set "
                              f"out_dim = {self.embed_dim}")
        self.proj = nn.Linear(self.embed_dim, out_dim) if project else nn.Identity()
        self.out_dim = out_dim

    def blocks(self) -> list[nn.Module]:
        """The token / position embeddings, each transformer block (the last with the final norm and
        the tower's projection), the projection."""
        return tower_blocks(self.text) + ([self.proj] if isinstance(self.proj, nn.Linear) else [])

    def forward(self, ids: Tensor) -> Tensor:
        ids = ids.long()[:, : self.context_length]
        if self.padded and ids.shape[1] < self.context_length:
            ids = F.pad(ids, (0, self.context_length - ids.shape[1]), value=self.pad_id)
        return self.proj(_first(self.text(ids)))


# -- the tokenizer ----------------------------------------------------------------------------------
_TOKENIZERS: dict[tuple, Any] = {}
#: the files that hold a Hugging Face tokenizer's vocabulary (one must be in the folder)
VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
               "tokenizer.model")


def _hf_tokenizer_hint(name: str, folder: Path) -> str:
    return (f"e.g. on a machine with internet access `hf download {name} --include 'tokenizer*' 'vocab*' "
            f"'special_tokens_map.json' '*.model' --local-dir {folder}`")


def _default_bpe() -> str:
    from open_clip.tokenizer import default_bpe

    return default_bpe()


class OpenClipTokenizer:
    """``openclip_tokenizer``: the tokenizer open_clip uses for the model of a local folder
    (``open_clip.get_tokenizer("local-dir:<path>")``: CLIP's BPE ``SimpleTokenizer``, its
    vocabulary shipped inside the open_clip package, with the config's ``tokenizer_kwargs``; or,
    for a config naming ``hf_tokenizer_name``, the Hugging Face tokenizer whose files are in the
    folder, read with ``local_files_only``). Ids are ``[B, min(max_length, context_length)]``, the
    end token kept when a text is cut. Nothing is fitted: every site with the same folder gets the
    same ids. ``digest``: SHA-256 over the config's ``text_cfg`` and the vocabulary files;
    ``path_sha256`` refuses another."""

    def __init__(self, path: str | None = None, path_sha256: str | None = None):
        where = "openclip_tokenizer"
        if not path:
            raise ConfigError(f"{where}: give path= a local open_clip model folder (the one of openclip_text)")
        folder = model_folder(path, where)
        model_cfg, _ = read_config(folder, where)
        text_cfg = model_cfg["text_cfg"]
        hf = text_cfg.get("hf_tokenizer_name")
        if hf and not any((folder / name).is_file() for name in VOCAB_FILES):
            # (transformers would build a BERT tokenizer of its 5 special tokens from config.json alone)
            raise ConfigError(f"{where}: the tokenizer of {folder / CONFIG_FILE} is the Hugging Face tokenizer "
                              f"{hf!r}, read from the folder itself, but {folder} has no vocabulary file (one of "
                              f"{', '.join(VOCAB_FILES)}); nothing is downloaded: copy its tokenizer files there, "
                              + _hf_tokenizer_hint(hf, folder))
        vocab = folder_digest(folder, only=TOKENIZER_FILES) if hf else _sha256(Path(_default_bpe()))
        self.digest = hashlib.sha256(json.dumps(text_cfg, sort_keys=True).encode() + b"\0" + vocab.encode()).hexdigest()
        check_digest(self.digest, path_sha256, where, folder, what="tokenizer")
        key = (str(folder.resolve()), self.digest)
        try:
            if key not in _TOKENIZERS:  # (CLIP's BPE takes a while to build; one per folder and process)
                with _quiet():
                    _TOKENIZERS[key] = _open_clip().get_tokenizer(f"local-dir:{folder}",
                                                                  **({"local_files_only": True} if hf else {}))
            self.tok = _TOKENIZERS[key]
        except Exception as exc:  # noqa: BLE001 - any failure is the folder's
            if isinstance(exc, (MemoryError, KeyboardInterrupt)):
                raise
            first = str(exc).splitlines()[0] if str(exc) else ""
            what = (f"the Hugging Face tokenizer {hf!r} from the files in {folder} ({_hf_tokenizer_hint(hf, folder)})"
                    if hf else f"open_clip's tokenizer of {folder / CONFIG_FILE}")
            raise ConfigError(f"{where}: cannot build {what} ({type(exc).__name__}: {first[:200]}); nothing is "
                              "downloaded") from None
        inner = getattr(self.tok, "tokenizer", None)  # open_clip's HFTokenizer wraps a transformers tokenizer
        if inner is not None:
            self.vocab_size = len(inner)
            self.pad_id = int(inner.pad_token_id if inner.pad_token_id is not None else 0)
        else:
            self.vocab_size = int(self.tok.vocab_size)
            self.pad_id = 0  # SimpleTokenizer pads with zeros
        self.context_length = int(self.tok.context_length)
        self.path, self.path_sha256 = path, path_sha256

    def __call__(self, texts: Sequence[str], max_length: int = 77) -> Tensor:
        return self.tok([t or "" for t in texts], context_length=max(2, min(max_length, self.context_length)))

    def config(self) -> dict[str, Any]:
        return {"path": self.path, **({"path_sha256": self.path_sha256} if self.path_sha256 else {})}
