"""Cross-site evaluation: every model of a run scored on every site's own test set and on the
pooled test set of all sites (issue #16 item 1).

Rows are named models (``local site-<i>``: site i's local-only fusion model, ``global``: the
federated model; a personalised model is one more name), columns are the sites' test sets and
``pooled``. Each cell is ``task.evaluate_site``'s overall metrics and per-availability-pattern
metrics; per model (and per pattern) the worst site with its score, the spread (max - min over
the sites) and the mean over the sites, in the run's main metric. ``CrossSite.add`` evaluates a
model once on each site's test set as it comes (no model is kept), reusing a pooled-test result
the caller already has; ``cross_site`` does it for a dict of name -> model.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Mapping

from torch.utils.data import ConcatDataset, Dataset

from mmdomain.errors import ConfigError, DataError

from . import task
from .settings import Settings

POOLED = "pooled"
LOCAL_PREFIX = "local "
GLOBAL = "global"
PERSONAL_PREFIX = "personalised "


def main_metric(metrics: dict[str, float]) -> str:
    """The metric a run is judged by: the first of macro AUROC, accuracy, mIoU, recall@1 it has."""
    for key in ("macro_auroc", "accuracy", "miou", "recall@1"):
        if key in metrics:
            return key
    return next(iter(metrics), "loss")


def personal_name(method: str) -> str:
    """The row of the sites' personalised models: ``personalised (finetune)``."""
    return f"{PERSONAL_PREFIX}({method})"


def local_name(site: str) -> str:
    """The row of ``site``'s local-only fusion model: ``local site-0``."""
    return LOCAL_PREFIX + site


class CrossSite:
    """The cells of a site x model matrix, filled one model at a time."""

    def __init__(self, tests: Mapping[str, Dataset], settings: Settings):
        if POOLED in tests:
            raise ConfigError(f"a site may not be named {POOLED!r} (the pooled test set's column)")
        self.tests, self.settings = dict(tests), settings
        self.cells: dict[str, dict[str, dict[str, Any]]] = {}

    def add(self, name: str, model, pooled: dict[str, Any] | None = None) -> None:
        """Score ``model`` on each site's test set; on the pooled one too unless ``pooled``, its
        ``task.evaluate_site`` result there, is given."""
        row = {site: _cell(model, data, self.settings) for site, data in self.tests.items()}
        row[POOLED] = (_cell(model, ConcatDataset(list(self.tests.values())), self.settings) if pooled is None
                       else _keep(pooled))
        self.cells[name] = row

    def add_own(self, name: str, models: Mapping[str, Any]) -> None:
        """A row of per-site models (site -> its personalised model): each scored on its own site's
        test set only; the other cells, and the pooled one, hold no score."""
        row = {site: _cell(models[site], data, self.settings) if site in models else
               {"n": 0, "overall": {}, "by_pattern": {}, "note": "no model of its own"}
               for site, data in self.tests.items()}
        row[POOLED] = {"n": 0, "overall": {}, "by_pattern": {}, "note": "each site's own model: no pooled score"}
        self.cells[name] = row

    def matrix(self, metric: str) -> dict[str, Any]:
        return summarise(self.cells, list(self.tests), metric)


def cross_site(models: Mapping[str, Any], tests: Mapping[str, Dataset], settings: Settings,
               metric: str | None = None) -> dict[str, Any]:
    """The matrix of ``models`` (name -> model) on ``tests`` (site -> its test set) and their
    union; ``metric``: the main metric of the first cell's metrics when None."""
    cross = CrossSite(tests, settings)
    for name, model in models.items():
        cross.add(name, model)
    if metric is None:
        metric = main_metric(next((c["overall"] for row in cross.cells.values() for c in row.values()
                                   if c["overall"]), {}))
    return cross.matrix(metric)


def _cell(model, data: Dataset, settings: Settings) -> dict[str, Any]:
    try:
        return _keep(task.evaluate_site(model, data, settings))
    except DataError as exc:  # e.g. no test row holds any of the model's modalities; no path is kept
        return {"n": 0, "overall": {}, "by_pattern": {}, "note": f"not scored ({type(exc).__name__})"}


def _keep(result: dict[str, Any]) -> dict[str, Any]:
    return {"n": result.get("n"), "overall": result["overall"], "by_pattern": result["by_pattern"]}


