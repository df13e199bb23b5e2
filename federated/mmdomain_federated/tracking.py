"""MLflow tracking of ``mmdomain fed run`` and ``mmdomain fed compare`` (``mmdomain.tracking``
does the logging; this module only reads what the server wrote, and imports no Flower).

A federated run folder becomes one MLflow run: the run config (``state.json``'s settings, else
the one given) as params, with ``data-root``, ``init-from`` and ``out-dir`` cut to their last
component; per round (step = round) the round record's numbers (``train-loss``, ``eval-*``,
``epsilon``, ``groups/<group>``, ...), each site's as ``site-<id>/<metric>`` (its local DP-SGD
epsilon as ``site-<id>/local-epsilon``); the final test metrics as ``final/<metric>`` and
``site-<id>/final/<metric>`` (step = rounds); and as artifacts ``summary.json``, the privacy
ledger, ``events.log``, the model (and ``best.safetensors``) and the run config. All of it is
what ``summary.json`` already holds: aggregates per site, no sample's data.

A comparison is one parent run (the summary over seeds, ``compare.json`` and ``compare.md``) with
one nested run per seed (its margins and bootstrap, and its federated run folder as above).

A demo is one parent run (its plan as params; ``summary.md``, ``metrics.json``, ``metrics.csv``
and the plots as artifacts) with one nested run per model of the report (``<dataset>: <model>``,
e.g. ``medical: local fusion``): that model's rows of ``metrics.csv`` as metrics (``<metric>``, or
``<site>/<metric>`` for a per-site row); the federated and private models' nested runs also hold
their run folders as above. The rows about the data (heterogeneity) and the cross-site matrix go to
the parent as ``<dataset>/<model>/<site>/<metric>``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Mapping

from mmdomain.tracking import (Tracker, TrackedRun, TrackingError, flat_numbers, flat_params, metric_key, redact,
                               resolve_uri, tracking)

FED_EXPERIMENT = "mmdomain-fed"
DEMO_EXPERIMENT = "mmdomain-demo"
COMPARE_EXPERIMENT = "mmdomain-fed-compare"
PATH_KEYS = ("data-root", "init-from", "out-dir")  # the run config's local paths: logged as their last component
RUN_ARTIFACTS = ("summary.json", "privacy-ledger.jsonl", "events.log", "model.safetensors", "best.safetensors")
_NOT_METRICS = ("round", "per-site", "local-epsilon", "dropped-sites")  # the step, or per site (below), or text


def run_config(run_dir: Path, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The run's full config as the server checkpointed it (``state.json``), else ``given``."""
    try:
        settings = json.loads((run_dir / "state.json").read_text()).get("settings")
    except (OSError, ValueError):
        settings = None
    return dict(settings) if isinstance(settings, dict) else dict(given or {})


def site_key(site: Any, metric: str) -> str:
    return metric_key(f"site-{site}/{metric}")


def round_series(summary: Mapping[str, Any]) -> list[tuple[str, float, int]]:
    """``summary.json`` as (metric, value, step): each round's record, per site too, then the
    final test metrics at the last round."""
    series: list[tuple[str, float, int]] = []
    last = 0
    for record in summary.get("history") or []:
        step = last = int(record["round"])
        series += [(k, v, step) for k, v in flat_numbers({k: v for k, v in record.items()
                                                           if k not in _NOT_METRICS}).items()]
        for site, metrics in (record.get("per-site") or {}).items():
            series += [(site_key(site, k), v, step) for k, v in flat_numbers(metrics).items()]
        for site, eps in (record.get("local-epsilon") or {}).items():
            if isinstance(eps, (int, float)):
                series.append((site_key(site, "local-epsilon"), float(eps), step))
    final = summary.get("final") or {}
    series += [(k, v, last) for k, v in flat_numbers(final.get("overall") or {}, "final/").items()]
    for site, metrics in (final.get("per_site") or {}).items():
        series += [(site_key(site, k), v, last) for k, v in flat_numbers(metrics, "final/").items()]
    if isinstance(summary.get("best"), Mapping):
        series += [(k, v, last) for k, v in flat_numbers({k: v for k, v in summary["best"].items() if k != "scores"},
                                                         "best/").items()]
    return series


