"""``mmdomain demo``: the first thing a new user runs.

For each domain (default: every installed one of ``medical`` and ``s2s1_scenes``): generate
synthetic sites, print a readiness report, train locally at each site (fusion and each single
modality), then federated across the sites in Flower's simulation without and with central DP,
and compare on the pooled test set. Writes a report folder (metrics JSON/CSV, PNG plots, a
Markdown summary) and prints its path last.

The domains are reached only through the registry (dataset names), never by import.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import click

DEFAULT_DATASETS = ("medical", "s2s1_scenes")
#: Site sizes for the default (full) demo; --quick uses each generator's quick options.
DEMO_OPTIONS: dict[str, dict[str, Any]] = {
    "medical": {"studies_per_site": 96},
    "s2s1_scenes": {"scenes_per_site": 2, "size": 192, "patch_size": 16},
}
BOOTSTRAP_RESAMPLES = 1000
QUICK_OPTIONS: dict[str, dict[str, Any]] = {
    "s2s1_scenes": {"scenes_per_site": 1, "size": 128, "patch_size": 16},
}


class Clock:
    def __init__(self, log: Callable[[str], None]):
        self.start, self.log = time.perf_counter(), log

    def step(self, text: str) -> None:
        self.log(click.style(f"[{time.perf_counter() - self.start:6.1f}s] {text}", bold=True))


def main_metric(metrics: dict[str, float]) -> str:
    for key in ("macro_auroc", "accuracy", "miou", "recall@1"):
        if key in metrics:
            return key
    return next(iter(metrics), "loss")


def _pooled_test(settings, registry, sites: int):
    from torch.utils.data import ConcatDataset

    from . import task

    return ConcatDataset([task.load_site(settings, {"partition-id": i, "num-partitions": sites}, registry, "test")
                          for i in range(sites)])


def _synthetic_sites(registry, dataset: str, root: Path, *, sites: int, seed: int, quick: bool, clock: Clock,
                     config: dict[str, Any]):
    """Write ``sites`` synthetic sites of ``dataset`` under ``root``; the run settings for them."""
    from . import task

    gen = registry.synthetic_for(dataset)
    options = (QUICK_OPTIONS.get(dataset, gen.quick_options) if quick else DEMO_OPTIONS.get(dataset, {}))
    clock.step(f"{dataset}: writing {sites} synthetic sites ({gen.name}, {options or 'defaults'}, seed {seed})")
    gen.generate(root, num_sites=sites, seed=seed, **options)
    return task.Settings.from_run_config({"dataset": dataset, "data-root": str(root), "seed": seed,
                                          "min-sites": min(2, sites), "target-delta": 1e-5, **config})


def _readiness(settings, registry, sites: int, log) -> dict[str, Any]:
    from . import task

    spec = registry.dataset(settings.dataset)
    report = {}
    for i in range(sites):
        train = task.load_site(settings, {"partition-id": i, "num-partitions": sites}, registry, "all")
        per_mod, patterns = task.counts(train, list(spec.modalities))
        stats = spec.describe(train) if spec.describe else {}
        report[f"site-{i}"] = {"samples": len(train), "modalities": per_mod, "patterns": patterns, "stats": stats}
        log(f"  site-{i}: {len(train)} samples; per modality {per_mod}; patterns {patterns}")
    return report


def _test_predictions(model, test, settings):
    """``(preds, target)`` of ``model`` on the pooled test set, or None for a task that is not
    scored row by row (then there is no bootstrap)."""
    from mmdomain.bootstrap import predictions
    from mmdomain.errors import MMDomainError
    from mmdomain.training import make_loader, select_device

    device = select_device(settings.device)
    model.to(device)
    try:
        return predictions(model, make_loader(test, model.modalities, 64, shuffle=False), device=device)
    except MMDomainError:
        return None


def _local(settings, registry, sites: int, epochs: int, test, log, *, single_modality_models: bool = True):
    """Each site alone: the fusion model and (unless told not to) one model per single modality,
    evaluated on the pooled test set. Returns the metrics and every model's test predictions
    (for the bootstrap), keyed ``site-<i>`` (fusion) or ``site-<i> <variant>``."""
    from mmdomain.demo import single_modality
    from mmdomain.models import build_model

    from . import task

    import torch

    base = task.model_config(settings, registry)
    variants = {"fusion": base}
    if single_modality_models:
        variants.update({f"{m} only": single_modality(base, m) for m in base.modalities})
    local_settings = task.Settings.from_run_config({**settings.as_run_config(), "local-epochs": epochs})
    out: dict[str, Any] = {name: {} for name in variants}
    preds: dict[str, Any] = {}
    for i in range(sites):
        data = task.load_site(settings, {"partition-id": i, "num-partitions": sites}, registry, "train")
        for name, cfg in variants.items():
            torch.manual_seed(settings.seed)
            model = build_model(cfg, registry)
            task.train_site(model, data, local_settings, seed=settings.seed)
            result = task.evaluate_site(model, test, settings)
            out[name][f"site-{i}"] = {"overall": result["overall"], "by_pattern": result["by_pattern"]}
            preds[f"site-{i}" if name == "fusion" else f"site-{i} {name}"] = _test_predictions(model, test, settings)
            metric = main_metric(result["overall"])
            log(f"  site-{i} {name:<22} pooled test {metric} {result['overall'].get(metric, float('nan')):.3f}")
    return out, preds


def _versus_local(model, metric: str, fed, local: dict[str, Any], seed: int, log) -> dict[str, Any] | None:
    """Paired bootstrap over the pooled test set: federated minus the best of the local-only models
    that score the same rows (a single-modality model skips the rows without its modality, so it
    is compared only where every test row has that modality)."""
    import torch

    from mmdomain.bootstrap import paired_bootstrap

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


def _progress(line: str, log) -> None:
    """The server's round, readiness and final lines, shortened (the full ones are in events.log)."""
    if "round" in line or "finished" in line or "readiness" in line:
        log("    " + line.rstrip()[:160])


