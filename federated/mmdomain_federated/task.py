"""All ML work of the federated app: model, site data, local training, evaluation, weights.

Imports no flwr. Domains are reached only through the registry (the dataset name comes from
the run config); nothing here imports a domain plugin.
"""

from __future__ import annotations

import fcntl
import json
import math
import random
import tempfile
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from mmdomain.config import ModelConfig, parse
from mmdomain.errors import ConfigError, DataError
from mmdomain.fusion.base import upgrade_token_names
from mmdomain.models.compose import FusionModel, build_model
from mmdomain.registry import Registry
from mmdomain.training import evaluate, make_loader, seed_everything, select_device, train_one_epoch

GROUP_FUSION, GROUP_TASK = "fusion", "task"
SUPPRESS_BELOW = 5  # count cells / per-pattern metrics below this are not sent


# -- settings ------------------------------------------------------------------------------
@dataclass
class Settings:
    """The run config (``[tool.flwr.app.config]``), typed. Keys are the kebab-case names."""

    dataset: str = "toy"
    data_root: str = ""
    partition: str = ""
    site_modalities: str = ""
    synthetic_quick: bool = True
    num_server_rounds: int = 3
    local_epochs: int = 1
    batch_size: int = 16
    lr: float = 0.003
    max_steps: int = 0
    fusion: str = ""
    strategy: str = "fedavg"
    proximal_mu: float = 0.01
    aggregation: str = "modality"
    min_sites: int = 2
    expected_sites: int = 0
    round_timeout: float = 600.0
    seed: int = 0
    device: str = "auto"
    fused_eval: bool = True
    readiness: bool = True
    outlier_factor: float = 10.0
    central_dp: bool = False
    noise_multiplier: float = 1.0
    clip_norm: float = 1.0
    target_delta: float = 1e-5
    max_epsilon: float = 0.0
    local_dp: bool = False
    local_noise_multiplier: float = 1.0
    local_clip_norm: float = 1.0
    secagg: bool = False
    secagg_shares: float = 1.0  # fraction of the round's sites each one shares its mask secrets with
    secagg_threshold: float = 0.67  # fraction of those shares needed to unmask a dropped site
    secagg_clip_range: float = 1.0  # |weight x delta| and weights are quantised within this range
    secagg_weight_scale: float = 1000.0  # sample counts are divided by this before weighting
    compress: str = "none"
    out_dir: str = ""
    resume: bool = True
    stop_after_round: int = 0

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> "Settings":
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in dict(run_config).items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(f"run config: unknown key {key!r}; known: {sorted(k.replace('_', '-') for k in known)}")
            typ = type(known[name].default)
            try:
                values[name] = (str(value).lower() in ("1", "true", "yes")) if typ is bool and isinstance(value, str) \
                    else typ(value)
            except (TypeError, ValueError):
                raise ConfigError(f"run config: {key}={value!r} is not a {typ.__name__}") from None
        s = cls(**values)
        if s.strategy not in ("fedavg", "fedprox"):
            raise ConfigError(f"run config: strategy must be fedavg or fedprox, got {s.strategy!r}")
        if s.aggregation not in ("modality", "plain"):
            raise ConfigError(f"run config: aggregation must be modality or plain, got {s.aggregation!r}")
        if s.compress not in ("none", "bf16"):
            raise ConfigError(f"run config: compress must be none or bf16, got {s.compress!r}")
        if s.secagg and not (0 < s.secagg_shares <= 1 and 0 < s.secagg_threshold <= 1):
            raise ConfigError("run config: secagg-shares and secagg-threshold are fractions in (0, 1]")
        if s.secagg and (s.secagg_clip_range <= 0 or s.secagg_weight_scale <= 0):
            raise ConfigError("run config: secagg-clip-range and secagg-weight-scale must be > 0")
        if s.secagg and s.compress != "none":
            raise ConfigError("run config: compress applies to clear-text updates; SecAgg+ quantises its own")
        return s

    def as_run_config(self) -> dict[str, Any]:
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}


