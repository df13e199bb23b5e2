"""Personalisation on shifted federations: does each site's own model beat FedAvg's global model
on that site's own test set, above all at the worst site? (quality benchmark; not a timed test)

Per dataset and seed: 4 synthetic sites with per-site shifts (the generators' heterogeneous
options, issue #16 item 5; medical: label skew alpha 0.5 and each site's scanner tone curve and
noise; remote sensing: label skew 0.5, seasons toward winter and cloud climates). Then the same
federation (the real ServerApp and ClientApp in-process, ``--rounds`` rounds of one local epoch,
modality-aware FedAvg, the same seed) once per method:

  fedavg     the global model, scored at each site (the reference)
  fedbn      normalisation layers kept at each site (``personalise = "fedbn"``)
  fedper     fusion and task heads kept at each site (``personalise = "fedper"``)
  finetune   the global model fine-tuned at each site for ``--finetune-epochs`` (``personalise = "finetune"``)
  finetune-val  the same for up to ``--finetune-val-epochs``, each site keeping the epoch (0: the global
             model) of least loss on its own validation split (``finetune-select = "val-loss"``)
  ditto      each site's own model trained every round beside the global one, pulled toward it
             (``personalise = "ditto"``, ``--ditto-lambda``)

Each personalised model is the file the site wrote (``personal-dir``); every model is scored on
each site's own test split. The worst site is the one where FedAvg's global model scores lowest;
per method: macro AUROC there, and ``method - fedavg`` with a paired bootstrap 95% interval over
that site's test rows; the same margin at every site (where personalisation hurts, it shows).

Target (issue #16): on a 4-site shifted federation of each domain, the best personalisation method
improves the worst site's own-test macro AUROC over FedAvg by >= 0.03.

    ./dev bench personalisation            # both domains, seeds 0,1,2 (~35 min, 2 CPUs)
    ./dev bench personalisation --quick    # smoke run (~3 min): 1 seed, 2 rounds, small sites
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.update({"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                   "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"})
from harness import write_quality  # noqa: E402

from mmdomain.bootstrap import paired_bootstrap, predictions  # noqa: E402
from mmdomain.checkpoint import load_checkpoint  # noqa: E402
from mmdomain.plugins import get_registry  # noqa: E402
from mmdomain.training import make_loader  # noqa: E402
from mmdomain_federated import task  # noqa: E402
from mmdomain_federated.inprocess import LocalGrid  # noqa: E402
from mmdomain_federated.server_app import run_server  # noqa: E402
from mmdomain_federated.settings import Settings  # noqa: E402

METRIC = "macro_auroc"
METHODS = ("fedavg", "fedbn", "fedper", "finetune", "finetune-val", "ditto")
SITES = 4
SHIFTS = {"medical": {"label_skew": 0.5, "intensity_shift": 1.0},
          "s2s1_scenes": {"label_skew": 0.5, "season_shift": 1.0, "cloud_climate": 0.5}}
SIZES = {"medical": {"studies_per_site": 400, "image_size": 32},
         "s2s1_scenes": {"scenes_per_site": 2, "size": 256, "patch_size": 16}}
QUICK_SIZES = {"medical": {"studies_per_site": 80, "image_size": 32},
               "s2s1_scenes": {"scenes_per_site": 1, "size": 192, "patch_size": 16}}


def federation(registry, dataset: str, root: Path, method: str, seed: int, args, work: Path
               ) -> tuple[dict[str, Any], list[Any]]:
    """One federation with ``method``; its summary and the model each site ends with (fedavg: the global one)."""
    config = {"dataset": dataset, "data-root": str(root), "num-server-rounds": args.rounds, "local-epochs": 1,
              "seed": seed, "readiness": False, "min-sites": SITES, "device": "cpu", "lr": args.lr}
    if method != "fedavg":
        config["personalise"] = "finetune" if method == "finetune-val" else method
        if method == "finetune":
            config["finetune-epochs"] = args.finetune_epochs
        if method == "finetune-val":
            config.update({"finetune-epochs": args.finetune_val_epochs, "finetune-select": "val-loss"})
        if method == "ditto":
            config["ditto-lambda"] = args.ditto_lambda
    settings = Settings.from_run_config(config)
    own = [work / f"{method}-site-{i}" for i in range(SITES)]
    grid = LocalGrid(SITES, settings.as_run_config(), node_configs=[{"personal-dir": str(f)} for f in own])
    summary = run_server(grid, settings, work / method, echo=False, log=lambda line: None)
    if summary.get("stopped") != "completed":
        raise RuntimeError(f"{dataset} {method} seed {seed}: the federation stopped: {summary.get('stopped')}")
    if method == "fedavg":
        model, _ = load_checkpoint(work / method / summary["model"], registry)
        return summary, [model] * SITES
    return summary, [load_checkpoint(next(f.glob("personal-*.safetensors")), registry)[0] for f in own]


def score(task_, preds, target) -> float:
    metric = task_.make_metrics()[METRIC]
    metric.update(preds, target)
    return float(metric.compute())


def one_seed(registry, dataset: str, seed: int, args, work: Path) -> list[dict[str, Any]]:
    gen = registry.synthetic_for(dataset)
    sizes = (QUICK_SIZES if args.quick else SIZES)[dataset]
    root = work / "data"
    gen.generate(root, num_sites=SITES, seed=seed, **sizes, **SHIFTS[dataset])
    settings = Settings.from_run_config({"dataset": dataset, "data-root": str(root)})
    tests = [task.load_site(settings, {"partition-id": i, "num-partitions": SITES}, registry, "test")
             for i in range(SITES)]
    preds: dict[str, list[Any]] = {}
    targets: list[Any] = []
    rows, seconds, model = [], {}, None
    for method in args.methods:
        t0 = time.perf_counter()
        _, models = federation(registry, dataset, root, method, seed, args, work / dataset)
        seconds[method] = round(time.perf_counter() - t0, 1)
        preds[method] = []
        for model, test in zip(models, tests):
            p, t = predictions(model, make_loader(test, model.modalities, 64, shuffle=False))
            preds[method].append(p)
            if len(targets) < SITES:
                targets.append(t)
        print(f"    {dataset} seed {seed} {method:<9} {seconds[method]:>6.1f}s", flush=True)
    scores = {m: [score(model.task, preds[m][i], targets[i]) for i in range(SITES)] for m in args.methods}
    worst = min(range(SITES), key=lambda i: scores["fedavg"][i])
    for m in args.methods:
        for i in range(SITES):
            row = {"dataset": dataset, "seed": seed, "method": m, "site": f"site-{i}", "worst": i == worst,
                   "test_rows": len(targets[i]), METRIC: scores[m][i], "seconds": seconds[m]}
            if m != "fedavg":
                boot = paired_bootstrap(model.task, METRIC, preds[m][i], {"fedavg": preds["fedavg"][i]}, targets[i],
                                        resamples=args.resamples, seed=seed)
                row.update(minus_fedavg=boot["margin"], interval=boot["interval"])
            rows.append(row)
    line = ", ".join(f"{m} {scores[m][worst]:.3f}" for m in args.methods)
    print(f"  {dataset} seed {seed}: worst site (by FedAvg) site-{worst}: {line}", flush=True)
    return rows


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per dataset and method: the worst site's score and margin over FedAvg, mean and range over seeds,
    and over every site the mean margin and how many site x seed cells it hurt (upper bound < 0)."""
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        for method in METHODS:
            sel = [r for r in rows if r["dataset"] == dataset and r["method"] == method]
            if not sel:
                continue
            worst = [r for r in sel if r["worst"]]
            entry = {"dataset": dataset, "method": method, "seeds": len(worst),
                     "worst_site_mean": statistics.fmean(r[METRIC] for r in worst)}
            if method != "fedavg":
                entry.update(worst_margin_mean=statistics.fmean(r["minus_fedavg"] for r in worst),
                             worst_margin_min=min(r["minus_fedavg"] for r in worst),
                             worst_lower_bounds=[round(r["interval"][0], 3) for r in worst],
                             all_sites_margin_mean=statistics.fmean(r["minus_fedavg"] for r in sel),
                             hurt_cells=sum(r["interval"][1] < 0 for r in sel), cells=len(sel))
            out.append(entry)
    return out


