"""Missing modalities (issue #14 item 6): how each missing-modality method holds up when training
data lacks modalities, scored on every test availability pattern, per domain, over seeds, with
paired bootstrap intervals (a quality benchmark, not a timed test).

Per dataset and seed: one site, split by the dataset itself: remote sensing 2 scenes of 512x512
in 16x16 patches with the sensors uncoupled (``coupling`` 0, where some classes need one sensor
and some the other: what bench/README's tables were measured on; the generator's ``large_options``
couple them at 0.8 for pretraining); medical 800 studies at 32x32 whose reports
share the images' signs (``coupling`` 0.8) and whose image signs are faint (``sign_strength`` 0.5),
since on 2,000 studies with full-strength signs (the medical ``large_options`` before they had
faint ones) every method sits at the ceiling (full rows 0.99+) and nothing is told apart.
``--site-options`` overrides either. Training-time missingness ``r`` in
``--rates`` (0, 30, 60%): each train row holding both modalities loses one of them, chosen at
random, with probability ``r`` (seeded; the same rows for every method). Methods, each the dataset's
default model (its fusion head, learned missing tokens, modality dropout, balance remedies) with:

  dropout          nothing more: modality dropout and the head's learned missing tokens
  hemis            the HeMIS head (mean + variance over the present modalities)
  pattern_tokens   the cross-attention head with a learned token per availability pattern
  impute           cross-modal translators filling an absent embedding (``missing.impute_weight`` 1)
  distill          the full-modality teacher distilled into the thinned rows (``distill_weight`` 1)
  fallback         a row holding one modality predicted by that modality's unimodal auxiliary head
                   (``missing.unimodal_fallback``; ``balance.aux_weight`` 1 where the default has none)
  token_attention  the token-level cross-modal attention head, at its defaults

and, at each rate, one single-modality model per modality trained on every row of the same (thinned)
training set having it: what the site could train instead from the rows it holds. Every
arm: AdamW lr 1e-3, batch 32, 10 epochs (60-250 steps), the same seed. Scoring on the test rows
holding every modality, shown as they are (``full``) and with all but one modality removed
(``only <m>``, the same rows): macro AUROC and ECE per pattern. Intervals (paired bootstrap over
test rows, 95%): each method at r against itself at 0% on the full rows (target: >= -0.03 at 60%),
and on each ``only <m>`` pattern against the single-modality model of ``m`` trained on the same rows
(target: >= 0); beside it (``margin_all_rows``), against the stricter reference of the single-modality
model at 0%, which saw the ``m`` of every row, including those the thinning took from the fused model.

    ./dev bench missing_modality                    # both domains, seeds 0,1,2 (~23 min, 2 CPUs)
    ./dev bench missing_modality --quick            # smoke run: small sites, 1 seed, 2 rates, few steps
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).parent))
from harness import each_dataset_and_seed, json_options, write_quality  # noqa: E402
from label_efficiency import InMemory, steps_for, train  # noqa: E402

from mmdomain.bootstrap import paired_bootstrap, predictions  # noqa: E402
from mmdomain.config import ModelConfig, parse, single_modality  # noqa: E402
from mmdomain.plugins import get_registry  # noqa: E402
from mmdomain.training import evaluate, make_loader  # noqa: E402

METRIC = "macro_auroc"
METHODS = ("dropout", "hemis", "pattern_tokens", "impute", "distill", "fallback", "token_attention")
DEFAULT_METHODS = METHODS
SITES = {"medical": {"studies_per_site": 800, "image_size": 32, "coupling": 0.8, "sign_strength": 0.5},
         "s2s1_scenes": {"scenes_per_site": 2, "size": 512, "patch_size": 16}}
QUICK_SITES = {"medical": {"studies_per_site": 120, "image_size": 32, "coupling": 0.8},
               "s2s1_scenes": {"scenes_per_site": 1, "size": 128, "patch_size": 16}}


class Only(Dataset):
    """``data`` with each row's modalities cut to ``keep`` (None: as they are); rows lacking all of them
    are the caller's to avoid."""

    def __init__(self, data: Dataset, keep: set[str] | None = None, rows: list[int] | None = None):
        self.data, self.keep = data, keep
        self.rows = list(range(len(data))) if rows is None else rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        s = self.data[self.rows[i]]
        if self.keep is None:
            return s
        return dataclasses.replace(s, inputs={m: v for m, v in s.inputs.items() if m in self.keep})


