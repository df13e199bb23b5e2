"""``mmdomain demo``: the first thing a new user runs.

For each domain (default: every installed synthetic generator that registers ``demo_options``,
by dataset name; today ``medical`` and ``s2s1_scenes``): generate synthetic sites with the
generator's demo options (``demo_quick_options`` with ``--quick``), print a readiness report,
train locally at each site (fusion and each single modality), then federated across the sites
in Flower's simulation, and compare on the pooled test set. Then the private arm: the model is
pretrained on a separate public synthetic site (the same generator, another seed, a few times a
site's size: ``demo_public_options``), on its labels (``--pretrain supervised``, the default; the
public model alone is scored too) or self-supervised on its unlabelled pairs (``contrastive``);
its encoders are frozen and the rest trained federated to a target
epsilon with local DP-SGD (record-level, at every site: the mode that suits a few sites; central
DP, site-level, with ``--privacy central``). Each site's local fusion model and both federated
models are also scored on every site's own test set (``cross_site``). Writes a report folder (``report``: metrics
JSON/CSV, PNG plots, a Markdown summary) and prints its path last. The steps it shares with
``mmdomain fed compare`` are in ``experiment``.

The domains are reached only through the registry (dataset names), never by import.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any, Callable

import click

from mmdomain.tracking import options as tracking_options

from . import task
from .cross_site import GLOBAL, CrossSite
from .cross_site import describe as describe_cross_site
from .experiment import (BOOTSTRAP_RESAMPLES, Clock, federated, local_only, main_metric, pooled_predictions,
                         pooled_test, run_flower, site, site_options, site_tests, synthetic_sites, versus_local)
from .report import PUBLIC_ALONE, describe, write_report
from .tracking import DEMO_EXPERIMENT

PUBLIC_SEED_OFFSET = 1000  # the public site's generator seed: the demo's seed + this
#: The private arm's step size when only the fusion and task head train (on frozen features): larger
#: than a full model's, for the few noisy full-size steps (``local-batch-size``) a budget allows.
PRIVATE_HEAD_LR = 0.03
PRETRAIN_KINDS = ("supervised", "contrastive")
PRIVACY_MODES = {"local": "local DP-SGD (record-level, at every site)",
                 "central": "central DP (site-level, noise added by the server)"}


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
    """One domain of the demo: sites, readiness, local-only, federated, and the private arm."""
    sites, rounds, seed, engine = plan["sites"], plan["rounds"], plan["seed"], plan["engine"]
    settings = synthetic_sites(registry, dataset, out / "data" / dataset, sites=sites, seed=seed, quick=plan["quick"],
                               clock=clock, config={"num-server-rounds": rounds, "local-epochs": plan["local_epochs"],
                                                    "fusion": plan["fusion"] or "", "device": device,
                                                    "target-delta": plan["target_delta"]})
    clock.step(f"{dataset}: readiness report")
    readiness = _readiness(settings, registry, sites, log)
    heterogeneity = _heterogeneity(settings, registry, sites, seed, log)
    tests = site_tests(settings, registry, sites)
    test = pooled_test(settings, registry, sites, tests)
    cross = CrossSite(tests, settings)
    epochs = rounds * plan["local_epochs"]
    clock.step(f"{dataset}: local-only training at each site ({epochs} epochs each)")
    local, local_preds, fusion_vs_single = local_only(settings, registry, sites, epochs, test, log, cross=cross)
    clock.step(f"{dataset}: federated, {rounds} rounds ({engine})")
    runs = out / "runs" / dataset
    fed, fed_model = federated(settings, registry, sites, engine, gpus, test, runs / "federated", dp=False,
                               noise=0.0, clip=0.0, max_epsilon=0.0, log=log, cross=cross)
    metric = main_metric(fed["overall"])
    fed_preds = pooled_predictions(fed_model, test, settings)
    versus = versus_local(fed_model, metric, fed_preds, local_preds, seed, log)
    pretrained = _pretrain(registry, dataset, settings, out, plan, test, clock, log)
    private = _private(registry, dataset, settings, plan, pretrained, test, runs / "private", gpus, clock, log,
                       cross)
    matrix = cross.matrix(metric)
    log(f"  {dataset} cross-site {metric}: {describe_cross_site(matrix)}")
    private["minus_federated"] = private["overall"].get(metric, float("nan")) - fed["overall"].get(metric, float("nan"))
    private["versus_federated"] = _versus_federated(fed_model, metric, private.pop("_preds"), fed_preds, seed)
    log(f"  {dataset}: federated {metric} {fed['overall'].get(metric, float('nan')):.3f}; private ({describe(private)}) "
        f"{private['overall'].get(metric, float('nan')):.3f} ({private['minus_federated']:+.3f})")
    if pretrained and pretrained["public_only"]:
        log(f"  {dataset}: {PUBLIC_ALONE} {metric} {pretrained['public_only'].get(metric, float('nan')):.3f}")
    return {"metric": metric, "test_samples": len(test), "readiness": readiness, "local": local,
            "federated": fed, "private": private, "versus_local": versus, "fusion_vs_single": fusion_vs_single,
            "cross_site": matrix, "heterogeneity": heterogeneity}


def _heterogeneity(settings, registry, sites: int, seed: int, log) -> dict[str, Any]:
    """How different the sites are, from the readiness reports they would send (noised, suppressed):
    each site against the others, as the ServerApp logs it (``heterogeneity``)."""
    from .heterogeneity import describe as describe_heterogeneity
    from .heterogeneity import divergences
    from .readiness import readiness

    reports = {f"site-{i}": readiness(settings, site(i, sites), registry, seed=seed * 1000 + i) for i in range(sites)}
    div = divergences(reports)
    for line in describe_heterogeneity(div):
        log("  heterogeneity: " + line)
    return div


def public_site_options(gen, quick: bool) -> dict[str, Any]:
    """The demo's public pretraining site: the demo sites' options, with the generator's
    ``demo_public_options`` over them (a public corpus larger than one site); as a site with ``quick``."""
    return {**site_options(gen, quick), **({} if quick else gen.demo_public_options or {})}


def _pretrain(registry, dataset: str, settings, out: Path, plan: dict[str, Any], test, clock: Clock,
              log) -> dict[str, Any] | None:
    """Pretraining of the federated model on a public synthetic site (the same generator, another
    seed; sized by ``public_site_options``), locally with the core's ``fit``: ``supervised`` (the whole
    model on the public site's labels, as public ImageNet / CheXpert / BigEarthNet weights are made;
    then scored alone on the pooled ``test``, so the private arm shows what the sites' data add) or
    ``contrastive`` (the encoders only, on the image/text or S1/S2 pairs, no label read). None
    when a contrastive pretraining has no modality pair to contrast."""
    from mmdomain.config import DataConfig, ModelConfig, RunConfig, TrainConfig, contrastive_variant, parse
    from mmdomain.data import availability_counts
    from mmdomain.training import fit

    kind = plan["pretrain"]
    model = task.model_config(settings, registry).model_dump(mode="json")
    if kind == "contrastive" and len(model["modalities"]) != 2:
        log(f"  {dataset}: {len(model['modalities'])} modalities, no pair to pretrain contrastively; "
            "the private arm trains every parameter")
        return None
    gen = registry.synthetic_for(dataset)
    seed, epochs = plan["seed"] + PUBLIC_SEED_OFFSET, plan["pretrain_epochs"]
    what = "the model on its labels" if kind == "supervised" else "the encoders contrastively, labels unused"
    clock.step(f"{dataset}: pretraining {what}, on a public synthetic site (seed {seed}, {epochs} epochs)")
    folder = gen.generate(out / "data" / f"{dataset}-public", num_sites=1, seed=seed,
                          **public_site_options(gen, plan["quick"]))[0]
    train = registry.dataset(dataset).build(folder, split="train")
    pairs = availability_counts(train, model["modalities"])[1].get("+".join(model["modalities"]), 0)
    log(f"  public site: {len(train)} train samples, {pairs} with both modalities ({' + '.join(model['modalities'])})")
    config = RunConfig(data=DataConfig(dataset=dataset, root=folder),
                       model=parse(ModelConfig, model if kind == "supervised" else contrastive_variant(model,
                                                                                                   proj_dim=64)),
                       train=TrainConfig(epochs=epochs, batch_size=32, seed=plan["seed"], device=settings.device,
                                         out_dir=out / "runs" / dataset / "pretrain", progress=False))
    result = fit(config, registry, log=lambda line: log("    " + line) if line.startswith("epoch") else None)
    pretrained = {"kind": kind, "site": str(folder), "seed": seed, "samples": len(train), "pairs": pairs,
                  "epochs": epochs, "checkpoint": str(result.checkpoint),
                  "val": result.history[-1]["overall"] if result.history else {}, "public_only": None}
    if kind == "supervised":  # the public model alone (the checkpoint's weights), before any site's data
        pretrained["public_only"] = task.evaluate_site(result.model, test, settings)["overall"]
    return pretrained


def _private(registry, dataset: str, settings, plan: dict[str, Any], pretrained: dict[str, Any] | None, test,
             out_dir: Path, gpus: float, clock: Clock, log, cross: CrossSite) -> dict[str, Any]:
    """The federated private arm at ``target-epsilon`` (noise planned for the whole training, each
    site from its own size): local DP-SGD or central DP, encoders frozen from ``pretrained``; also
    scored on every site's own test set (``cross``, row ``global + <mode> DP``)."""
    from mmdomain.checkpoint import load_checkpoint

    mode, eps, delta, clip = plan["privacy"], plan["target_epsilon"], plan["target_delta"], plan["clip"]
    config = {**settings.as_run_config(), "target-epsilon": eps, "resume": False}
    config |= {"local-dp": True, "local-clip-norm": clip} if mode == "local" else {"central-dp": True, "clip-norm": clip}
    frozen = list(task.model_config(settings, registry).modalities) if pretrained else []
    if pretrained:
        config |= {"init-from": pretrained["checkpoint"], "encoder-train": ";".join(f"{m}=none" for m in frozen),
                   "lr": PRIVATE_HEAD_LR}
    clock.step(f"{dataset}: federated, private: {PRIVACY_MODES[mode]} to epsilon {eps:g} at delta {delta:g}"
               + (", encoders frozen from the pretrained checkpoint" if pretrained else ", every parameter"))
    summary = run_flower(plan["engine"], plan["sites"], config, out_dir, gpus, log)
    model, _ = load_checkpoint(out_dir / "model.safetensors", registry)
    result = task.evaluate_site(model, test, settings)
    cross.add(f"{GLOBAL} + {mode} DP", model, pooled=result)
    per_site = summary.get("local-epsilon") or {}
    spent = max(per_site.values(), default=0.0) if mode == "local" else (summary.get("epsilon") or 0.0)
    return {"mode": mode, "mechanism": PRIVACY_MODES[mode], "overall": result["overall"],
            "by_pattern": result["by_pattern"], "history": summary.get("history", []), "rounds": summary.get("rounds"),
            "stopped": summary.get("stopped"), "epsilon": spent, "epsilon_target": eps, "delta": delta,
            "epsilon_per_site": per_site, "noise_multiplier": _noise(out_dir, mode), "clip_norm": clip,
            "batch_size": config["local-batch-size"] if mode == "local" else config["batch-size"], "lr": config["lr"],
            "pretrain": pretrained, "frozen": _frozen_check(frozen, pretrained, out_dir / "model.safetensors"),
            "_preds": pooled_predictions(model, test, settings)}


