"""Training and evaluation loops, shared by the CLI, the notebooks and ``federated/``.

- ``select_device`` / ``seed_everything``: CUDA when present (bf16 autocast there), CPU otherwise.
- ``train_one_epoch``: takes its optimizer and loader from the caller, so FedProx
  (``extra_loss``) plugs in without a second loop (local DP-SGD has its own, with Opacus, in
  ``federated/``).
- ``evaluate``: metrics overall and per availability pattern (which modalities were present);
  ``drop=`` forces modalities absent to measure graceful degradation.
- ``fit``: a whole run from a RunConfig: data, tokenizers, model, view augmentation
  (``train.augment``; on for self-supervised tasks by default), epochs, JSON-lines metrics,
  checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .checkpoint import describe_init, init_from_checkpoint, save_checkpoint
from .config import AugmentConfig, ModelConfig, RunConfig, parse
from .data.augment import ViewAugment, view_augment
from .data.collate import Collate
from .data.availability import availability_pattern, scored_rows
from .data.sample import Batch
from .errors import ConfigError, DataError, MMDomainError
from .jsonout import dumps, write
from .models.compose import FusionModel, build_model, fit_tokenizers, needs_fitting
from .models.trainable import count_parameters
from .registry import Registry
from .tasks.base import take


# -- environment -------------------------------------------------------------------------
def select_device(preference: str = "auto") -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise MMDomainError("device 'cuda' was asked for, but no CUDA GPU is available here; use 'auto' or 'cpu'")
    if preference in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(device: torch.device, bf16: bool):
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_loader(dataset: Dataset, modalities: Sequence[str], batch_size: int, *, shuffle: bool, seed: int = 0,
                num_workers: int = 0, drop_last: bool = False,
                augment: Callable[[Batch], Batch] | None = None) -> DataLoader:
    """Batches of ``dataset`` (presence masks, zero-filled absent rows); ``augment`` is applied to
    each (see ``run_augment``)."""
    if len(dataset) == 0:
        raise DataError("the dataset is empty: nothing to load")
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=num_workers,
                      collate_fn=Collate(modalities, augment), drop_last=drop_last and len(dataset) > batch_size,
                      persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available())


# -- loops ---------------------------------------------------------------------------------
def train_one_epoch(model: FusionModel, loader: Iterable[Batch], optimizer: torch.optim.Optimizer, *,
                    device: torch.device, bf16: bool = True, grad_clip: float | None = 1.0,
                    extra_loss: Callable[[nn.Module], Tensor] | None = None, max_steps: int | None = None,
                    progress: bool = False, desc: str = "train") -> dict[str, float]:
    """One pass over ``loader``; returns mean loss and counts (and with ``balance.modulation`` each
    modality's mean modulation coefficient, ``modulation``). Raises on a non-finite loss.

    The model's ``balance.modulation`` scales its encoders' gradients between backward and the
    step (``FusionModel.modulate_gradients``); ``extra_loss``'s gradient is added after that."""
    model.train()
    total, seen, steps = 0.0, 0, 0
    coefficients: dict[str, list[float]] = {}
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch")
    for batch in bar:
        batch = batch.to(device, non_blocking=True)
        with autocast(device, bf16):
            out = model(batch)
            base = model.loss(out, batch)
            extra = extra_loss(model) if extra_loss is not None else None
        loss = base if extra is None else base + extra
        if not torch.isfinite(loss):
            raise MMDomainError(f"{desc}: loss became {loss.item()} at step {steps}; lower the learning rate "
                                "or check the inputs for NaN")
        optimizer.zero_grad(set_to_none=True)
        base.backward()
        for m, k in model.modulate_gradients(out, batch).items():
            coefficients.setdefault(m, []).append(float(k))
        if extra is not None and extra.requires_grad:
            extra.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        n = len(batch)
        total += loss.item() * n
        seen += n
        steps += 1
        bar.set_postfix(loss=f"{total / seen:.4f}")
        if max_steps and steps >= max_steps:
            break
    stats: dict[str, Any] = {"loss": total / max(seen, 1), "samples": seen, "steps": steps}
    if coefficients:
        stats["modulation"] = {m: sum(v) / len(v) for m, v in sorted(coefficients.items())}
    return stats


def _drop(batch: Batch, drop: Iterable[str]) -> Batch:
    present = dict(batch.present)
    for m in drop:
        if m in present:
            present[m] = torch.zeros_like(present[m])
    return Batch(batch.inputs, present, batch.target, batch.meta)


@torch.no_grad()
def evaluate(model: FusionModel, loader: Iterable[Batch], *, device: torch.device | None = None, bf16: bool = True,
             drop: Iterable[str] = (), progress: bool = False, desc: str = "eval") -> dict[str, Any]:
    """Loss and task metrics overall and per availability pattern.

    Returns ``{"loss", "n", "overall": {metric: value}, "by_pattern": {pattern: {"n", metric...}}}``.
    Samples left with no modality (after ``drop``) are skipped and counted in ``"skipped"``.
    """
    device = device or next(model.parameters()).device
    model.eval()
    drop = list(drop)
    overall = model.task.make_metrics().to(device)
    by_pattern: dict[str, Any] = {}
    counts: dict[str, int] = {}
    total, seen, skipped = 0.0, 0, 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch"):
        batch = _drop(batch.to(device), drop)
        keep = scored_rows(batch.present, model.modalities)
        if not bool(keep.all()):
            skipped += int((~keep).sum())
            if not bool(keep.any()):
                continue
            batch = _subset(batch, keep.nonzero().squeeze(1))
        with autocast(device, bf16):
            out = model(batch)
            loss = model.loss(out, batch)
        n = len(batch)
        total += float(loss) * n
        seen += n
        _update(model, overall, out.output, batch.target, batch.present)
        patterns = [availability_pattern(m for m in model.modalities if bool(batch.present[m][i])) for i in range(n)]
        for p in sorted(set(patterns)):
            idx = torch.tensor([i for i, q in enumerate(patterns) if q == p], device=device)
            if p not in by_pattern:
                by_pattern[p] = model.task.make_metrics().to(device)
                counts[p] = 0
            counts[p] += len(idx)
            target = batch.target[idx] if batch.target is not None else None
            _update(model, by_pattern[p], take(out.output, idx), target, {m: v[idx] for m, v in batch.present.items()})
    if seen == 0:
        raise DataError("evaluation saw no sample with any of the model's modalities")
    result = {"loss": total / seen, "n": seen, "overall": _compute(overall), "by_pattern": {}}
    for p in sorted(by_pattern):
        result["by_pattern"][p] = {"n": counts[p], **_compute(by_pattern[p])}
    if skipped:
        result["skipped"] = skipped
    return result


def _subset(batch: Batch, idx: Tensor) -> Batch:
    pick = idx.tolist()
    inputs = {m: (v[idx] if isinstance(v, Tensor) else ([v[i] for i in pick] if v is not None else None))
              for m, v in batch.inputs.items()}
    return Batch(inputs, {m: v[idx] for m, v in batch.present.items()},
                 batch.target[idx] if batch.target is not None else None, [batch.meta[i] for i in pick])


def _update(model: FusionModel, metrics, output, target, present) -> None:
    args = model.task.metric_inputs(output, target, present)
    if args is None:
        return
    preds, tgt = args
    if tgt is None:
        metrics.update(preds)
    else:
        metrics.update(preds, tgt)


def _compute(metrics) -> dict[str, float]:
    """Each metric on its own: one that is undefined on these rows (e.g. average precision of a
    label whose targets are all unknown, which torchmetrics cannot compute) is left out, not fatal."""
    out: dict[str, float] = {}
    for name, metric in metrics.items():
        if not getattr(metric, "update_count", 1):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. AUROC on a pattern with no positives
            try:
                value = float(metric.compute())
            except (IndexError, RuntimeError, ValueError):
                continue
        if math.isfinite(value):
            out[name] = round(value, 6)
    return out


# -- a whole run ------------------------------------------------------------------------------
@dataclass
class FitResult:
    model: FusionModel
    config: RunConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None
    test: dict[str, Any] | None = None


def resolve_model_config(config: RunConfig, registry: Registry) -> ModelConfig:
    if config.model is not None:
        return config.model
    spec = registry.dataset(config.data.dataset)
    if not spec.default_model:
        raise ConfigError(f"model: dataset {spec.name!r} has no default model; give a [model] section")
    return parse(ModelConfig, spec.default_model, f"default model of dataset {spec.name!r}")


def build_dataset(config: RunConfig, registry: Registry, split: str, task: str | None = None):
    """``split`` of the config's dataset; the model's ``task`` (default: ``config.model``'s) reaches
    a builder that takes it (``DatasetSpec.task_option``)."""
    spec = registry.dataset(config.data.dataset)
    if task is None and config.model is not None:
        task = config.model.task.name
    root = config.data.root
    if not root.exists():
        raise DataError(f"data.root {root} does not exist; generate synthetic data with "
                        f"`mmdomain synth {spec.name} {root}`")
    try:
        return spec.build_for(root, split, task, config.data.options)
    except TypeError as exc:
        raise ConfigError(f"data.options for dataset {spec.name!r}: {exc}") from None


def texts_for_fitting(dataset, modalities: Iterable[str], registry: Registry) -> dict[str, list]:
    """Every text of each text modality in ``dataset``; uses ``dataset.texts(m)`` when the
    dataset offers it (no need to load images just to read reports). A dataset that names a
    group per sample (``dataset.text_group(i)``, e.g. a keyed patient pseudonym) gets its texts
    as ``(text, group)`` pairs (``texts(m)`` may yield them too), so that fitters keep only the
    tokens of ``min_groups`` different groups (``mmdomain.tokenizers.grouped``)."""
    text_mods = [m for m in modalities if registry.modality(m).kind == "text"]
    out: dict[str, list] = {m: [] for m in text_mods}
    if not text_mods:
        return out
    if hasattr(dataset, "texts"):
        return {m: list(dataset.texts(m)) for m in text_mods}
    group_of = getattr(dataset, "text_group", None)
    for i in range(len(dataset)):
        sample = dataset[i]
        group = group_of(i) if group_of is not None else None
        for m in text_mods:
            if isinstance(sample.inputs.get(m), str):
                out[m].append(sample.inputs[m] if group is None else (sample.inputs[m], group))
    return out


class JsonLines:
    """Append one JSON object per line, flushed at once (nothing lost if a run dies)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(dumps(record) + "\n")


def run_augment(config: AugmentConfig, model: FusionModel) -> ViewAugment | None:
    """The view augmentation ``config`` asks for on ``model``'s modalities (``auto``: on for
    self-supervised tasks)."""
    return view_augment(config.mode, model.task.needs_target, model.modality_kinds, model.modality_views,
                        **config.model_dump(exclude={"mode"}))


def _calibrate(model: FusionModel, val_loader, last_val: dict[str, Any], device: torch.device, bf16: bool,
               out_dir: Path, log: Callable[[str], None]) -> None:
    """Temperatures per availability pattern fitted on the val split, set on the model (and its
    config, so the checkpoint carries them); ``calibration.json`` holds them with the val ECE
    before and after, overall and per pattern."""
    from .tasks.calibration import calibrate, fit_temperatures

    def eces(result: dict[str, Any]) -> dict[str, float]:
        out = {"overall": result["overall"].get("ece")}
        out.update({p: v.get("ece") for p, v in result["by_pattern"].items()})
        return out

    before = eces(last_val)  # the last epoch's val scores: this model, this split
    temperatures = fit_temperatures(model, val_loader, device=device)
    calibrate(model, temperatures)
    after = eces(evaluate(model, val_loader, device=device, bf16=bf16))
    write(out_dir / "calibration.json", {"temperatures": temperatures, "val_ece_before": before,
                                         "val_ece_after": after}, indent=2)
    log("calibrated on the val split: temperature " + ", ".join(f"{p} {t:.2f}" for p, t in temperatures.items())
        + f"; val ECE {before['overall']:.3f} -> {after['overall']:.3f}")


def fit(config: RunConfig, registry: Registry, *, log: Callable[[str], None] = print) -> FitResult:
    """Train per ``config``; write ``metrics.jsonl``, ``model.safetensors`` (+ .json) in ``out_dir``."""
    t = config.train
    seed_everything(t.seed)
    device = select_device(t.device)
    model_cfg = resolve_model_config(config, registry)
    train_ds = build_dataset(config, registry, config.data.train_split, model_cfg.task.name)
    val_ds = build_dataset(config, registry, config.data.val_split, model_cfg.task.name)
    missing = [m for m in model_cfg.modalities if m not in registry.dataset(config.data.dataset).modalities]
    if missing:
        raise ConfigError(f"model.modalities: dataset {config.data.dataset!r} has no {missing}; "
                          f"it has {list(registry.dataset(config.data.dataset).modalities)}")
    if needs_fitting(model_cfg, registry):
        model_cfg = fit_tokenizers(model_cfg, registry, texts_for_fitting(train_ds, model_cfg.modalities, registry))
    config = config.model_copy(update={"model": model_cfg})
    model = build_model(model_cfg, registry).to(device)
    if t.calibrate and model.task.kind != "classification":
        raise ConfigError(f"train.calibrate: temperature scaling applies to classification tasks; "
                          f"task {model_cfg.task.name!r} is {model.task.kind}")
    init = init_from_checkpoint(model, t.init_from) if t.init_from else None
    if init:
        log(f"initialised from {t.init_from}:\n" + describe_init(init))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=t.lr,
                                  weight_decay=t.weight_decay)
    augment = run_augment(t.augment, model)
    train_loader = make_loader(train_ds, model.modalities, t.batch_size, shuffle=True, seed=t.seed,
                               num_workers=config.data.num_workers, drop_last=True, augment=augment)
    val_loader = make_loader(val_ds, model.modalities, t.batch_size, shuffle=False,
                             num_workers=config.data.num_workers)
    out_dir = Path(t.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(config.model_dump_json(indent=2))
    if init:
        write(out_dir / "init-report.json", init, indent=2)
    metrics_log = JsonLines(out_dir / "metrics.jsonl")
    result = FitResult(model, config)
    trainable, total = count_parameters(model)
    log(f"training {trainable:,} of {total:,} parameters on {device} "
        f"({len(train_ds)} train / {len(val_ds)} val samples"
        + (f", view augmentation {augment.describe()}" if augment else "") + ")")
    for epoch in range(1, t.epochs + 1):
        start = time.perf_counter()
        train_stats = train_one_epoch(model, train_loader, optimizer, device=device, bf16=t.bf16,
                                      grad_clip=t.grad_clip, max_steps=t.max_steps_per_epoch,
                                      progress=t.progress, desc=f"epoch {epoch}/{t.epochs}")
        val = evaluate(model, val_loader, device=device, bf16=t.bf16)
        record = {"epoch": epoch, "split": "val", "train_loss": train_stats["loss"], "seconds":
                  round(time.perf_counter() - start, 3), **{k: v for k, v in val.items()}}
        if "modulation" in train_stats:  # balance.modulation: each modality's mean coefficient this epoch
            record["train_modulation"] = train_stats["modulation"]
        metrics_log.write(record)
        result.history.append(record)
        log(f"epoch {epoch}: train loss {train_stats['loss']:.4f}, val loss {val['loss']:.4f}, "
            + ", ".join(f"{k} {v:.3f}" for k, v in val["overall"].items()))
    if t.calibrate:
        _calibrate(model, val_loader, val, device, t.bf16, out_dir, log)
    result.checkpoint = save_checkpoint(model, out_dir / "model.safetensors", registry,
                                        extra={"data": config.data.model_dump(mode="json"), "epochs": t.epochs,
                                               "seed": t.seed})
    return result