class Thinned(Dataset):
    """Each row of ``data`` holding every modality loses one, chosen at random, with probability ``rate``."""

    def __init__(self, data: InMemory, modalities: list[str], rate: float, seed: int):
        rng = np.random.default_rng([seed, 14, int(rate * 100)])
        self.samples, self.thinned = [], 0
        for s in data.samples:
            if rate > 0 and set(modalities) <= set(s.inputs) and rng.random() < rate:
                drop = modalities[int(rng.integers(len(modalities)))]
                s = dataclasses.replace(s, inputs={m: v for m, v in s.inputs.items() if m != drop})
                self.thinned += 1
            self.samples.append(s)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        return self.samples[i]


def method_config(registry, dataset: str, method: str) -> ModelConfig:
    data = json.loads(json.dumps(registry.dataset(dataset).default_model))
    if method == "hemis":
        data["fusion"] = {"name": "hemis", "options": {}}
    elif method == "pattern_tokens":
        data["fusion"] = {"name": "cross_attention", "options": {"pattern_tokens": True}}
    elif method == "token_attention":
        data["fusion"] = {"name": "token_attention", "options": {}}
    elif method == "impute":
        data["missing"] = {"impute_weight": 1.0}
    elif method == "distill":
        data["missing"] = {"distill_weight": 1.0}
        data["modality_dropout"] = data.get("modality_dropout") or 0.2
    elif method == "fallback":
        data["balance"] = {**data.get("balance", {}), "aux_weight": data.get("balance", {}).get("aux_weight") or 1.0}
        data["missing"] = {"unimodal_fallback": True}
    elif method != "dropout":
        raise SystemExit(f"unknown method {method!r}; methods: {', '.join(METHODS)}")
    return parse(ModelConfig, data, f"{dataset} {method}")


