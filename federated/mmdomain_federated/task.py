"""The ML work of the federated app: model, site data, local training, evaluation.

Imports no flwr. Domains are reached only through the registry (the dataset name comes from
the run config); nothing here imports a domain plugin. The run config is ``settings.Settings``,
parameter groups and their weighting ``groups``, the readiness report ``readiness``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from mmdomain.checkpoint import init_from_checkpoint, load_checkpoint
from mmdomain.config import ModelConfig, contrastive_variant, parse
from mmdomain.data import availability_counts, present_modalities
from mmdomain.data.augment import view_augment
from mmdomain.errors import ConfigError, DataError
from mmdomain.fusion.base import upgrade_token_names
from mmdomain.models.compose import FusionModel, build_model
from mmdomain.registry import Registry
from mmdomain.training import evaluate, make_loader, seed_everything, select_device, train_one_epoch

from .groups import param_group
from .settings import Settings

SUPPRESS_BELOW = 5  # count cells / per-pattern metrics below this are not sent


# -- model -----------------------------------------------------------------------------------
def model_config(settings: Settings, registry: Registry) -> ModelConfig:
    """The dataset's default model (fusion overridable; with ``task = "contrastive"`` its task
    swapped for cross-modal contrastive pretraining, without modality dropout: the encoders, fusion
    and tokenizers stay the default model's, so a supervised run's ``init-from`` loads them).
    The default model's modality-balance remedies (``balance``) are dropped for contrastive
    pretraining (no target) and for local DP-SGD (gradient modulation couples the samples).
    Tokenizers must not need fitting: a vocabulary fitted on one site's texts would leak its
    words and differ between sites."""
    spec = registry.dataset(settings.dataset)
    if not spec.default_model:
        raise ConfigError(f"dataset {spec.name!r} has no default model to train federated")
    data = json.loads(json.dumps(spec.default_model))
    if settings.fusion:
        data["fusion"] = {"name": settings.fusion, "options": {}}
    if settings.task == "contrastive":
        if len(data.get("modalities", [])) != 2:
            raise ConfigError(f"run config: task=contrastive pairs two modalities; the {spec.name!r} model has "
                              f"{sorted(data.get('modalities', []))}")
        data = contrastive_variant(data, proj_dim=settings.proj_dim, temperature=settings.temperature)
    if settings.local_dp:
        data["encode_absent"] = True  # per-sample gradients need every row through every encoder
        data["batch_norm"] = "group"  # and no trained layer may mix a batch's samples
        data.pop("balance", None)  # modulation couples the batch's samples; aux heads: not measured with DP
        data["modality_dropout"] = 0.0
    for m, policy in settings.encoder_policies().items():
        if m not in data.get("encoders", {}):
            raise ConfigError(f"run config: encoder-train names {m!r}, which is not a modality of the "
                              f"{spec.name!r} model ({sorted(data.get('encoders', {}))})")
        data["encoders"][m]["train"] = policy
    cfg = parse(ModelConfig, data, f"default model of dataset {spec.name!r}")
    for m, comp in cfg.tokenizers.items():
        if registry.tokenizer(comp.name).fit is not None and not comp.fitted:
            raise ConfigError(f"tokenizers.{m}: {comp.name!r} fits a vocabulary on site texts, which would leave "
                              "the site and differ between sites; federated runs need one without fitting "
                              "(e.g. 'hashing')")
    return cfg


def build(settings: Settings, registry: Registry) -> FusionModel:
    """Same settings, same initial weights (seeded, then ``init-from``'s), on every site and the server."""
    return build_with_report(settings, registry)[0]


def build_with_report(settings: Settings, registry: Registry) -> tuple[FusionModel, dict[str, Any] | None]:
    """``build``, and with ``init-from`` the report of what the checkpoint gave each module
    (``mmdomain.checkpoint.init_from_checkpoint``; e.g. a contrastive checkpoint's projection heads
    are counted unused in it), else None. With ``evaluate-only`` the init-from checkpoint's own model,
    rebuilt from the file (``load_checkpoint``), on every participant. A task local DP-SGD cannot train (no per-sample loss, as
    contrastive) is refused here, before any round, with local DP's own ``ConfigError``."""
    if settings.evaluate_only:  # the checkpoint's own model, whole: what every participant evaluates
        model, _ = load_checkpoint(settings.init_from, registry)
        return model, None
    torch.manual_seed(settings.seed)
    model = build_model(model_config(settings, registry), registry)
    report = init_from_checkpoint(model, settings.init_from) if settings.init_from else None
    if settings.local_dp:
        from .local_dp import check_model

        check_model(model)
        _ready_for_dp_sgd(model)
    return model, report


def _ready_for_dp_sgd(model: FusionModel) -> None:
    """In-place activations (MONAI's ResNet) break Opacus' backward hooks, so they run out of place
    (BatchNorms are already GroupNorms: the model config's ``batch_norm = "group"``). Same on the
    server and every site: all build with these settings."""
    frozen = {id(sub) for m in model.frozen for sub in model.encoders[m].modules()}
    for module in model.modules():
        if id(module) not in frozen and getattr(module, "inplace", False) is True:
            module.inplace = False


def shared_keys(model: FusionModel) -> list[str]:
    """The state_dict entries that federated rounds carry: trainable parameters, and the buffers
    of every encoder that is not frozen (and of fusion and task). Frozen parts never travel; every
    participant holds them already (same seed or ``init-from`` file) and checks them by hash."""
    params = dict(model.named_parameters())
    frozen = tuple(f"encoders.{m}." for m in model.frozen)
    return [k for k in model.state_dict() if (params[k].requires_grad if k in params else not k.startswith(frozen))]


def frozen_digest(model: FusionModel) -> str:
    """SHA-256 over the names and bytes of everything rounds do not carry ('' when all of it travels)."""
    shared = set(shared_keys(model))
    h = hashlib.sha256()
    rest = [(k, v) for k, v in model.state_dict().items() if k not in shared]
    for k, v in sorted(rest, key=lambda kv: kv[0]):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest() if rest else ""


def get_weights(model: FusionModel, groups: set[str] | None = None) -> dict[str, np.ndarray]:
    """The shared entries (``shared_keys``) of ``groups`` (all groups when None), as arrays."""
    state = model.state_dict()
    return {k: state[k].detach().cpu().numpy().copy() for k in shared_keys(model)
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

    def available(self, i: int) -> frozenset[str]:
        """The availability protocol: the base's modalities of sample ``i`` that are kept (no decoding)."""
        return present_modalities(self.base, i) & self.keep


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


def build_dataset(spec, root: Path, split: str, settings: Settings) -> Dataset:
    """``spec.build(root, split)``; for ``task = "contrastive"`` with ``task="contrastive"`` too when
    the dataset declares that option (``DatasetSpec.task_option``: the remote-sensing datasets; then
    a site needs no label files, its pairs are enough)."""
    return spec.build_for(root, split, task=settings.task or None)


def load_site(settings: Settings, node_config: dict[str, Any], registry: Registry, split: str) -> Dataset:
    """This site's data for ``split``.

    Deployment: ``--node-config 'data-root=/path/to/site'`` (and optionally ``modalities=a+b``).
    Simulation: ``partition-id`` / ``num-partitions`` pick a site folder under the run config's
    ``data-root`` (synthetic sites when empty), or a partition-hook share of one dataset.
    """
    spec = registry.dataset(settings.dataset)
    keep: set[str] | None = None
    if node_config.get("data-root"):
        ds = build_dataset(spec, Path(str(node_config["data-root"])), split, settings)
        if node_config.get("modalities"):
            keep = {m for m in str(node_config["modalities"]).split("+") if m}
    else:
        if "partition-id" not in node_config:
            raise ConfigError("node config: give data-root=<this site's folder> (deployment) "
                              "or partition-id/num-partitions (simulation)")
        pid, n = int(node_config["partition-id"]), int(node_config["num-partitions"])
        ds = _simulated_site(settings, registry, spec, pid, n, split)
        keep = parse_site_modalities(settings.site_modalities).get(pid)
    return HideModalities(ds, keep) if keep is not None else ds


def _simulated_site(settings: Settings, registry: Registry, spec, pid: int, n: int, split: str) -> Dataset:
    """Site ``pid`` of ``n``: a folder under ``data-root`` (synthetic when empty), or with
    ``partition`` set that scheme's share of the one dataset there."""
    root = Path(settings.data_root) if settings.data_root else \
        synthetic_root(registry, settings.dataset, n, settings.seed, settings.synthetic_quick)
    if settings.partition:
        full = build_dataset(spec, root, split, settings)
        return Subset(full, registry.partition(full, n, pid, settings.partition))
    folders = site_folders(root)
    if len(folders) < n:
        raise DataError(f"{root} has {len(folders)} site folders, the run needs {n}")
    return build_dataset(spec, folders[pid], split, settings)


def training_counts(model: FusionModel, dataset: Dataset) -> tuple[dict[str, int], int]:
    """What a site trains on, from the datasets' availability (no sample decoded): samples per
    modality and in all. A contrastive model learns only from the rows holding both modalities of
    its pair (the others add no term to its loss), so then both counts are those rows': a site
    without pairs trains nothing and its update weighs nothing."""
    counts, patterns = availability_counts(dataset, model.modalities)
    if model.task.kind != "contrastive":
        return counts, len(dataset)
    pair = set(getattr(model.task, "pair", model.modalities))
    paired = sum(c for p, c in patterns.items() if pair <= set(p.split("+")))
    return {m: (paired if m in pair else 0) for m in counts}, paired


# -- local work ----------------------------------------------------------------------------------
def train_site(model: FusionModel, dataset: Dataset, settings: Settings, *, device: torch.device | None = None,
               seed: int = 0, server_round: int = 1,
               proximal: tuple[float, dict[str, np.ndarray]] | None = None,
               after_epoch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Local epochs with the core loop over the trainable parameters (``after_epoch(e)`` called
    after epoch ``e`` = 1, 2, ... of a non-private run, with the model as it then is); FedProx adds
    ``mu/2 ||w - w_global||^2`` (the start's weights); ``proximal = (mu, anchor)`` the same term
    toward the named ``anchor`` arrays instead (Ditto's personal model toward the global one);
    local DP-SGD (Opacus) when ``settings.local_dp``. Returns loss,
    sample count, with DP the site's epsilon spent by the end of ``server_round``, and on a GPU
    the peak memory this training allocated there."""
    device = device or select_device(settings.device)
    seed_everything(seed)
    model.to(device)
    augment = view_augment(settings.augment, model.task.needs_target, model.modality_kinds, model.modality_views)
    loader = make_loader(dataset, model.modalities, settings.train_batch_size(len(dataset)), shuffle=True, seed=seed,
                         drop_last=True, augment=augment)
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    trainable = [p for _, p in named]
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=1e-4)
    extra = None
    if proximal is None and settings.strategy == "fedprox" and settings.proximal_mu > 0:
        proximal = (settings.proximal_mu, {})
    if proximal is not None:
        mu, towards = proximal
        anchor = [torch.as_tensor(towards[k], dtype=p.dtype, device=p.device) if k in towards else p.detach().clone()
                  for k, p in named]

        def extra(m):  # noqa: E306
            return (mu / 2) * sum(((p - a) ** 2).sum() for p, a in zip(trainable, anchor))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if settings.local_dp:
        from .local_dp import private_training
        out = private_training(model, loader, optimizer, settings, device=device, extra_loss=extra,
                               server_round=server_round)
    else:
        loss, seen = 0.0, 0
        for epoch in range(1, settings.local_epochs + 1):
            stats = train_one_epoch(model, loader, optimizer, device=device, grad_clip=1.0, extra_loss=extra,
                                    max_steps=settings.max_steps or None)
            loss, seen = stats["loss"], seen + stats["samples"]
            if after_epoch is not None:
                after_epoch(epoch)
        out = {"train-loss": float(loss), "train-samples": seen}
    if device.type == "cuda":  # what this site's share of a (possibly shared) GPU has to hold
        out["gpu-peak-mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


#: what scoring a tiny split can raise (a metric with too few rows or one class): a site skips that score
EVAL_ERRORS = (DataError, IndexError, ValueError, RuntimeError)


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