def _read_summary(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except FileNotFoundError:
        raise TrackingError(f"tracking: {run_dir} holds no summary.json (the run did not finish): nothing logged") \
            from None
    except ValueError as exc:
        raise TrackingError(f"tracking: {run_dir / 'summary.json'} is not JSON ({exc})") from None


def _log_folder(t: Tracker, run_id: str, run_dir: Path, summary: Mapping[str, Any],
                config: Mapping[str, Any]) -> None:
    """A federated run folder's params, metrics and artifacts into run ``run_id``."""
    t.params(run_id, flat_params(config, paths=PATH_KEYS))
    t.metrics(run_id, round_series(summary))
    t.artifacts(run_id, [run_dir / name for name in RUN_ARTIFACTS])
    if config:
        t.json(run_id, redact(config, PATH_KEYS), "run-config.json")


def _run_tags(summary: Mapping[str, Any], kind: str) -> dict[str, str]:
    return {"mmdomain.kind": kind, "mmdomain.stopped": str(summary.get("stopped", ""))[:5000],
            "mmdomain.task": str(summary.get("task", "")), "mmdomain.rounds": str(summary.get("rounds", 0))}


def log_fed_run(run_dir: Path, *, uri: str | None = None, experiment: str = FED_EXPERIMENT,
                config: Mapping[str, Any] | None = None, name: str | None = None) -> TrackedRun:
    """Log the federated run folder ``run_dir`` (what the server wrote) as one MLflow run;
    ``config``: the run config when the folder has no ``state.json`` (no round was checkpointed).
    A run that trained no round is logged as failed."""
    run_dir = Path(run_dir)
    summary = _read_summary(run_dir)
    with tracking(resolve_uri(uri, run_dir), experiment, outputs=run_dir) as t:
        run_id = t.start(name or run_dir.name, tags=_run_tags(summary, "fed-run"))
        _log_folder(t, run_id, run_dir, summary, run_config(run_dir, config))
        return t.finish(run_id, "FINISHED" if summary.get("rounds") else "FAILED")


def _seed_series(r: Mapping[str, Any]) -> list[tuple[str, float, int]]:
    """One seed of ``fed compare``, its numbers (step 0): ``federated``, ``local/<site>``,
    ``margin``, ``bootstrap/...`` (the interval as ``interval-low`` / ``interval-high``), the
    cross-site matrix and summary when the result has them."""
    r = dict(r)
    boot = r["bootstrap"] = dict(r.get("bootstrap") or {})
    if isinstance(boot.get("interval"), list) and len(boot["interval"]) == 2:
        boot["interval-low"], boot["interval-high"] = boot.pop("interval")
    return [(k, v, 0) for k, v in flat_numbers({k: v for k, v in r.items() if k != "seed"}).items()]


def log_compare(result: Mapping[str, Any], out: Path, *, uri: str | None = None,
                experiment: str = COMPARE_EXPERIMENT, name: str | None = None) -> TrackedRun:
    """Log a ``fed compare`` result (``compare.run_compare``'s dict; its folder ``out``): a parent
    run with the comparison's settings, wins and margins, ``compare.json`` and ``compare.md``,
    and one nested run per seed (its scores, margin and bootstrap, and its federated run folder
    ``out/seed-<seed>/federated`` when present: per-round metrics, model, summary)."""
    out = Path(out)
    settings = {k: result.get(k) for k in ("dataset", "sites", "rounds", "local_epochs", "engine", "quick")}
    settings["seeds"] = [r["seed"] for r in result.get("runs", [])]
    totals = {k: result.get(k) for k in ("wins", "seeds", "mean_margin", "min_margin", "max_margin")}
    with tracking(resolve_uri(uri, out), experiment, outputs=out) as t:
        parent = t.start(name or f"compare-{result.get('dataset')}", tags={"mmdomain.kind": "fed-compare"})
        t.params(parent, flat_params(settings))
        t.metrics(parent, [(k, v, 0) for k, v in flat_numbers(totals).items()])
        t.artifacts(parent, [out / "compare.json", out / "compare.md"])
        for r in result.get("runs", []):
            seed_dir = out / f"seed-{r['seed']}" / "federated"
            summary = _read_summary(seed_dir) if (seed_dir / "summary.json").is_file() else {}
            child = t.start(f"seed-{r['seed']}", parent=parent, tags=_run_tags(summary, "fed-compare-seed"))
            t.params(child, flat_params({"seed": r["seed"], "metric": r.get("metric"),
                                         "compared": (r.get("bootstrap") or {}).get("compared")}))
            t.metrics(child, _seed_series(r))
            if summary:
                config = {k: v for k, v in run_config(seed_dir).items() if k != "seed"}  # the seed's: above
                _log_folder(t, child, seed_dir, summary, config)
            t.finish(child)
        return t.finish(parent)


def _demo_models(report: Path) -> tuple[dict[tuple[str, str], list[tuple[str, float, int]]],
                                         list[tuple[str, float, int]]]:
    """``metrics.csv``'s numeric rows as (metric, value, 0): grouped by (dataset, model) for the
    models, and those about the data and the cross-site matrix apart."""
    models: dict[tuple[str, str], list[tuple[str, float, int]]] = {}
    overall: list[tuple[str, float, int]] = []
    with (report / "metrics.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            try:
                value = float(row["value"])
            except (TypeError, ValueError):
                continue
            if not math.isfinite(value):
                continue
            if row["model"] == "data" or row["model"].startswith("cross-site "):
                overall.append((metric_key(f"{row['dataset']}/{row['model']}/{row['site']}/{row['metric']}"), value, 0))
                continue
            key = row["metric"] if row["site"] == "all" else f"{row['site']}/{row['metric']}"
            models.setdefault((row["dataset"], row["model"]), []).append((metric_key(key), value, 0))
    return models, overall


def log_demo(out: Path, *, uri: str | None = None, experiment: str = DEMO_EXPERIMENT,
             name: str | None = None) -> TrackedRun:
    """Log a finished ``mmdomain demo`` (its folder ``out``: ``report/`` and ``runs/``): a parent
    run with the plan and the report's files, one nested run per model of the report."""
    out = Path(out)
    report = out / "report"
    try:
        plan = json.loads((report / "metrics.json").read_text()).get("plan", {})
    except (OSError, ValueError) as exc:
        raise TrackingError(f"tracking: {report / 'metrics.json'} cannot be read ({exc}): nothing logged") from None
    models, overall = _demo_models(report)
    with tracking(resolve_uri(uri, out), experiment, outputs=out) as t:
        parent = t.start(name or "demo", tags={"mmdomain.kind": "demo"})
        t.params(parent, flat_params(plan))
        t.metrics(parent, overall)
        t.artifacts(parent, [report / n for n in ("summary.md", "metrics.json", "metrics.csv")]
                    + sorted(report.glob("*.png")))
        for (dataset, model), series in models.items():
            child = t.start(f"{dataset}: {model}", parent=parent,
                            tags={"mmdomain.kind": "demo-model", "mmdomain.dataset": dataset, "mmdomain.model": model})
            t.metrics(child, series)
            folder = out / "runs" / dataset / ("federated" if model == "federated fusion" else "private")
            if model.startswith("federated fusion") and (folder / "summary.json").is_file():
                summary = _read_summary(folder)
                _log_folder(t, child, folder, summary, run_config(folder))
            t.finish(child)
        return t.finish(parent)