def one_seed(registry, dataset: str, seed: int, args, work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    gen = registry.synthetic_for(dataset)
    options = {**(QUICK_SITES[dataset] if args.quick else SITES.get(dataset) or gen.large_options
                  or gen.quick_options),
               **args.site_options.get(dataset, {})}
    t0 = time.perf_counter()
    site = gen.generate(work / f"{dataset}-{seed}", num_sites=1, seed=seed, **options)[0]
    spec = registry.dataset(dataset)
    train_ds, test_ds = InMemory(spec.build(site, split="train")), InMemory(spec.build(site, split="test"))
    modalities = sorted(method_config(registry, dataset, "dropout").modalities)
    full = [i for i, s in enumerate(test_ds.samples) if set(modalities) <= set(s.inputs)]
    patterns = {"full": None, **{f"only {m}": {m} for m in modalities}}
    loaders = {p: make_loader(Only(test_ds, keep, full), modalities, 256, shuffle=False)
               for p, keep in patterns.items()}
    log(f"  {dataset} seed {seed}: {len(train_ds)} train / {len(test_ds)} test rows, {len(full)} with every "
        f"modality ({time.perf_counter() - t0:.0f}s to generate and read)")
    steps = steps_for(len(train_ds), args.batch, args.epochs, args.min_steps, args.max_steps)
    rows: list[dict[str, Any]] = []
    preds: dict[tuple[str, float, str], torch.Tensor] = {}
    target, reference_task = None, None

    def score(model, arm: str, rate: float, seconds: float, only: list[str]) -> None:
        nonlocal target, reference_task
        for pattern in only:
            metrics = evaluate(model, loaders[pattern])["overall"]
            preds[(arm, rate, pattern)], target = predictions(model, loaders[pattern])
            rows.append({"dataset": dataset, "seed": seed, "arm": arm, "rate": rate, "pattern": pattern,
                         METRIC: metrics[METRIC], "ece": metrics.get("ece"), "seconds": seconds})
        reference_task = reference_task or model.task
        log(f"    {arm:<15} r={rate:.0%}  " + "  ".join(f"{r['pattern']} {r[METRIC]:.3f}/ece {r['ece']:.3f}"
                                                     for r in rows[-len(only):]) + f"  ({seconds}s)")

    base = method_config(registry, dataset, "dropout")
    for rate in args.rates:
        data = Thinned(train_ds, modalities, rate, seed)
        log(f"   r={rate:.0%}: {data.thinned} of {len(data)} train rows lost a modality")
        for m in modalities:  # the single-modality references: every row of this training set having m
            t0 = time.perf_counter()
            model, _, _ = train(single_modality(base, m), registry, data, steps=steps, batch=args.batch,
                                lr=args.lr, seed=seed)
            score(model, f"{m} only", rate, round(time.perf_counter() - t0, 1), [f"only {m}"])
        for method in args.methods:
            t0 = time.perf_counter()
            model, _, _ = train(method_config(registry, dataset, method), registry, data, steps=steps,
                                batch=args.batch, lr=args.lr, seed=seed)
            score(model, method, rate, round(time.perf_counter() - t0, 1), list(patterns))
    for row in rows:  # the intervals
        arm, rate, pattern = row["arm"], row["rate"], row["pattern"]
        if arm not in args.methods:
            continue
        if pattern == "full" and rate > 0 and (arm, 0.0, "full") in preds:
            against = {"same method at 0%": preds[(arm, 0.0, "full")]}
        elif pattern != "full":
            single = f"{pattern.removeprefix('only ')} only"
            against = {"single-modality model, same train rows": preds[(single, rate, pattern)]}
            if rate > 0 and (single, 0.0, pattern) in preds:  # the stricter reference: it saw every row at 0%
                boot = paired_bootstrap(reference_task, METRIC, preds[(arm, rate, pattern)],
                                        {"all": preds[(single, 0.0, pattern)]}, target, resamples=args.resamples,
                                        seed=seed)
                row.update(margin_all_rows=boot["margin"], interval_all_rows=boot["interval"])
        else:
            continue
        boot = paired_bootstrap(reference_task, METRIC, preds[(arm, rate, pattern)], against, target,
                                resamples=args.resamples, seed=seed)
        row.update(margin=boot["margin"], interval=boot["interval"], against=next(iter(against)))
    return {"dataset": dataset, "seed": seed, "site_options": options, "train_rows": len(train_ds),
            "test_rows": len(test_ds), "full_test_rows": len(full), "steps": steps, "rows": rows}


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over seeds per dataset, arm, rate and pattern; margins' mean, seeds' range and intervals."""
    keys = sorted({(r["dataset"], r["arm"], r["rate"], r["pattern"]) for r in rows})
    out = []
    for key in keys:
        group = [r for r in rows if (r["dataset"], r["arm"], r["rate"], r["pattern"]) == key]
        entry = {"dataset": key[0], "arm": key[1], "rate": key[2], "pattern": key[3], "seeds": len(group),
                 METRIC: statistics.fmean(r[METRIC] for r in group),
                 "ece": statistics.fmean(r["ece"] for r in group if r["ece"] is not None)}
        margins = [r for r in group if "margin" in r]
        if margins:
            entry.update(against=margins[0]["against"], margin=statistics.fmean(r["margin"] for r in margins),
                         margin_min=min(r["margin"] for r in margins), margin_max=max(r["margin"] for r in margins),
                         intervals=[r["interval"] for r in margins])
        strict = [r for r in group if "margin_all_rows" in r]
        if strict:
            entry.update(margin_all_rows=statistics.fmean(r["margin_all_rows"] for r in strict),
                         margin_all_rows_min=min(r["margin_all_rows"] for r in strict),
                         margin_all_rows_max=max(r["margin_all_rows"] for r in strict),
                         intervals_all_rows=[r["interval_all_rows"] for r in strict])
        out.append(entry)
    return out


def markdown(means: list[dict[str, Any]]) -> str:
    lines = ["| dataset | method | train missing | test pattern | AUROC | ECE | margin (seeds' range) "
             "| 95% intervals, per seed | against | against the single model on all rows (at 0%) |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def span(e, key):
        return f"{e[key]:+.3f} ({e[key + '_min']:+.3f}..{e[key + '_max']:+.3f})" if key in e else ""

    for e in means:
        intervals = " ".join(f"[{lo:+.3f}, {hi:+.3f}]" for lo, hi in e.get("intervals", []))
        lines.append(f"| {e['dataset']} | {e['arm']} | {e['rate']:.0%} | {e['pattern']} | {e[METRIC]:.3f} | "
                     f"{e['ece']:.3f} | {span(e, 'margin')} | {intervals} | {e.get('against', '')} | "
                     f"{span(e, 'margin_all_rows')} |")
    return "\n".join(lines)


def plot(means: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({e["dataset"] for e in means})
    fig, axes = plt.subplots(len(datasets), 3, figsize=(13, 3.6 * len(datasets)), squeeze=False)
    for i, ds in enumerate(datasets):
        pats = sorted({e["pattern"] for e in means if e["dataset"] == ds}, key=lambda p: p != "full")
        for j, pattern in enumerate(pats[:3]):
            ax = axes[i][j]
            for arm in sorted({e["arm"] for e in means if e["dataset"] == ds and e["pattern"] == pattern}):
                pts = sorted((e["rate"], e[METRIC]) for e in means
                             if e["dataset"] == ds and e["arm"] == arm and e["pattern"] == pattern)
                style = "--" if arm.endswith(" only") else "-o"
                if len(pts) == 1:  # a single-modality reference: a line across
                    ax.axhline(pts[0][1], ls="--", color="grey", label=arm)
                else:
                    ax.plot([100 * r for r, _ in pts], [v for _, v in pts], style, label=arm)
            ax.set_title(f"{ds}: test {pattern}")
            ax.set_xlabel("training rows missing a modality (%)")
            ax.set_ylabel("macro AUROC")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="medical,s2s1_scenes")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rates", default="0,0.3,0.6", help="training-time missing rates (0 is needed for the margins)")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"of {', '.join(METHODS)}")
    ap.add_argument("--epochs", type=float, default=10)
    ap.add_argument("--min-steps", type=int, default=60)
    ap.add_argument("--max-steps", type=int, default=250)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--resamples", type=int, default=500)
    ap.add_argument("--site-options", default="", help="JSON generator options per dataset over the defaults, "
                    "e.g. '{\"medical\": {\"studies_per_site\": 800}}'")
    ap.add_argument("--quick", action="store_true", help="smoke run (its figures mean nothing): small sites, 1 seed, "
                    "rates 0 and 0.6, few steps")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="results file (default: bench/results/missing_modality.json, and "
                    "its plot beside it; --quick writes none unless given)")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.rates, args.epochs, args.min_steps, args.max_steps, args.resamples = "0", "0,0.6", 1, 3, 3, 50
    args.site_options = json_options(ap, "--site-options", args.site_options or "{}", per_dataset=True)
    args.rates = [float(r) for r in args.rates.split(",")]
    args.methods = [m for m in args.methods.split(",") if m]
    registry = get_registry()
    torch.set_num_threads(args.threads)
    started, load = dt.datetime.now(dt.timezone.utc), [round(os.getloadavg()[0], 2)]
    print(f"# missing_modality  ({started:%Y-%m-%d %H:%M} UTC, {torch.get_num_threads()} torch thread(s))", flush=True)
    seeds, rows = each_dataset_and_seed(one_seed, registry, args, "missing-")
    means = summary(rows)
    load.append(round(os.getloadavg()[0], 2))
    print(markdown(means))
    out = write_quality("missing_modality", args, started, load, seeds=seeds, rows=rows, summary=means)
    if out is not None:
        print(f"plot: {plot(means, out.with_suffix('.png'))}")


if __name__ == "__main__":
    main()