def _run_flower(engine: str, sites: int, run_config: dict[str, Any], out_dir: Path, gpus: float, log) -> dict:
    """The real ServerApp/ClientApp: in Flower's simulation (Ray), or in-process (no Ray)."""
    run_config = {**run_config, "out-dir": str(out_dir)}
    if engine == "in-process":
        from . import task
        from .inprocess import LocalGrid
        from .server_app import run_server

        settings = task.Settings.from_run_config(run_config)
        return run_server(LocalGrid(sites, settings.as_run_config()), settings, out_dir, echo=False,
                          log=lambda line: _progress(line, log))
    from .simulate import APP_DIR, FLOWER_ENV, free_port_base, run_config_arg, stop_local_superlink, write_flwr_home

    home = Path(tempfile.mkdtemp(prefix="mmdomain-demo-flwr-"))
    write_flwr_home(home, sites, num_cpus=1, num_gpus=gpus)
    port = free_port_base()
    env = {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(home), "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(port),
           "FLWR_LOCAL_CONTROL_API_PORT": str(port + 2),
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    cmd = [str(Path(sys.executable).with_name("flwr")), "run", str(APP_DIR), "local", "--stream",
           "--run-config", run_config_arg(run_config)]
    proc = subprocess.Popen(cmd, env=env, cwd=str(APP_DIR), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    tail: list[str] = []
    try:
        for line in proc.stdout:  # progress: the server's per-round lines as they come
            tail = (tail + [line.rstrip()])[-40:]
            if "[mmdomain-fed" in line:
                _progress(line.split("] ", 1)[-1], log)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        stop_local_superlink(home)
    summary = out_dir / "summary.json"
    if proc.returncode != 0 or not summary.exists():
        raise click.ClickException("the Flower simulation failed:\n" + "\n".join(tail[-20:]))
    return json.loads(summary.read_text())


def _federated(settings, registry, sites: int, engine: str, gpus: float, test, out_dir: Path, *, dp: bool,
               noise: float, clip: float, max_epsilon: float, log) -> dict[str, Any]:
    from mmdomain.checkpoint import load_checkpoint

    from . import task

    run_config = {**settings.as_run_config(), "central-dp": dp, "noise-multiplier": noise, "clip-norm": clip,
                  "max-epsilon": max_epsilon if dp else 0.0, "resume": False}
    summary = _run_flower(engine, sites, run_config, out_dir, gpus, log)
    model, _ = load_checkpoint(out_dir / "model.safetensors", registry)
    result = task.evaluate_site(model, test, settings)
    return {"overall": result["overall"], "by_pattern": result["by_pattern"], "history": summary.get("history", []),
            "epsilon": summary.get("epsilon"), "stopped": summary.get("stopped"), "rounds": summary.get("rounds"),
            "delta": settings.target_delta if dp else None, "noise_multiplier": noise if dp else None,
            "clip_norm": clip if dp else None}, model


# -- report ---------------------------------------------------------------------------------------
def _rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for dataset, r in results.items():
        for variant, per_site in r["local"].items():
            for site, m in per_site.items():
                for k, v in m["overall"].items():
                    rows.append({"dataset": dataset, "model": f"local {variant}", "site": site, "metric": k, "value": v})
        for key, label in (("federated", "federated fusion"), ("federated_dp", "federated fusion + DP")):
            for k, v in r[key]["overall"].items():
                rows.append({"dataset": dataset, "model": label, "site": "all", "metric": k, "value": v})
            if r[key].get("epsilon") is not None:
                rows.append({"dataset": dataset, "model": label, "site": "all", "metric": "epsilon",
                             "value": r[key]["epsilon"]})
        v = r.get("versus_local")
        if v:
            for k, value in (("margin", v["margin"]), ("interval_low", v["interval"][0]),
                             ("interval_high", v["interval"][1]), ("beats_all_share", v["beats_all_share"])):
                rows.append({"dataset": dataset, "model": "federated fusion", "site": "all",
                             "metric": f"bootstrap {k} vs best local {v['metric']}", "value": value})
    return rows


def _plots(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    paths = []
    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(7.5 * n, 4.8), squeeze=False)
    for ax, (dataset, r) in zip(axes[0], results.items()):
        metric = r["metric"]
        labels, values, colours = [], [], []
        for variant, per_site in r["local"].items():
            for site, m in per_site.items():
                labels.append(f"{site}\n{variant}")
                values.append(m["overall"].get(metric, np.nan))
                colours.append("tab:gray" if variant != "fusion" else "tab:blue")
        for key, label, c in (("federated", "federated\nfusion", "tab:green"),
                              ("federated_dp", f"federated\n+ DP (eps {r['federated_dp'].get('epsilon') or 0:.1f})",
                               "tab:red")):
            labels.append(label)
            values.append(r[key]["overall"].get(metric, np.nan))
            colours.append(c)
        ax.bar(range(len(values)), values, color=colours)
        ax.set_xticks(range(len(values)), labels, rotation=90, fontsize=7)
        ax.set_ylabel(f"pooled test {metric}")
        lo = np.nanmin(values) if np.isfinite(values).any() else 0
        ax.set_ylim(max(0.0, lo - 0.1), 1.0)
        ax.set_title(f"{dataset}: local-only (each site) vs federated")
    fig.tight_layout()
    paths.append(out / "comparison.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, n, figsize=(7.5 * n, 4.2), squeeze=False)
    for ax, (dataset, r) in zip(axes[0], results.items()):
        metric = r["metric"]
        for key, label, c in (("federated", "federated", "tab:green"), ("federated_dp", "federated + DP", "tab:red")):
            hist = r[key]["history"]
            ys = [h.get(f"eval-{metric}", np.nan) for h in hist]
            ax.plot([h["round"] for h in hist], ys, marker="o", color=c, label=f"{label}: val {metric}")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("round (validation of the incoming global model)")
        ax.set_ylabel(f"validation {metric}")
        ax.set_title(f"{dataset}: per round")
        eps = [(h["round"], h["epsilon"]) for h in r["federated_dp"]["history"] if "epsilon" in h]
        if eps:
            ax2 = ax.twinx()
            ax2.plot(*zip(*eps), ls="--", color="black", label="epsilon (DP run)")
            ax2.set_ylabel(f"epsilon at delta={r['federated_dp']['delta']:g}")
            ax2.legend(loc="lower right", fontsize=8)
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    paths.append(out / "rounds.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def _markdown(results: dict[str, Any], plan: dict[str, Any], seconds: float) -> str:
    lines = ["# mmdomain demo report", "",
             f"{plan['sites']} synthetic sites per domain, {plan['rounds']} federated rounds "
             f"({plan['engine']}), fusion head: {plan['fusion'] or 'dataset default'}, "
             f"central DP noise multiplier {plan['noise']} / clip {plan['clip']}. Took {seconds / 60:.1f} min.", ""]
    for dataset, r in results.items():
        metric = r["metric"]
        lines += [f"## {dataset}", "", f"Pooled test set of all sites ({r['test_samples']} samples), {metric}:", "",
                  "| model | " + " | ".join(r["local"]["fusion"]) + " |",
                  "|---|" + "---|" * len(r["local"]["fusion"])]
        for variant, per_site in r["local"].items():
            lines.append(f"| local-only, {variant} | " + " | ".join(
                f"{m['overall'].get(metric, float('nan')):.3f}" for m in per_site.values()) + " |")
        lines += ["", "| federated model | " + metric + " | epsilon | rounds | stopped |", "|---|---|---|---|---|"]
        for key, label in (("federated", "fusion"), ("federated_dp", "fusion + central DP")):
            f = r[key]
            eps = f"{f['epsilon']:.2f} (delta {f['delta']:g})" if f.get("epsilon") is not None else "-"
            lines.append(f"| {label} | {f['overall'].get(metric, float('nan')):.3f} | {eps} | {f['rounds']} | "
                         f"{f['stopped']} |")
        best_local, best_name = max((m["overall"].get(metric, float("-inf")), f"{site} {variant}")
                                    for variant, per_site in r["local"].items() for site, m in per_site.items())
        fed = r["federated"]["overall"].get(metric, float("nan"))
        lines += ["", f"Federated fusion {'beats' if fed > best_local else 'does not beat'} every local-only model "
                  f"({fed:.3f}; the best local-only is {best_name}, {best_local:.3f})."]
        if r.get("versus_local"):
            v = r["versus_local"]
            lines += [f"Paired bootstrap of the pooled test set ({v['resamples']} resamples) against the "
                      f"{len(v['compared'])} local-only models that score every test row: margin "
                      f"{v['margin']:+.3f}, {v['level']:.0%} interval [{v['interval'][0]:+.3f}, "
                      f"{v['interval'][1]:+.3f}]; federated beats every local-only model in "
                      f"{v['beats_all_share']:.0%} of resamples. This covers test-set sampling only; "
                      "`mmdomain fed compare --seeds ...` repeats the training with other seeds."]
        lines.append("")
        lines += ["Availability patterns at each site:", ""]
        for site, rd in r["readiness"].items():
            lines.append(f"- {site}: {rd['samples']} samples, " + ", ".join(f"{p} {c}" for p, c in rd["patterns"].items()))
        lines.append("")
    lines += ["![comparison](comparison.png)", "", "![rounds](rounds.png)", ""]
    return "\n".join(lines)


def run_demo(*, datasets: list[str], out: Path, sites: int, rounds: int, local_epochs: int, fusion: str | None,
             noise: float, clip: float, max_epsilon: float, quick: bool, engine: str, gpu: bool, seed: int,
             log: Callable[[str], None] = click.echo) -> Path:
    from mmdomain.plugins import get_registry

    registry = get_registry()
    clock = Clock(log)
    gpus = 0.0
    device = "cpu"
    if gpu:
        import torch

        if torch.cuda.is_available():
            device, gpus = "cuda", round(1.0 / sites, 3)
        else:
            log("--gpu: no CUDA GPU here; running on the CPU")
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for dataset in datasets:
        root = out / "data" / dataset
        settings = _synthetic_sites(registry, dataset, root, sites=sites, seed=seed, quick=quick, clock=clock,
                                    config={"num-server-rounds": rounds, "local-epochs": local_epochs,
                                            "fusion": fusion or "", "device": device})
        clock.step(f"{dataset}: readiness report")
        readiness = _readiness(settings, registry, sites, log)
        test = _pooled_test(settings, registry, sites)
        clock.step(f"{dataset}: local-only training at each site ({rounds * local_epochs} epochs each)")
        local, local_preds = _local(settings, registry, sites, rounds * local_epochs, test, log)
        clock.step(f"{dataset}: federated, {rounds} rounds ({engine})")
        fed, fed_model = _federated(settings, registry, sites, engine, gpus, test,
                                    out / "runs" / dataset / "federated", dp=False, noise=noise, clip=clip,
                                    max_epsilon=max_epsilon, log=log)
        metric = main_metric(fed["overall"])
        versus = _versus_local(fed_model, metric, _test_predictions(fed_model, test, settings), local_preds, seed, log)
        clock.step(f"{dataset}: federated with central DP (noise {noise}, clip {clip})")
        fed_dp, _ = _federated(settings, registry, sites, engine, gpus, test, out / "runs" / dataset / "federated-dp",
                               dp=True, noise=noise, clip=clip, max_epsilon=max_epsilon, log=log)
        results[dataset] = {"metric": metric, "test_samples": len(test), "readiness": readiness, "local": local,
                            "federated": fed, "federated_dp": fed_dp, "versus_local": versus}
        log(f"  {dataset}: federated {metric} {fed['overall'].get(metric, float('nan')):.3f}, with DP "
            f"{fed_dp['overall'].get(metric, float('nan')):.3f} (epsilon {fed_dp['epsilon'] or 0:.2f})")
    clock.step("writing the report")
    plan = {"datasets": datasets, "sites": sites, "rounds": rounds, "local_epochs": local_epochs, "fusion": fusion,
            "noise": noise, "clip": clip, "max_epsilon": max_epsilon, "quick": quick, "engine": engine, "seed": seed}
    report = out / "report"
    report.mkdir(exist_ok=True)
    (report / "metrics.json").write_text(json.dumps({"plan": plan, "results": results}, indent=1, default=str))
    rows = _rows(results)
    with (report / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["dataset", "model", "site", "metric", "value"])
        writer.writeheader()
        writer.writerows(rows)
    _plots(results, report)
    (report / "summary.md").write_text(_markdown(results, plan, time.perf_counter() - clock.start))
    log((report / "summary.md").read_text())
    return report


@click.command("demo")
@click.option("--dataset", "datasets", multiple=True,
              help="Dataset(s) to demo (repeatable); default: medical and s2s1_scenes where installed.")
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
    chosen = list(datasets) or [d for d in DEFAULT_DATASETS if d in registry.names("dataset")]
    if not chosen:
        raise MMDomainError("no domain plugin is installed (medical, remote sensing); install one or pass --dataset")
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
