"""The demo's report: metric rows (``metrics.csv``), plots (``comparison.png``, ``rounds.png``),
the Markdown summary (``summary.md``) and ``metrics.json``, written by ``write_report``."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any


def write_report(results: dict[str, Any], plan: dict[str, Any], out: Path, started: float) -> Path:
    """Every report file under ``out`` (``started``: the demo's ``time.perf_counter()`` start);
    the Markdown summary's path."""
    out.mkdir(exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"plan": plan, "results": results}, indent=1, default=str))
    with (out / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["dataset", "model", "site", "metric", "value"])
        writer.writeheader()
        writer.writerows(rows(results))
    plots(results, out)
    (out / "summary.md").write_text(markdown(results, plan, time.perf_counter() - started))
    return out / "summary.md"


def rows(results: dict[str, Any]) -> list[dict[str, Any]]:
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


def plots(results: dict[str, Any], out: Path) -> list[Path]:
    """``comparison.png`` (pooled test metric of every model) and ``rounds.png`` (per round)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name, draw, height in (("comparison.png", _comparison, 4.8), ("rounds.png", _rounds, 4.2)):
        fig, axes = plt.subplots(1, len(results), figsize=(7.5 * len(results), height), squeeze=False)
        for ax, (dataset, r) in zip(axes[0], results.items()):
            draw(ax, dataset, r)
        fig.tight_layout()
        paths.append(out / name)
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def _comparison(ax, dataset: str, r: dict[str, Any]) -> None:
    import numpy as np

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


def _rounds(ax, dataset: str, r: dict[str, Any]) -> None:
    import matplotlib.ticker
    import numpy as np

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


def markdown(results: dict[str, Any], plan: dict[str, Any], seconds: float) -> str:
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
