"""``mmdomain demo``: the first thing a new user runs.

For each domain (default: every installed synthetic generator that registers ``demo_options``,
by dataset name; today ``medical`` and ``s2s1_scenes``): generate synthetic sites with the
generator's demo options (``demo_quick_options`` with ``--quick``), print a readiness report,
train locally at each site (fusion and each single modality), then federated across the sites
in Flower's simulation without and with central DP, and compare on the pooled test set. Writes
a report folder (``report``: metrics JSON/CSV, PNG plots, a Markdown summary) and prints its
path last. The steps it shares with ``mmdomain fed compare`` are in ``experiment``.

The domains are reached only through the registry (dataset names), never by import.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import click

from . import task
from .experiment import (Clock, federated, local_only, main_metric, pooled_predictions, pooled_test, site,
                         synthetic_sites, versus_local)
from .report import write_report


def default_datasets(registry) -> list[str]:
    """The installed synthetic generators' datasets that take part in the demo (``demo_options`` set)."""
    return sorted({gen.dataset for gen in registry.specs("synthetic") if gen.demo_options is not None})


def _readiness(settings, registry, sites: int, log) -> dict[str, Any]:
    """Each site's samples, per-modality and per-pattern counts (from availability, nothing decoded)
    and ``describe`` statistics, printed and returned."""
    from mmdomain.data import availability_counts

    spec = registry.dataset(settings.dataset)
    report = {}
    for i in range(sites):
        train = task.load_site(settings, site(i, sites), registry, "all")
        per_mod, patterns = availability_counts(train, list(spec.modalities))
        stats = spec.describe(train) if spec.describe else {}
        report[f"site-{i}"] = {"samples": len(train), "modalities": per_mod, "patterns": patterns, "stats": stats}
        log(f"  site-{i}: {len(train)} samples; per modality {per_mod}; patterns {patterns}")
    return report


def _device(gpu: bool, sites: int, log) -> tuple[str, float]:
    """The sites' device and each virtual site's GPU share."""
    if gpu:
        import torch

        if torch.cuda.is_available():
            return "cuda", round(1.0 / sites, 3)
        log("--gpu: no CUDA GPU here; running on the CPU")
    return "cpu", 0.0


def _domain(registry, dataset: str, out: Path, plan: dict[str, Any], device: str, gpus: float, clock: Clock,
            log) -> dict[str, Any]:
    """One domain of the demo: sites, readiness, local-only, federated without and with DP."""
    sites, rounds, seed, engine = plan["sites"], plan["rounds"], plan["seed"], plan["engine"]
    dp = {"noise": plan["noise"], "clip": plan["clip"], "max_epsilon": plan["max_epsilon"]}
    settings = synthetic_sites(registry, dataset, out / "data" / dataset, sites=sites, seed=seed, quick=plan["quick"],
                               clock=clock, config={"num-server-rounds": rounds, "local-epochs": plan["local_epochs"],
                                                    "fusion": plan["fusion"] or "", "device": device})
    clock.step(f"{dataset}: readiness report")
    readiness = _readiness(settings, registry, sites, log)
    test = pooled_test(settings, registry, sites)
    epochs = rounds * plan["local_epochs"]
    clock.step(f"{dataset}: local-only training at each site ({epochs} epochs each)")
    local, local_preds = local_only(settings, registry, sites, epochs, test, log)
    clock.step(f"{dataset}: federated, {rounds} rounds ({engine})")
    runs = out / "runs" / dataset
    fed, fed_model = federated(settings, registry, sites, engine, gpus, test, runs / "federated", dp=False, **dp,
                               log=log)
    metric = main_metric(fed["overall"])
    versus = versus_local(fed_model, metric, pooled_predictions(fed_model, test, settings), local_preds, seed, log)
    clock.step(f"{dataset}: federated with central DP (noise {dp['noise']}, clip {dp['clip']})")
    fed_dp, _ = federated(settings, registry, sites, engine, gpus, test, runs / "federated-dp", dp=True, **dp, log=log)
    log(f"  {dataset}: federated {metric} {fed['overall'].get(metric, float('nan')):.3f}, with DP "
        f"{fed_dp['overall'].get(metric, float('nan')):.3f} (epsilon {fed_dp['epsilon'] or 0:.2f})")
    return {"metric": metric, "test_samples": len(test), "readiness": readiness, "local": local,
            "federated": fed, "federated_dp": fed_dp, "versus_local": versus}