def markdown(rows: list[dict[str, Any]], means: list[dict[str, Any]]) -> str:
    lines = ["| dataset | seed | worst site | method | macro AUROC there | minus FedAvg [95% CI] |",
             "|---|---|---|---|---|---|"]
    for r in (r for r in rows if r["worst"]):
        diff = f"{r['minus_fedavg']:+.3f} [{r['interval'][0]:+.3f}, {r['interval'][1]:+.3f}]" if "interval" in r else ""
        lines.append(f"| {r['dataset']} | {r['seed']} | {r['site']} ({r['test_rows']} rows) | {r['method']} | "
                     f"{r[METRIC]:.3f} | {diff} |")
    lines += ["", "| dataset | method | seeds | worst site, mean | minus FedAvg there: mean (min) | "
              "every site: mean margin | site x seed cells it hurt (CI < 0) |", "|---|---|---|---|---|---|---|"]
    for m in means:
        extra = (f"{m['worst_margin_mean']:+.3f} ({m['worst_margin_min']:+.3f}) | {m['all_sites_margin_mean']:+.3f} | "
                 f"{m['hurt_cells']} of {m['cells']}" if "worst_margin_mean" in m else "- | - | -")
        lines.append(f"| {m['dataset']} | {m['method']} | {m['seeds']} | {m['worst_site_mean']:.3f} | {extra} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="medical,s2s1_scenes")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(METHODS), help="fedavg must be one of them (the reference)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--lr", type=float, default=0.003)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--finetune-val-epochs", type=int, default=4, help="finetune-val: the most epochs a site tries")
    ap.add_argument("--ditto-lambda", type=float, default=0.1)
    ap.add_argument("--resamples", type=int, default=500)
    ap.add_argument("--quick", action="store_true", help="smoke run (its figures mean nothing): 1 seed, 2 rounds, "
                    "small sites")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="results file (default: bench/results/personalisation.json; "
                    "--quick writes none unless given)")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.rounds, args.resamples = "0", 2, 100
    args.methods = [m for m in args.methods.split(",") if m]
    if "fedavg" not in args.methods or any(m not in METHODS for m in args.methods):
        ap.error(f"--methods: fedavg and any of {', '.join(METHODS[1:])}")
    logging.getLogger("flwr").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    registry = get_registry()
    started, load = dt.datetime.now(dt.timezone.utc), [round(os.getloadavg()[0], 2)]
    print(f"# personalisation  ({started:%Y-%m-%d %H:%M} UTC, {torch.get_num_threads()} torch thread(s))", flush=True)
    rows = []
    for dataset in args.datasets.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            with tempfile.TemporaryDirectory(prefix="personal-") as tmp:
                rows += one_seed(registry, dataset, seed, args, Path(tmp))
    means = summary(rows)
    load.append(round(os.getloadavg()[0], 2))
    print(markdown(rows, means))
    write_quality("personalisation", args, started, load, shifts=SHIFTS, sizes=QUICK_SIZES if args.quick else SIZES,
                  rows=rows, summary=means)


if __name__ == "__main__":
    main()