def _noise(out_dir: Path, mode: str) -> dict[str, float]:
    """The noise multiplier of each site (local DP-SGD, each planned from the site's own size) or
    of the server (``{"server": ...}``, central DP), from the privacy ledger's last rows."""
    ledger = out_dir / "privacy-ledger.jsonl"
    rows = [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()] if ledger.exists() else []
    return {(str(r["site"]) if mode == "local" else "server"): r["noise"] for r in rows if r.get("noise") is not None}


def _frozen_check(encoders: list[str], pretrained: dict[str, Any] | None, final: Path) -> dict[str, Any]:
    """The frozen encoders' tensors in the pretrained checkpoint and in the final private model:
    their SHA-256 and whether they are unchanged (they carry no privacy cost only if so)."""
    if not encoders or not pretrained:
        return {"encoders": [], "tensors": 0, "unchanged": None}
    import torch
    from safetensors.torch import load_file

    prefixes = tuple(f"encoders.{m}." for m in encoders)
    digests = []
    for path in (pretrained["checkpoint"], final):
        state = load_file(str(path))
        h = hashlib.sha256()
        keys = sorted(k for k in state if k.startswith(prefixes))
        for k in keys:
            h.update(k.encode())
            h.update(state[k].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        digests.append((len(keys), h.hexdigest()))
    (n, before), (n_after, after) = digests
    return {"encoders": encoders, "tensors": n, "sha256_pretrained": before, "sha256_final": after,
            "unchanged": n > 0 and n == n_after and before == after}


def _versus_federated(model, metric: str, private, fed, seed: int) -> dict[str, Any] | None:
    """Paired bootstrap of private minus federated on the pooled test set (None if not row-scored)."""
    from mmdomain.bootstrap import paired_bootstrap

    if private is None or fed is None:
        return None
    return paired_bootstrap(model.task, metric, private[0], {"federated": fed[0]}, fed[1],
                            resamples=BOOTSTRAP_RESAMPLES, seed=seed)


def run_demo(*, datasets: list[str], out: Path, sites: int, rounds: int, local_epochs: int, fusion: str | None,
             privacy: str, target_epsilon: float, target_delta: float, clip: float, pretrain_epochs: int,
             quick: bool, engine: str, gpu: bool, seed: int, pretrain: str = "supervised",
             log: Callable[[str], None] = click.echo) -> Path:
    from mmdomain.plugins import get_registry

    registry = get_registry()
    clock = Clock(log)
    device, gpus = _device(gpu, sites, log)
    out.mkdir(parents=True, exist_ok=True)
    plan = {"datasets": datasets, "sites": sites, "rounds": rounds, "local_epochs": local_epochs, "fusion": fusion,
            "privacy": privacy, "target_epsilon": target_epsilon, "target_delta": target_delta, "clip": clip,
            "pretrain": pretrain, "pretrain_epochs": pretrain_epochs, "quick": quick, "engine": engine, "seed": seed}
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
@click.option("--privacy", type=click.Choice(sorted(PRIVACY_MODES)), default="local", show_default=True,
              help="The private arm's mode: local DP-SGD protects each record at every site (the one for a few "
                   "sites); central DP protects each whole site (meaningful only with many sites).")
@click.option("--target-epsilon", default=8.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="The private arm's budget over the whole training; the noise is planned to stay within it.")
@click.option("--target-delta", default=1e-5, show_default=True, type=click.FloatRange(0, 1, min_open=True,
                                                                                        max_open=True),
              help="The private arm's delta.")
@click.option("--clip", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="DP clipping norm: of each record's gradient (local) or of each site's update (central).")
@click.option("--pretrain", type=click.Choice(PRETRAIN_KINDS), default="supervised", show_default=True,
              help="How the private arm's frozen encoders are pretrained on the public site: on its labels "
                   "(supervised, as public ImageNet / CheXpert / BigEarthNet weights are made; the public model "
                   "alone is scored too) or self-supervised on its image/text or S1/S2 pairs (contrastive).")
@click.option("--pretrain-epochs", default=None, type=click.IntRange(min=1),
              help="Epochs of pretraining on the public site [default: 5, --quick 2].")
@click.option("--quick", is_flag=True, help="Small data, 2 rounds, in-process Flower apps: a few minutes.")
@click.option("--engine", type=click.Choice(["simulation", "in-process"]), default=None,
              help="Flower's Ray simulation, or the same apps called in-process [default: simulation; --quick: in-process].")
@click.option("--gpu", is_flag=True, help="Use the GPU when there is one (fractional GPU per virtual site).")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (default: a new temp folder).")
@tracking_options(DEMO_EXPERIMENT)
def demo(datasets: tuple[str, ...], sites: int, rounds: int | None, local_epochs: int, fusion: str | None,
         privacy: str, target_epsilon: float, target_delta: float, clip: float, pretrain: str,
         pretrain_epochs: int | None, quick: bool, engine: str | None, gpu: bool, seed: int, out: Path | None,
         track: bool, tracking_uri: str | None, experiment: str):
    """Synthetic hospitals and regions: readiness, local-only vs federated, and federated private
    training to a target epsilon (local DP-SGD on encoders pretrained on a public site, frozen);
    unless --no-track, then logged to MLflow (one run, a nested run per model; OUT/mlruns by default)."""
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
                      local_epochs=local_epochs, fusion=fusion, privacy=privacy, target_epsilon=target_epsilon,
                      target_delta=target_delta, clip=clip, pretrain=pretrain,
                      pretrain_epochs=pretrain_epochs or (2 if quick else 5),
                      quick=quick, engine=engine or ("in-process" if quick else "simulation"), gpu=gpu, seed=seed)
    if track:  # the report is written: a tracking failure loses nothing
        from .tracking import log_demo

        click.echo(f"tracked: {log_demo(out, uri=tracking_uri, experiment=experiment)}")
    click.echo(f"\nreport: {report}")
