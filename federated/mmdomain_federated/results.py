"""Where a run's results are, and what they say, for the researcher on the coordinator.

The ServerApp runs on the coordinator, under the SuperLink, so a run's folder (``summary.json``,
``events.log``, ``model.safetensors``...) is written there. Flower 1.42's ``flwr pull`` needs an
artifact provider that only Flower's enterprise SuperLink has ("ControlServicer initialized
without artifact provider"), so results are read from that folder instead:

- a provisioned coordinator's ``start-superlink.sh`` exports ``MMDOMAIN_RESULTS_DIR=$KIT/results``;
  a run without ``out-dir`` writes ``$MMDOMAIN_RESULTS_DIR/run-<run id>``, and a relative
  ``out-dir`` is taken inside it (without the variable: ``<tmp>/mmdomain-fed/run-<run id>``, a
  relative one from the ServerApp's working folder);
- ``mmdomain fed results [RUN] [--dir DIR] [--copy-to DEST]`` lists the runs there, shows one (how
  it ended, rounds, each site's final metrics by name, refusals, dropped sites) and copies its
  folder for the researcher.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

ENV = "MMDOMAIN_RESULTS_DIR"


def results_dir() -> Path | None:
    value = os.environ.get(ENV)
    return Path(value) if value else None


def run_folder(out_dir: str, run_id: int) -> Path:
    """The folder a run writes: ``out_dir`` (inside ``$MMDOMAIN_RESULTS_DIR`` when relative), or
    ``run-<run_id>`` under it (or under the temporary folder)."""
    base = results_dir()
    if out_dir:
        path = Path(out_dir)
        return base / path if base is not None and not path.is_absolute() else path
    return (base if base is not None else Path(tempfile.gettempdir()) / "mmdomain-fed") / f"run-{run_id}"


def _read_summary(run: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def list_runs(base: Path) -> list[str]:
    """One line per run folder under ``base``, newest first: name, how it ended, rounds, macro AUROC."""
    runs = sorted((p for p in base.iterdir() if (p / "summary.json").exists() or (p / "events.log").exists()),
                  key=lambda p: p.stat().st_mtime, reverse=True) if base.is_dir() else []
    lines = []
    for run in runs:
        summary = _read_summary(run)
        if summary is None:
            lines.append(f"{run.name}: running or interrupted (no summary.json yet)")
            continue
        overall = (summary.get("final") or {}).get("overall") or {}
        auroc = overall.get("macro_auroc")
        lines.append(f"{run.name}: {summary.get('stopped')}, {summary.get('rounds', 0)} round(s)"
                     + (f", macro AUROC {auroc:.3f}" if isinstance(auroc, (int, float)) else ""))
    return lines


def describe_run(run: Path) -> list[str]:
    """How one run ended, for people: rounds, each site's final metrics by name, refusals, files."""
    summary = _read_summary(run)
    if summary is None:
        raise FileNotFoundError(f"{run} has no readable summary.json (still running, or not a run folder)")
    final = summary.get("final") or {}
    lines = [f"run {run.name}: {summary.get('stopped')}, {summary.get('rounds', 0)} round(s)"]
    overall = final.get("overall") or {}
    if overall:
        lines.append("  pooled: " + _metrics(overall))
    for site, metrics in sorted((final.get("per_site") or {}).items()):
        lines.append(f"  site {site}: " + _metrics(metrics))
    for site, reason in sorted((summary.get("refused") or {}).items()):
        lines.append(f"  refused by {site}: {reason}")
    for h in summary.get("history") or []:
        if h.get("dropped-sites"):
            lines.append(f"  round {h.get('round')}: dropped " + ", ".join(
                f"{site} ({why})" for site, why in sorted(h["dropped-sites"].items())))
    lines.append("  files: " + ", ".join(sorted(p.name for p in run.iterdir())))
    return lines


def _metrics(metrics: dict[str, Any]) -> str:
    shown = [(k, v) for k, v in sorted(metrics.items()) if k in ("macro_auroc", "accuracy", "loss", "n", "note")]
    return ", ".join(f"{k} {int(v)}" if k == "n" and isinstance(v, (int, float)) else
                     f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown)


def copy_run(run: Path, dest: Path) -> Path:
    """``run`` copied to ``dest/<run name>`` (refused if that exists)."""
    target = dest / run.name
    if target.exists():
        raise FileExistsError(f"{target} exists; choose another --copy-to folder")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(run, target)
    return target