# -- model -----------------------------------------------------------------------------------
def model_config(settings: Settings, registry: Registry) -> ModelConfig:
    """The dataset's default model (fusion overridable). Tokenizers must not need fitting:
    a vocabulary fitted on one site's texts would leak its words and differ between sites."""
    spec = registry.dataset(settings.dataset)
    if not spec.default_model:
        raise ConfigError(f"dataset {spec.name!r} has no default model to train federated")
    data = json.loads(json.dumps(spec.default_model))
    if settings.fusion:
        data["fusion"] = {"name": settings.fusion, "options": {}}
    if settings.local_dp:
        data["encode_absent"] = True  # per-sample gradients need every row through every encoder
        data["modality_dropout"] = 0.0
    cfg = parse(ModelConfig, data, f"default model of dataset {spec.name!r}")
    for m, comp in cfg.tokenizers.items():
        if registry.tokenizer(comp.name).fit is not None and not comp.fitted:
            raise ConfigError(f"tokenizers.{m}: {comp.name!r} fits a vocabulary on site texts, which would leave "
                              "the site and differ between sites; federated runs need one without fitting "
                              "(e.g. 'hashing')")
    return cfg


def build(settings: Settings, registry: Registry) -> FusionModel:
    """Same settings, same initial weights (seeded), on every site and the server."""
    torch.manual_seed(settings.seed)
    model = build_model(model_config(settings, registry), registry)
    if settings.local_dp:
        _ready_for_dp_sgd(model)
    return model


def _ready_for_dp_sgd(model: torch.nn.Module) -> None:
    """DP-SGD cannot use BatchNorm (its batch statistics mix samples): Opacus' own fixer swaps
    each for a GroupNorm. In-place activations (MONAI's ResNet) break Opacus' backward hooks, so
    they run out of place. Same on the server and every site: all build with these settings."""
    from opacus.validators.batch_norm import fix

    for module in list(model.modules()):
        if getattr(module, "inplace", False) is True:
            module.inplace = False
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.modules.batchnorm._BatchNorm):
                setattr(module, name, fix(child))


def param_group(name: str) -> str:
    """``encoder:<modality>``, ``fusion`` or ``task`` for a state_dict key."""
    head = name.split(".", 2)
    if head[0] == "encoders" and len(head) > 1:
        return f"encoder:{head[1]}"
    if head[0] == "fusion":
        return GROUP_FUSION
    return GROUP_TASK


def get_weights(model: torch.nn.Module, groups: set[str] | None = None) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()
            if groups is None or param_group(k) in groups}


def set_weights(model: torch.nn.Module, weights: dict[str, np.ndarray]) -> None:
    """Load (possibly partial) named arrays; a name or shape that does not fit is an error.
    Names from older versions (bare missing-modality tokens) are upgraded first."""
    state = model.state_dict()
    for k, v in upgrade_token_names(weights).items():
        if k not in state:
            raise ConfigError(f"weights: {k!r} is not a parameter of this model (different dataset or version?)")
        v = np.asarray(v)
        if v.size == state[k].numel() and v.ndim != state[k].dim():  # 0-d arrays travel as shape (1,)
            v = v.reshape(tuple(state[k].shape))
        if tuple(state[k].shape) != tuple(v.shape):
            raise ConfigError(f"weights: {k!r} has shape {tuple(v.shape)}, the model expects {tuple(state[k].shape)}")
        state[k] = torch.from_numpy(np.asarray(v)).to(state[k].dtype)
    model.load_state_dict(state)