def summarise(cells: Mapping[str, Mapping[str, dict[str, Any]]], sites: list[str], metric: str) -> dict[str, Any]:
    """The JSON-able matrix: per model its ``metric`` per column (``scores``, None where undefined),
    ``n`` per column, ``worst_site`` / ``worst`` / ``best`` / ``spread`` / ``mean`` over the sites,
    and ``by_pattern``: the same per availability pattern (cells of fewer than
    ``task.SUPPRESS_BELOW`` rows left out, as for what a site sends)."""
    columns = [*sites, POOLED]
    models = {}
    for name, row in cells.items():
        scores = {c: _score(row[c]["overall"], metric) for c in columns}
        patterns = sorted({p for c in columns for p in row[c]["by_pattern"]})
        by_pattern = {}
        for p in patterns:
            kept = {c: row[c]["by_pattern"][p] for c in columns
                    if row[c]["by_pattern"].get(p, {}).get("n", 0) >= task.SUPPRESS_BELOW}
            if kept:
                pattern_scores = {c: _score(v, metric) for c, v in kept.items()}
                by_pattern[p] = {"scores": pattern_scores, "n": {c: v["n"] for c, v in kept.items()},
                                 **_over_sites(pattern_scores, sites)}
        models[name] = {"scores": scores, "n": {c: row[c]["n"] for c in columns}, **_over_sites(scores, sites),
                        "by_pattern": by_pattern}
        notes = {c: row[c]["note"] for c in columns if "note" in row[c]}
        if notes:
            models[name]["notes"] = notes
    return {"metric": metric, "sites": sites, "columns": columns, "models": models}


def _score(metrics: Mapping[str, Any], metric: str) -> float | None:
    value = metrics.get(metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _over_sites(scores: Mapping[str, float | None], sites: list[str]) -> dict[str, Any]:
    """Worst site (lowest score; the first of a tie), its score, best, spread and mean over the
    sites that have a score (all None when none has; the spread None when only one has)."""
    scored = {s: scores[s] for s in sites if scores.get(s) is not None}
    if not scored:
        return {"worst_site": None, "worst": None, "best": None, "spread": None, "mean": None, "sites_scored": 0}
    worst_site = min(scored, key=scored.get)
    best = max(scored.values())
    return {"worst_site": worst_site, "worst": scored[worst_site], "best": best,
            "spread": best - scored[worst_site] if len(scored) > 1 else None,
            "mean": statistics.fmean(scored.values()), "sites_scored": len(scored)}


def local_vs_global(matrix: dict[str, Any]) -> dict[str, Any]:
    """The local-only models together next to the global one: the local ones' mean worst-site
    score and mean spread (of those scored at two sites or more), and the lowest cell of any of
    them on a site."""
    models = matrix["models"]
    local = {n: m for n, m in models.items() if n.startswith(LOCAL_PREFIX) and m["spread"] is not None}
    out: dict[str, Any] = {"global": {k: models[GLOBAL][k] for k in ("worst_site", "worst", "spread", "mean")}
                           if GLOBAL in models else None, "local_models": len(local)}
    if local:
        name = min(local, key=lambda n: local[n]["worst"])
        out |= {"local_worst_mean": statistics.fmean(m["worst"] for m in local.values()),
                "local_spread_mean": statistics.fmean(m["spread"] for m in local.values()),
                "local_lowest": {"model": name, "site": local[name]["worst_site"], "score": local[name]["worst"]}}
    return out


def personal_vs_global(matrix: dict[str, Any]) -> dict[str, Any] | None:
    """The personalised row against the global one on each site's own test set: per site the
    margin, the personalised row's worst site and score, the global model's worst site and the
    margin there, and at how many sites it is better; None without a personalised row."""
    models = matrix["models"]
    name = next((n for n in models if n.startswith(PERSONAL_PREFIX)), None)
    if name is None or GLOBAL not in models:
        return None
    mine, glob = models[name]["scores"], models[GLOBAL]["scores"]
    margins = {s: mine[s] - glob[s] for s in matrix["sites"] if mine.get(s) is not None and glob.get(s) is not None}
    g_worst = models[GLOBAL]["worst_site"]
    return {"model": name, "margins": margins, "worst_site": models[name]["worst_site"], "worst": models[name]["worst"],
            "global_worst_site": g_worst, "margin_at_global_worst": margins.get(g_worst),
            "better_at": sum(m > 0 for m in margins.values()), "sites": len(margins)}


def describe(matrix: dict[str, Any]) -> str:
    """One line: ``global worst site-1 0.712, spread 0.080; 3 local-only models: worst 0.630 on
    average, spread 0.160 on average, lowest local site-0 on site-2 0.601``."""
    s = local_vs_global(matrix)
    parts = []
    if (g := s["global"]) is not None:
        parts.append(f"global worst {g['worst_site']} {score_text(g['worst'])}, spread {score_text(g['spread'])}")
    if s["local_models"]:
        low = s["local_lowest"]
        parts.append(f"{s['local_models']} local-only models: worst {s['local_worst_mean']:.3f} on average, spread "
                     f"{s['local_spread_mean']:.3f} on average, lowest {low['model']} on {low['site']} "
                     f"{low['score']:.3f}")
    if (p := personal_vs_global(matrix)) is not None and p["sites"]:
        at = p["margin_at_global_worst"]
        parts.append(f"{p['model']}: worst {p['worst_site']} {score_text(p['worst'])}, "
                     + (f"{at:+.3f} at the global model's worst site, " if at is not None else "")
                     + f"better than global at {p['better_at']} of {p['sites']} sites")
    return "; ".join(parts) or "no model scored on any site"


def score_text(value: float | None) -> str:
    """``0.712``, or ``-`` for a cell without a score."""
    return "-" if value is None else f"{value:.3f}"