def run_demo(*, datasets: list[str], out: Path, sites: int, rounds: int, local_epochs: int, fusion: str | None,
             noise: float, clip: float, max_epsilon: float, quick: bool, engine: str, gpu: bool, seed: int,
             log: Callable[[str], None] = click.echo) -> Path:
    from mmdomain.plugins import get_registry

    registry = get_registry()
    clock = Clock(log)
    device, gpus = _device(gpu, sites, log)
    out.mkdir(parents=True, exist_ok=True)
    plan = {"datasets": datasets, "sites": sites, "rounds": rounds, "local_epochs": local_epochs, "fusion": fusion,
            "noise": noise, "clip": clip, "max_epsilon": max_epsilon, "quick": quick, "engine": engine, "seed": seed}
    results = {dataset: _domain(registry, dataset, out, plan, device, gpus, clock, log) for dataset in datasets}
    clock.step("writing the report")
    summary = write_report(results, plan, out / "report", clock.start)
    log(summary.read_text())
    return summary.parent


@click.command("demo")
@click.option("--dataset", "datasets", multiple=True,
              help="Dataset(s) to demo (repeatable); default: every installed one with demo options "
                   "(medical, s2s1_scenes).")
@click.option("--sites", default=3, show_default=True, help="Synthetic sites per domain (hospitals / regions).")
@click.option("--rounds", default=None, type=int, help="Federated rounds [default: 8, --quick 2].")
@click.option("--local-epochs", default=1, show_default=True, help="Local epochs per round.")
@click.option("--fusion", default=None, help="Fusion head (concat, late, gated, cross_attention); default: the dataset's.")
@click.option("--noise", default=1.0, show_default=True, help="Central DP noise multiplier.")
@click.option("--clip", default=1.0, show_default=True, help="Central DP clipping norm of each site's update.")
@click.option("--max-epsilon", default=0.0, show_default=True, help="Privacy budget (0 = none): stops before it.")
@click.option("--quick", is_flag=True, help="Small data, 2 rounds, in-process Flower apps: a few minutes.")
@click.option("--engine", type=click.Choice(["simulation", "in-process"]), default=None,
              help="Flower's Ray simulation, or the same apps called in-process [default: simulation; --quick: in-process].")
@click.option("--gpu", is_flag=True, help="Use the GPU when there is one (fractional GPU per virtual site).")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (default: a new temp folder).")
def demo(datasets: tuple[str, ...], sites: int, rounds: int | None, local_epochs: int, fusion: str | None, noise: float,
         clip: float, max_epsilon: float, quick: bool, engine: str | None, gpu: bool, seed: int, out: Path | None):
    """Synthetic hospitals and regions: readiness, local-only vs federated, with and without DP."""
    from mmdomain.errors import MMDomainError
    from mmdomain.plugins import get_registry

    registry = get_registry()
    chosen = list(datasets) or default_datasets(registry)
    if not chosen:
        raise MMDomainError("no domain plugin with demo options is installed (medical, remote sensing); "
                            "install one or pass --dataset")
    for d in chosen:
        registry.synthetic_for(d)  # a clear error for a dataset without a generator
    if sites < 2:
        raise MMDomainError("--sites must be at least 2 for a federated run")
    if fusion:
        registry.fusion(fusion)
    out = (out or Path(tempfile.mkdtemp(prefix="mmdomain-demo-"))).resolve()
    report = run_demo(datasets=chosen, out=out, sites=sites, rounds=rounds or (2 if quick else 8),
                      local_epochs=local_epochs, fusion=fusion, noise=noise, clip=clip, max_epsilon=max_epsilon,
                      quick=quick, engine=engine or ("in-process" if quick else "simulation"), gpu=gpu, seed=seed)
    click.echo(f"\nreport: {report}")