# -- update compression ------------------------------------------------------------------------
def bf16_encode(a: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits (uint16), round to nearest even. Other dtypes pass unchanged."""
    if a.dtype != np.float32:
        return a
    bits = np.ascontiguousarray(a).view(np.uint32)
    rounded = bits + (0x7FFF + ((bits >> 16) & 1))
    return (rounded >> 16).astype(np.uint16)


def bf16_decode(a: np.ndarray) -> np.ndarray:
    if a.dtype != np.uint16:
        return a
    return (a.astype(np.uint32) << 16).view(np.float32)


# -- site data ---------------------------------------------------------------------------------
class HideModalities(Dataset):
    """A site that does not hold some modalities: they are removed from every sample."""

    def __init__(self, base: Dataset, keep: set[str]):
        self.base, self.keep = base, keep

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        s = self.base[i]
        s.inputs = {m: v for m, v in s.inputs.items() if m in self.keep}
        return s


def synthetic_root(registry: Registry, dataset: str, num_sites: int, seed: int, quick: bool = True) -> Path:
    """Generate (once per machine, under a lock) synthetic site folders for ``dataset``."""
    gen = registry.synthetic_for(dataset)
    root = Path(tempfile.gettempdir()) / "mmdomain-fed-synth" / f"{dataset}-{gen.name}-{num_sites}-{seed}-{int(quick)}"
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / ".done").exists():
            gen.generate(root / "sites", num_sites=num_sites, seed=seed, **(gen.quick_options if quick else {}))
            (root / ".done").write_text("ok")
    return root / "sites"


def site_folders(root: Path) -> list[Path]:
    return sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))


def parse_site_modalities(text: str) -> dict[int, set[str]]:
    """``"0=a+b;2=a"`` -> ``{0: {a, b}, 2: {a}}``."""
    out: dict[int, set[str]] = {}
    for part in filter(None, (p.strip() for p in text.replace(",", ";").split(";"))):
        site, _, mods = part.partition("=")
        out[int(site)] = {m.strip() for m in mods.split("+") if m.strip()}
    return out


def load_site(settings: Settings, node_config: dict[str, Any], registry: Registry, split: str,
              manager=None) -> Dataset:
    """This site's data for ``split``.

    Deployment: ``--node-config 'data-root=/path/to/site'`` (and optionally ``modalities=a+b``).
    Simulation: ``partition-id`` / ``num-partitions`` pick a site folder under the run config's
    ``data-root`` (synthetic sites when empty), or a partition-hook share of one dataset.
    """
    spec = registry.dataset(settings.dataset)
    keep: set[str] | None = None
    if node_config.get("data-root"):
        ds = spec.build(Path(str(node_config["data-root"])), split=split)
        if node_config.get("modalities"):
            keep = {m for m in str(node_config["modalities"]).split("+") if m}
    else:
        if "partition-id" not in node_config:
            raise ConfigError("node config: give data-root=<this site's folder> (deployment) "
                              "or partition-id/num-partitions (simulation)")
        pid, n = int(node_config["partition-id"]), int(node_config["num-partitions"])
        root = Path(settings.data_root) if settings.data_root else \
            synthetic_root(registry, settings.dataset, n, settings.seed, settings.synthetic_quick)
        if settings.partition:
            full = spec.build(root, split=split)
            if manager is None:
                from mmdomain.plugins import get_plugin_manager
                manager = get_plugin_manager()
            idx = manager.hook.partition(dataset=full, num_sites=n, site=pid, scheme=settings.partition)
            if idx is None:
                raise ConfigError(f"partition scheme {settings.partition!r} is not known to any installed plugin")
            ds = Subset(full, list(idx))
        else:
            folders = site_folders(root)
            if len(folders) < n:
                raise DataError(f"{root} has {len(folders)} site folders, the run needs {n}")
            ds = spec.build(folders[pid], split=split)
        keep = parse_site_modalities(settings.site_modalities).get(pid)
    return HideModalities(ds, keep) if keep is not None else ds


def counts(dataset: Dataset, modalities: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Samples holding each modality, and samples per availability pattern."""
    per_mod: Counter = Counter({m: 0 for m in modalities})
    patterns: Counter = Counter()
    for i in range(len(dataset)):
        have = [m for m in modalities if dataset[i].inputs.get(m) is not None]
        per_mod.update(have)
        patterns["+".join(have) or "(none)"] += 1
    return dict(per_mod), dict(patterns)


# -- local work ----------------------------------------------------------------------------------
def trained_groups(mod_counts: dict[str, int], n: int) -> set[str]:
    groups = {f"encoder:{m}" for m, c in mod_counts.items() if c > 0}
    return groups | ({GROUP_FUSION, GROUP_TASK} if n > 0 else set())


def train_site(model: FusionModel, dataset: Dataset, settings: Settings, *, device: torch.device | None = None,
               seed: int = 0) -> dict[str, Any]:
    """Local epochs with the core loop; FedProx adds ``mu/2 ||w - w_global||^2``; local DP-SGD
    (Opacus) when ``settings.local_dp``. Returns loss, sample count, with DP the site's epsilon,
    and on a GPU the peak memory this training allocated there."""
    device = device or select_device(settings.device)
    seed_everything(seed)
    model.to(device)
    loader = make_loader(dataset, model.modalities, settings.batch_size, shuffle=True, seed=seed, drop_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=1e-4)
    extra = None
    if settings.strategy == "fedprox" and settings.proximal_mu > 0:
        anchor = [p.detach().clone() for p in model.parameters()]
        mu = settings.proximal_mu

        def extra(m):  # noqa: E306
            return (mu / 2) * sum(((p - a) ** 2).sum() for p, a in zip(m.parameters(), anchor))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if settings.local_dp:
        from .local_dp import private_training
        out = private_training(model, loader, optimizer, settings, device=device, extra_loss=extra)
    else:
        loss, seen = 0.0, 0
        for _ in range(settings.local_epochs):
            stats = train_one_epoch(model, loader, optimizer, device=device, grad_clip=1.0, extra_loss=extra,
                                    max_steps=settings.max_steps or None)
            loss, seen = stats["loss"], seen + stats["samples"]
        out = {"train-loss": float(loss), "train-samples": seen}
    if device.type == "cuda":  # what this site's share of a (possibly shared) GPU has to hold
        out["gpu-peak-mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def evaluate_site(model: FusionModel, dataset: Dataset, settings: Settings,
                  device: torch.device | None = None) -> dict[str, Any]:
    device = device or select_device(settings.device)
    model.to(device)
    return evaluate(model, make_loader(dataset, model.modalities, 64, shuffle=False), device=device)


def flat_metrics(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """``evaluate`` output -> flat numeric metrics (overall + per pattern with >= 5 samples); no ids."""
    out = {f"{prefix}loss": float(result["loss"]), f"{prefix}n": int(result["n"])}
    out.update({f"{prefix}{k}": float(v) for k, v in result["overall"].items()})
    for p, vals in result["by_pattern"].items():
        if vals.get("n", 0) < SUPPRESS_BELOW:  # a metric over 1-4 samples would reveal their outcomes
            continue
        out.update({f"{prefix}{p}/{k}": float(v) for k, v in vals.items()})
    return out


# -- readiness ------------------------------------------------------------------------------------


def _noisy(count: int, rng: random.Random, scale: float) -> int | str:
    """Laplace-noised count; small cells (which could single someone out) are suppressed."""
    u = rng.random() - 0.5
    noisy = count - scale * math.copysign(1.0, u) * math.log(1 - 2 * abs(u)) if scale > 0 else count
    value = max(0, round(noisy))
    return f"<{SUPPRESS_BELOW}" if value < SUPPRESS_BELOW else value


def readiness(settings: Settings, node_config: dict[str, Any], registry: Registry, *, noise_scale: float = 2.0,
              seed: int | None = None) -> dict[str, Any]:
    """Per split: samples per modality and per availability pattern (noised, small cells
    suppressed) and the dataset's own ``describe`` statistics (integers noised the same way)."""
    rng = random.Random(seed)
    spec = registry.dataset(settings.dataset)
    modalities = model_config(settings, registry).modalities
    report: dict[str, Any] = {"dataset": spec.name, "splits": {}}
    for split in ("train", "val", "test"):
        try:
            ds = load_site(settings, node_config, registry, split)
        except DataError as exc:
            report["splits"][split] = {"error": str(exc).split("\n")[0]}
            continue
        per_mod, patterns = counts(ds, modalities)
        entry: dict[str, Any] = {"n": _noisy(len(ds), rng, noise_scale),
                                 "modalities": {m: _noisy(c, rng, noise_scale) for m, c in per_mod.items()},
                                 "patterns": {p: _noisy(c, rng, noise_scale) for p, c in sorted(patterns.items())}}
        if spec.describe is not None:
            base = ds.base if isinstance(ds, HideModalities) else ds
            try:
                entry["describe"] = _noise_tree(spec.describe(base), rng, noise_scale)
            except Exception as exc:  # a plugin's describe failing must not block training
                entry["describe"] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
        report["splits"][split] = entry
    return report


def _noise_tree(value: Any, rng: random.Random, scale: float) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return _noisy(value, rng, scale)
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {str(k): _noise_tree(v, rng, scale) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_noise_tree(v, rng, scale) for v in value]
    return value if isinstance(value, str) and len(value) <= 64 else None
