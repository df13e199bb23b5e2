"""The demo's report: metric rows (``metrics.csv``), plots (``comparison.png``, ``rounds.png``,
``cross_site.png``), the Markdown summary (``summary.md``) and ``metrics.json``, written by
``write_report``. The private arm (``results[dataset]["private"]``) is shown with its mode, the
epsilon it spent, delta and its difference to the non-private federated model; the cross-site
matrix (``results[dataset]["cross_site"]``, ``cross_site.summarise``) as tables and a heatmap."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

from mmdomain.jsonout import dumps

from .cross_site import describe as describe_cross_site
from .cross_site import score_text
from .task import SUPPRESS_BELOW


def write_report(results: dict[str, Any], plan: dict[str, Any], out: Path, started: float) -> Path:
    """Every report file under ``out`` (``started``: the demo's ``time.perf_counter()`` start);
    the Markdown summary's path."""
    out.mkdir(exist_ok=True)
    (out / "metrics.json").write_text(dumps({"plan": plan, "results": results}, indent=1))
    with (out / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["dataset", "model", "site", "metric", "value"])
        writer.writeheader()
        writer.writerows(rows(results))
    plots(results, out)
    (out / "summary.md").write_text(markdown(results, plan, time.perf_counter() - started))
    return out / "summary.md"


def describe(private: dict[str, Any]) -> str:
    """The private arm in words: ``local DP-SGD, epsilon 7.9 at delta 1e-05, frozen pretrained encoders``."""
    mode = "local DP-SGD" if private["mode"] == "local" else "central DP"
    encoders = "frozen pretrained encoders" if private["frozen"]["encoders"] else "every parameter from scratch"
    return f"{mode}, epsilon {private['epsilon']:.1f} at delta {private['delta']:g}, {encoders}"


#: The model pretrained on the public site's labels, scored alone (``mmdomain demo --pretrain supervised``):
#: its name in metrics.csv / MLflow, and in words.
PUBLIC_MODEL = "public model"
PUBLIC_ALONE = "the public model alone (pretrained on the public site's labels, no site's data)"


def private_label(private: dict[str, Any]) -> str:
    return f"federated fusion + {private['mode']} DP"


def rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for dataset, r in results.items():
        metric = r["metric"]
        for variant, per_site in r["local"].items():
            for site, m in per_site.items():
                for k, v in m["overall"].items():
                    rows.append({"dataset": dataset, "model": f"local {variant}", "site": site, "metric": k, "value": v})
        for k, v in r["federated"]["overall"].items():
            rows.append({"dataset": dataset, "model": "federated fusion", "site": "all", "metric": k, "value": v})
        p, label = r["private"], private_label(r["private"])
        for k, v in p["overall"].items():
            rows.append({"dataset": dataset, "model": label, "site": "all", "metric": k, "value": v})
        extra = {"epsilon": p["epsilon"], "epsilon target": p["epsilon_target"], "delta": p["delta"],
                 f"minus federated {metric}": p["minus_federated"]}
        if p.get("versus_federated"):
            extra |= {f"bootstrap interval_low vs federated {metric}": p["versus_federated"]["interval"][0],
                      f"bootstrap interval_high vs federated {metric}": p["versus_federated"]["interval"][1]}
        rows += [{"dataset": dataset, "model": label, "site": "all", "metric": k, "value": v} for k, v in extra.items()]
        rows += [{"dataset": dataset, "model": label, "site": f"node {site}", "metric": "epsilon", "value": e}
                 for site, e in sorted(p["epsilon_per_site"].items())]  # each site's own accountant
        rows += [{"dataset": dataset, "model": PUBLIC_MODEL, "site": "all", "metric": k, "value": v}
                 for k, v in ((p.get("pretrain") or {}).get("public_only") or {}).items()]
        for site, m in (r.get("fusion_vs_single") or {}).items():
            for k, value in (("margin", m["margin"]), ("interval_low", m["interval"][0]),
                             ("interval_high", m["interval"][1])):
                rows.append({"dataset": dataset, "model": "local fusion", "site": site,
                             "metric": f"bootstrap {k} vs best single modality {m['metric']}", "value": value})
        v = r.get("versus_local")
        if v:
            for k, value in (("margin", v["margin"]), ("interval_low", v["interval"][0]),
                             ("interval_high", v["interval"][1]), ("beats_all_share", v["beats_all_share"])):
                rows.append({"dataset": dataset, "model": "federated fusion", "site": "all",
                             "metric": f"bootstrap {k} vs best local {v['metric']}", "value": value})
        if r.get("cross_site"):
            rows += cross_site_rows(dataset, r["cross_site"])
        for site, div in (r.get("heterogeneity") or {}).items():
            rows += [{"dataset": dataset, "model": "data", "site": site, "metric": f"heterogeneity {kind}",
                      "value": value} for kind, value in div.items() if value is not None]
    return rows


def cross_site_rows(dataset: str, matrix: dict[str, Any]) -> list[dict[str, Any]]:
    """The matrix as rows: model ``cross-site <name>``, site = the test set's column (``site-<i>``
    or ``pooled``), the metric overall and per pattern (``<pattern>/<metric>``); per model the worst
    site's score (site = that site), the spread and the mean over the sites (site ``sites``)."""
    metric, rows = matrix["metric"], []

    def add(model: str, site: str, name: str, value: float | None) -> None:
        if value is not None:
            rows.append({"dataset": dataset, "model": f"cross-site {model}", "site": site, "metric": name,
                         "value": value})
    for model, m in matrix["models"].items():
        for column, value in m["scores"].items():
            add(model, column, metric, value)
        for pattern, pm in m["by_pattern"].items():
            for column, value in pm["scores"].items():
                add(model, column, f"{pattern}/{metric}", value)
        if m["worst_site"] is not None:
            add(model, m["worst_site"], f"worst site {metric}", m["worst"])
        add(model, "sites", f"spread {metric}", m["spread"])
        add(model, "sites", f"mean {metric}", m["mean"])
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
    crossed = {dataset: r["cross_site"] for dataset, r in results.items() if r.get("cross_site")}
    if crossed:
        rows = max(len(m["models"]) for m in crossed.values())
        cols = max(len(m["columns"]) for m in crossed.values())
        fig, axes = plt.subplots(1, len(crossed), figsize=((1.3 * cols + 4.5) * len(crossed), 0.6 * rows + 2.0),
                                 squeeze=False)
        for ax, (dataset, matrix) in zip(axes[0], crossed.items()):
            _cross_site(fig, ax, dataset, matrix)
        fig.tight_layout()
        paths.append(out / "cross_site.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def _cross_site(fig, ax, dataset: str, matrix: dict[str, Any]) -> None:
    """Heatmap: models x (each site's own test set, pooled), the score in each cell, the worst
    site's cell framed; each row labelled with its spread over the sites."""
    import matplotlib.patches
    import numpy as np

    names, columns = list(matrix["models"]), matrix["columns"]
    values = np.array([[np.nan if (v := matrix["models"][n]["scores"][c]) is None else v for c in columns]
                       for n in names], dtype=float)
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label=f"test {matrix['metric']}")
    finite = values[np.isfinite(values)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i, n in enumerate(names):
        for j, c in enumerate(columns):
            ax.text(j, i, score_text(None if np.isnan(values[i, j]) else values[i, j]), ha="center", va="center",
                    fontsize=8, color="white" if np.isfinite(values[i, j]) and values[i, j] < middle else "black")
        worst = matrix["models"][n]["worst_site"]
        if worst is not None:
            ax.add_patch(matplotlib.patches.Rectangle((columns.index(worst) - 0.5, i - 0.5), 1, 1, fill=False,
                                                      edgecolor="red", linewidth=2))
    ax.axvline(len(columns) - 1.5, color="white", linewidth=3)  # the sites | pooled
    ax.set_xticks(range(len(columns)), [f"{c}\ntest" for c in columns], fontsize=8)
    ax.set_yticks(range(len(names)), [f"{n}\n(spread {score_text(matrix['models'][n]['spread'])})" for n in names],
                  fontsize=8)
    ax.set_xlabel("test set")
    ax.set_ylabel("model")
    ax.set_title(f"{dataset}: cross-site {matrix['metric']} (red: worst site)")


def _comparison(ax, dataset: str, r: dict[str, Any]) -> None:
    import numpy as np

    metric = r["metric"]
    labels, values, colours = [], [], []
    for variant, per_site in r["local"].items():
        for site, m in per_site.items():
            labels.append(f"{site}\n{variant}")
            values.append(m["overall"].get(metric, np.nan))
            colours.append("tab:gray" if variant != "fusion" else "tab:blue")
    p = r["private"]
    for key, label, c in (("federated", "federated\nfusion", "tab:green"),
                          ("private", f"federated\n+ {p['mode']} DP\n(eps {p['epsilon']:.1f})", "tab:red")):
        labels.append(label)
        values.append(r[key]["overall"].get(metric, np.nan))
        colours.append(c)
    ax.bar(range(len(values)), values, color=colours)
    ax.set_xticks(range(len(values)), labels, rotation=90, fontsize=7)
    ax.set_ylabel(f"pooled test {metric}")
    lo = np.nanmin(values) if np.isfinite(values).any() else 0
    ax.set_ylim(max(0.0, lo - 0.1), 1.0)
    ax.set_title(f"{dataset}: local-only (each site), federated, federated private")


def epsilon_by_round(private: dict[str, Any]) -> list[tuple[int, float]]:
    """``(round, epsilon spent by then)``: the server's (central) or the largest site's (local)."""
    key = "local-epsilon" if private["mode"] == "local" else "epsilon"
    out = []
    for h in private["history"]:
        e = h.get(key)
        if isinstance(e, dict):
            e = max(e.values(), default=None)
        if e is not None:
            out.append((h["round"], float(e)))
    return out


def _rounds(ax, dataset: str, r: dict[str, Any]) -> None:
    import matplotlib.ticker
    import numpy as np

    metric = r["metric"]
    p = r["private"]
    for key, label, c in (("federated", "federated", "tab:green"), ("private", f"+ {p['mode']} DP", "tab:red")):
        hist = r[key]["history"]
        ys = [h.get(f"eval-{metric}", np.nan) for h in hist]
        ax.plot([h["round"] for h in hist], ys, marker="o", color=c, label=f"{label}: val {metric}")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("round (validation of the incoming global model)")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(f"{dataset}: per round")
    eps = epsilon_by_round(p)
    if eps:
        ax2 = ax.twinx()
        ax2.plot(*zip(*eps), ls="--", color="black", label=f"epsilon spent ({p['mode']} DP)")
        ax2.axhline(p["epsilon_target"], ls=":", color="gray", label=f"target {p['epsilon_target']:g}")
        ax2.set_ylabel(f"epsilon at delta={p['delta']:g}")
        ax2.set_ylim(0, max(p["epsilon_target"], max(e for _, e in eps)) * 1.3)
        ax2.legend(loc="lower right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)


def markdown(results: dict[str, Any], plan: dict[str, Any], seconds: float) -> str:
    how = ("on its labels" if plan.get("pretrain", "contrastive") == "supervised"
           else "contrastively (pairs only, no label)")
    encoders = (f"encoders pretrained {how} on a public synthetic site (another seed, {plan['pretrain_epochs']} "
                "epochs) and frozen")
    lines = ["# mmdomain demo report", "",
             f"{plan['sites']} synthetic sites per domain, {plan['rounds']} federated rounds "
             f"({plan['engine']}), fusion head: {plan['fusion'] or 'dataset default'}. Private arm: "
             f"{_mechanism(plan['privacy'])} to a target epsilon of {plan['target_epsilon']:g} at delta "
             f"{plan['target_delta']:g} over the whole training (clip {plan['clip']:g}), {encoders}. "
             f"Took {seconds / 60:.1f} min.", ""]
    for dataset, r in results.items():
        metric = r["metric"]
        lines += [f"## {dataset}", "", f"Pooled test set of all sites ({r['test_samples']} samples), {metric}:", "",
                  "| model | " + " | ".join(r["local"]["fusion"]) + " |",
                  "|---|" + "---|" * len(r["local"]["fusion"])]
        for variant, per_site in r["local"].items():
            lines.append(f"| local-only, {variant} | " + " | ".join(
                f"{m['overall'].get(metric, float('nan')):.3f}" for m in per_site.values()) + " |")
        p = r["private"]
        lines += ["", f"| federated model | {metric} | minus federated | epsilon spent (target) | rounds | stopped |",
                  "|---|---|---|---|---|---|"]
        f = r["federated"]
        lines.append(f"| fusion | {f['overall'].get(metric, float('nan')):.3f} | - | - | {f['rounds']} | "
                     f"{f['stopped']} |")
        mode = "local DP-SGD" if p["mode"] == "local" else "central DP"
        frozen = ", frozen pretrained encoders" if p["frozen"]["encoders"] else ""
        lines.append(f"| fusion, {mode}{frozen} | {p['overall'].get(metric, float('nan')):.3f} | "
                     f"{p['minus_federated']:+.3f} | {p['epsilon']:.2f} ({p['epsilon_target']:g}) at delta "
                     f"{p['delta']:g} | {p['rounds']} | {p['stopped']} |")
        public = (p.get("pretrain") or {}).get("public_only")
        if public:
            value = public.get(metric, float("nan"))
            lines.append(f"| {PUBLIC_ALONE} | {value:.3f} | {value - f['overall'].get(metric, float('nan')):+.3f} "
                         "| - | - | - |")
        lines += ["", *_private_lines(dataset, r)]
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
        lines += _fusion_lines(r.get("fusion_vs_single") or {})
        lines.append("")
        if r.get("cross_site"):
            lines += cross_site_lines(r["cross_site"])
        if r.get("heterogeneity"):
            lines += heterogeneity_lines(r["heterogeneity"])
        lines += ["Availability patterns at each site:", ""]
        for site, rd in r["readiness"].items():
            lines.append(f"- {site}: {rd['samples']} samples, " + ", ".join(f"{p} {c}" for p, c in rd["patterns"].items()))
        lines.append("")
    lines += ["![comparison](comparison.png)", "", "![rounds](rounds.png)", ""]
    if any(r.get("cross_site") for r in results.values()):
        lines += ["![cross-site](cross_site.png)", ""]
    return "\n".join(lines)


def heterogeneity_lines(div: dict[str, dict[str, float | None]]) -> list[str]:
    """How different the sites are (``heterogeneity.divergences``) as a Markdown table."""
    kinds = list(dict.fromkeys(k for row in div.values() for k in row))
    names = {"labels": "labels (JS)", "patterns": "availability patterns (JS)"}
    lines = ["Heterogeneity: each site against the others pooled, from the noised readiness reports (0 = alike, "
             "1 = disjoint; Jensen-Shannon divergence of distributions, Hellinger distance of input statistics):", "",
             "| site | " + " | ".join(names.get(k, f"{k} (Hellinger)") for k in kinds) + " |",
             "|---|" + "---|" * len(kinds)]
    for site, row in div.items():
        lines.append(f"| {site} | " + " | ".join(score_text(row.get(k)) for k in kinds) + " |")
    return lines + [""]


def cross_site_lines(matrix: dict[str, Any]) -> list[str]:
    """The matrix as Markdown: models x (each site's own test set, pooled) with the worst site,
    the spread and the mean over the sites; then the same per availability pattern."""
    metric, columns = matrix["metric"], matrix["columns"]
    lines = [f"Cross-site: each model on every site's own test set and on the pooled one ({metric}); worst "
             "site, spread (max - min) and mean over the sites:", "",
             "| model | " + " | ".join(columns) + " | worst site | spread | mean over sites |",
             "|---|" + "---|" * (len(columns) + 3)]
    for name, m in matrix["models"].items():
        lines.append(f"| {name} | " + " | ".join(score_text(m["scores"][c]) for c in columns)
                     + f" | {_worst(m)} | {score_text(m['spread'])} | "
                     f"{score_text(m['mean'])} |")
    lines += ["", f"{describe_cross_site(matrix)}.", ""]
    patterns = [(name, p, pm) for name, m in matrix["models"].items() for p, pm in m["by_pattern"].items()]
    if patterns:
        lines += [f"Per availability pattern (a cell of fewer than {SUPPRESS_BELOW} rows left out):", "",
                  "| model | pattern | " + " | ".join(columns) + " | worst site | spread |",
                  "|---|---|" + "---|" * (len(columns) + 2)]
        for name, p, pm in patterns:
            lines.append(f"| {name} | {p} | " + " | ".join(score_text(pm["scores"].get(c)) for c in columns)
                         + f" | {_worst(pm)} | {score_text(pm['spread'])} |")
        lines.append("")
    return lines


def _worst(m: dict[str, Any]) -> str:
    return f"{m['worst_site']} {score_text(m['worst'])}" if m["worst_site"] is not None else "-"


def _fusion_lines(margins: dict[str, Any]) -> list[str]:
    """Each site's local fusion model against its best single-modality model (issue #14)."""
    if not margins:
        return []
    some = next(iter(margins.values()))
    wins = sum(m["margin"] >= 0 for m in margins.values())
    lines = ["", f"Local fusion against each site's best single-modality model, on the {some['rows']} pooled test "
             f"rows holding every modality (paired bootstrap, {some['resamples']} resamples, {some['level']:.0%} "
             f"interval): fusion is at least as good at {wins} of {len(margins)} sites.", ""]
    for site, m in margins.items():
        lines.append(f"- {site}: fusion {m['reference']:.3f}, {m['best_single']} {m['others'][m['best_single']]:.3f}: "
                     f"margin {m['margin']:+.3f} [{m['interval'][0]:+.3f}, {m['interval'][1]:+.3f}]")
    return lines


def _mechanism(mode: str) -> str:
    return {"local": "local DP-SGD (record-level: each patient's or patch's record, at every site, against "
                     "everyone outside it, the server included)",
            "central": "central DP (site-level: each whole site's contribution; the server adds the noise)"}[mode]


def _private_lines(dataset: str, r: dict[str, Any]) -> list[str]:
    """The private arm next to the non-private model, its budget per site and what was frozen."""
    metric, p = r["metric"], r["private"]
    fed = r["federated"]["overall"].get(metric, float("nan"))
    lines = [f"{dataset}: federated {metric} {fed:.3f}; private ({describe(p)}) "
             f"{p['overall'].get(metric, float('nan')):.3f}, {p['minus_federated']:+.3f} against the non-private "
             "federated model" + (f" (paired bootstrap {p['versus_federated']['level']:.0%} interval "
                                  f"[{p['versus_federated']['interval'][0]:+.3f}, "
                                  f"{p['versus_federated']['interval'][1]:+.3f}])" if p.get("versus_federated") else "")
             + "."]
    if p["epsilon_per_site"]:
        spent = {f"{e:.2f} (noise multiplier {p['noise_multiplier'].get(s, float('nan')):.2f})"
                 for s, e in p["epsilon_per_site"].items()}
        each = (f"every site {spent.pop()}" if len(spent) == 1 else ", ".join(
            f"node {s} {e:.2f} (noise multiplier {p['noise_multiplier'].get(s, float('nan')):.2f})"
            for s, e in sorted(p["epsilon_per_site"].items())))
        lines.append(f"Epsilon spent, each site on its own accountant (noise planned from its own size): {each}; "
                     "the figure above is the largest.")
    elif p["noise_multiplier"]:
        lines.append(f"Server noise multiplier {next(iter(p['noise_multiplier'].values())):.2f} (planned for the target).")
    local = p["mode"] == "local"
    trained = "fusion and task head" if p["frozen"]["encoders"] else "every parameter"
    batches = (f"Poisson-sampled batches of {p['batch_size']} (expected; at most a site's size)" if local
               else f"batches of {p['batch_size']}")
    clipped = "each record's gradient" if local else "each site's update"
    lines.append(f"Trained privately: {trained}, {batches}, lr {p['lr']:g}, clip {p['clip_norm']:g} ({clipped}).")
    if p["frozen"]["encoders"]:
        pre = p["pretrain"]
        val = ", ".join(f"{k} {v:.3f}" for k, v in pre["val"].items()) or "-"
        same = "unchanged" if p["frozen"]["unchanged"] else "CHANGED"
        how = ("with the whole model on its labels (supervised)" if pre["kind"] == "supervised"
               else f"contrastively on its {pre['pairs']} train pairs")
        lines.append(f"Encoders ({', '.join(p['frozen']['encoders'])}) pretrained on a public site {how} "
                     f"(seed {pre['seed']}, {pre['samples']} train samples, {pre['epochs']} epochs; "
                     f"its validation {val}), frozen: they cost no privacy and never travel; "
                     f"their {p['frozen']['tensors']} tensors "
                     f"are {same} in the final model (SHA-256 {p['frozen']['sha256_final'][:12]}).")
    sent = [(r[key]["history"][0].get("bytes-down"), key) for key in ("federated", "private") if r[key]["history"]]
    if len(sent) == 2 and all(b for b, _ in sent):
        lines.append(f"A round sends the sites {sent[1][0] / 1e3:,.0f} kB of weights in all (the non-private "
                     f"federated model: {sent[0][0] / 1e3:,.0f} kB): the frozen encoders stay where they are.")
    return lines
