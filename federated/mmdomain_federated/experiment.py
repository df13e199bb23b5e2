"""The steps ``mmdomain demo`` and ``mmdomain fed compare`` share: synthetic sites, the pooled
test set, each site's local-only models, a federated run of the real apps (in-process, or in
Flower's simulation through ``simulate``), and the paired bootstrap of federated against local.

The domains are reached only through the registry (dataset names), never by import.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import click
import torch
from torch.utils.data import ConcatDataset, Subset

from mmdomain.bootstrap import paired_bootstrap, predictions
from mmdomain.checkpoint import load_checkpoint
from mmdomain.config import single_modality
from mmdomain.data.availability import present_modalities
from mmdomain.errors import MMDomainError
from mmdomain.models import build_model
from mmdomain.training import make_loader, select_device

from . import task
from .cross_site import GLOBAL, CrossSite, local_name, main_metric, personal_name
from .settings import Settings

BOOTSTRAP_RESAMPLES = 1000
Log = Callable[[str], None]


class Clock:
    def __init__(self, log: Log):
        self.start, self.log = time.perf_counter(), log

    def step(self, text: str) -> None:
        self.log(click.style(f"[{time.perf_counter() - self.start:6.1f}s] {text}", bold=True))


def site_options(gen, quick: bool) -> dict[str, Any]:
    """A generator's site options for the demo (``demo_options``) or its quick form."""
    if quick:
        return gen.quick_options if gen.demo_quick_options is None else gen.demo_quick_options
    return gen.demo_options or {}


def synthetic_sites(registry, dataset: str, root: Path, *, sites: int, seed: int, quick: bool, clock: Clock,
                    config: dict[str, Any]) -> Settings:
    """Write ``sites`` synthetic sites of ``dataset`` under ``root``; the run settings for them."""
    gen = registry.synthetic_for(dataset)
    options = site_options(gen, quick)
    clock.step(f"{dataset}: writing {sites} synthetic sites ({gen.name}, {options or 'defaults'}, seed {seed})")
    gen.generate(root, num_sites=sites, seed=seed, **options)
    return Settings.from_run_config({"dataset": dataset, "data-root": str(root), "seed": seed,
                                     "min-sites": min(2, sites), "target-delta": 1e-5, **config})


def site(i: int, sites: int) -> dict[str, Any]:
    """The node config of simulated site ``i``."""
    return {"partition-id": i, "num-partitions": sites}


def site_tests(settings: Settings, registry, sites: int) -> dict[str, Any]:
    """Each site's own test set, keyed ``site-<i>`` (the cross-site matrix's columns)."""
    return {f"site-{i}": task.load_site(settings, site(i, sites), registry, "test") for i in range(sites)}


def pooled_test(settings: Settings, registry, sites: int, tests: dict[str, Any] | None = None):
    """The union of every site's test set (of ``tests``, ``site_tests``' result, when given)."""
    return ConcatDataset(list((tests if tests is not None else site_tests(settings, registry, sites)).values()))


def pooled_predictions(model, test, settings: Settings):
    """``(preds, target)`` of ``model`` on the pooled test set, or None for a task that is not
    scored row by row (then there is no bootstrap)."""
    device = select_device(settings.device)
    model.to(device)
    try:
        return predictions(model, make_loader(test, model.modalities, 64, shuffle=False), device=device)
    except MMDomainError:
        return None


def local_only(settings: Settings, registry, sites: int, epochs: int, test, log: Log, *,
               single_modality_models: bool = True, cross: CrossSite | None = None):
    """Each site alone: the fusion model and (unless told not to, or for a contrastive task, which
    needs two modalities) one model per single modality, evaluated on the pooled test set. Returns
    the metrics, every model's test predictions (for the bootstrap), keyed ``site-<i>`` (fusion)
    or ``site-<i> <variant>``, and per site the fusion model against its best single-modality
    model on the test rows that hold every modality (``fusion_vs_single``; empty without them).
    With ``cross`` each fusion model is also scored on every site's own test set there (row
    ``local site-<i>``; its pooled cell is the pooled result above), before it is dropped."""
    base = task.model_config(settings, registry)
    variants = {"fusion": base}
    if single_modality_models and registry.task(base.task.name).kind != "contrastive":  # one modality: no pairs
        variants.update({f"{m} only": single_modality(base, m) for m in base.modalities})
    local_settings = Settings.from_run_config({**settings.as_run_config(), "local-epochs": epochs})
    out: dict[str, Any] = {name: {} for name in variants}
    preds: dict[str, Any] = {}
    full = full_rows(test, base.modalities) if len(variants) > 1 else None
    margins: dict[str, Any] = {}
    for i in range(sites):
        data = task.load_site(settings, site(i, sites), registry, "train")
        on_full: dict[str, Any] = {}
        for name, cfg in variants.items():
            torch.manual_seed(settings.seed)
            model = build_model(cfg, registry)
            task.train_site(model, data, local_settings, seed=settings.seed)
            result = task.evaluate_site(model, test, settings)
            out[name][f"site-{i}"] = {"overall": result["overall"], "by_pattern": result["by_pattern"]}
            if cross is not None and name == "fusion":
                cross.add(local_name(f"site-{i}"), model, pooled=result)
            preds[f"site-{i}" if name == "fusion" else f"site-{i} {name}"] = pooled_predictions(model, test, settings)
            metric = main_metric(result["overall"])
            log(f"  site-{i} {name:<22} pooled test {metric} {result['overall'].get(metric, float('nan')):.3f}")
            if full is not None:
                on_full[name] = (pooled_predictions(model, full, settings), model.task)
        if full is not None and (margin := _fusion_vs_single(on_full, metric, settings.seed)):
            margins[f"site-{i}"] = margin
            log(f"  site-{i} fusion - best single modality ({margin['best_single']}) on the {margin['rows']} "
                f"full-availability test rows: {margin['margin']:+.3f} [{margin['interval'][0]:+.3f}, "
                f"{margin['interval'][1]:+.3f}]")
    return out, preds, margins


def full_rows(test, modalities) -> Subset | None:
    """The rows of ``test`` holding every one of ``modalities`` (None when there are none)."""
    keep = [i for i in range(len(test)) if present_modalities(test, i) >= set(modalities)]
    return Subset(test, keep) if keep else None


def _fusion_vs_single(on_full: dict[str, Any], metric: str, seed: int) -> dict[str, Any] | None:
    """Paired bootstrap of the fusion model minus its best single-modality model on the same
    full-availability rows (None for a task not scored row by row)."""
    if any(p is None for p, _ in on_full.values()):
        return None
    (fusion, target), fusion_task = on_full.pop("fusion")
    singles = {name: p[0] for name, (p, _) in on_full.items()}
    try:
        result = paired_bootstrap(fusion_task, metric, fusion, singles, target, resamples=BOOTSTRAP_RESAMPLES,
                                  seed=seed)
    except MMDomainError:  # the metric is undefined on these few rows (e.g. a label never positive)
        return None
    return {**result, "best_single": max(result["others"], key=result["others"].get)}


def versus_local(model, metric: str, fed, local: dict[str, Any], seed: int, log: Log) -> dict[str, Any] | None:
    """Paired bootstrap over the pooled test set: federated minus the best of the local-only models
    that score the same rows (a single-modality model skips the rows without its modality, so it
    is compared only where every test row has that modality)."""
    import torch

    if fed is None:
        return None
    paired = {name: p[0] for name, p in local.items()
              if p is not None and len(p[1]) == len(fed[1]) and torch.equal(p[1], fed[1])}
    if not paired:
        return None
    result = paired_bootstrap(model.task, metric, fed[0], paired, fed[1], resamples=BOOTSTRAP_RESAMPLES, seed=seed)
    result["compared"] = sorted(paired)
    log(f"  federated - best local {metric}: {result['margin']:+.3f}, {result['level']:.0%} bootstrap interval "
        f"[{result['interval'][0]:+.3f}, {result['interval'][1]:+.3f}]; federated beats every local-only model in "
        f"{result['beats_all_share']:.0%} of {result['resamples']} resamples")
    return result


def _progress(line: str, log: Log) -> None:
    """The server's round, readiness and final lines, shortened (the full ones are in events.log)."""
    if "round" in line or "finished" in line or "readiness" in line:
        log("    " + line.rstrip()[:160])


def run_flower(engine: str, sites: int, run_config: dict[str, Any], out_dir: Path, gpus: float, log: Log,
               node_configs: list[dict[str, Any]] | None = None) -> dict:
    """The real ServerApp/ClientApp: in Flower's simulation (Ray), or in-process (no Ray); the summary.
    ``node_configs``: each site's own node config (in-process only)."""
    run_config = {**run_config, "out-dir": str(out_dir)}
    if engine == "in-process":
        from .inprocess import LocalGrid
        from .server_app import run_server

        settings = Settings.from_run_config(run_config)
        grid = LocalGrid(sites, settings.as_run_config(), node_configs=node_configs)
        return _trained(run_server(grid, settings, out_dir, echo=False, log=lambda line: _progress(line, log)))
    if node_configs:
        raise click.UsageError("per-site node configs (personalisation's personal-dir) need the in-process engine")
    from .simulate import run_simulation

    def server_line(line: str) -> None:  # progress: the server's per-round lines as they come
        if "[mmdomain-fed" in line:
            _progress(line.split("] ", 1)[-1], log)

    proc = run_simulation(sites, run_config, flwr_home=Path(tempfile.mkdtemp(prefix="mmdomain-demo-flwr-")),
                          num_cpus=1, num_gpus=gpus, timeout=None, on_line=server_line)
    path = out_dir / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else None
    if summary is not None and summary.get("model") is None:
        _trained(summary)  # the run's own reason (it exits 1 then), not "the simulation failed"
    if proc.returncode != 0 or summary is None:
        tail = [line.rstrip() for line in proc.stdout.splitlines()]
        raise click.ClickException("the Flower simulation failed:\n" + "\n".join(tail[-20:]))
    return summary


def _trained(summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` of a run that wrote a model; one that trained no round is a clear error (its reason)."""
    if summary.get("model") is None:
        raise click.ClickException(f"the federated run trained no round, so it has no model to score: "
                                   f"{summary.get('stopped')}")
    return summary


def federated(settings: Settings, registry, sites: int, engine: str, gpus: float, test, out_dir: Path, *, dp: bool,
              noise: float, clip: float, max_epsilon: float, log: Log,
              cross: CrossSite | None = None, personalise: str = "") -> tuple[dict[str, Any], Any]:
    """A federated run (central DP with ``dp``) scored on the pooled test set; its result and model.
    With ``cross`` the model is also scored on every site's own test set there (row ``global``);
    with ``personalise`` (in-process: the sites write their models to their ``personal-dir``,
    ``<out_dir>/sites/site-<i>``), each site's personalised model on its own test set there (row
    ``personalised (<method>)``)."""
    run_config = {**settings.as_run_config(), "central-dp": dp, "noise-multiplier": noise, "clip-norm": clip,
                  "max-epsilon": max_epsilon if dp else 0.0, "resume": False}
    own = [out_dir / "sites" / f"site-{i}" for i in range(sites)] if personalise else []
    if personalise:
        run_config["personalise"] = personalise
    summary = run_flower(engine, sites, run_config, out_dir, gpus, log,
                         node_configs=[{"personal-dir": str(f)} for f in own] or None)
    model, _ = load_checkpoint(out_dir / "model.safetensors", registry)
    result = task.evaluate_site(model, test, settings)
    if cross is not None:
        cross.add(GLOBAL, model, pooled=result)
        if own:
            written = {f"site-{i}": max(f.glob("personal-*.safetensors"), key=lambda p: p.stat().st_mtime, default=None)
                       for i, f in enumerate(own)}  # a site that could not personalise wrote none
            cross.add_own(personal_name(personalise),
                          {site: load_checkpoint(p, registry)[0] for site, p in written.items() if p is not None})
    return {"overall": result["overall"], "by_pattern": result["by_pattern"], "history": summary.get("history", []),
            "epsilon": summary.get("epsilon"), "stopped": summary.get("stopped"), "rounds": summary.get("rounds"),
            "delta": settings.target_delta if dp else None, "noise_multiplier": noise if dp else None,
            "clip_norm": clip if dp else None}, model
