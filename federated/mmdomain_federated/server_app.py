"""ServerApp (Message API): the federated run, from the sites' readiness to the final model.

``main`` reads the run config and calls ``run_server``: wait for the sites, start or resume
the run (``run_state``: checkpoint, accountant, ledger), the readiness report, the training
rounds (``rounds.train_round``: Flower's FedAvg / FedProx sampling with modality-aware
aggregation, ``strategy``, and a server optimiser, ``server_opt``; SecAgg+ rounds, ``secure``), a
checkpoint per round, with ``checkpoint-metric`` the best model so far (``best.safetensors``,
``best_model``) and early stopping, the final federated evaluation, the model and
``summary.json``. Events go to ``server_log``.
"""

from __future__ import annotations

import json
import math
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from mmdomain.checkpoint import describe_init, read_header, save_checkpoint
from mmdomain.plugins import get_registry

from . import personal, task
from .aggregation import declared_caps
from .best_model import BestModel, metric_value, scored_round
from .cross_site import main_metric
from .groups import FUSION_FROM_MULTI, fusion_from
from mmdomain.jsonout import dumps, write
from .heterogeneity import describe as describe_heterogeneity
from .heterogeneity import divergences
from .readiness import held_modalities
from .rounds import (RoundResult, evaluate_round, local_epsilon, local_ledger_rows, readiness_round, round_record,
                     train_round, wait_for_nodes)
from .run_state import RunState
from .server_log import ServerLog, metrics_brief
from .site_names import SiteNames
from .results import run_folder
from .settings import Settings
from .strategy import ModalityAware, make_strategy, site_seconds

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = Settings.from_run_config(context.run_config)
    run_server(grid, settings, run_folder(settings.out_dir, context.run_id))


def run_server(grid: Grid, settings: Settings, out_dir: Path, *, registry=None,
               log: Callable[[str], None] | None = None, echo: bool = True,
               names: SiteNames | None = None) -> dict[str, Any]:
    """The whole federated run; returns (and writes ``summary.json``) what happened. Events go to
    ``events.log``, to ``log`` and, with ``echo``, to stdout. Sites are named by ``names``, else
    by the file ``$MMDOMAIN_SITE_NAMES`` points at, else by node id."""
    registry = registry or get_registry()
    names = names if names is not None else SiteNames.from_env(log or print)
    with ServerLog(out_dir, echo=echo, callback=log, names=names) as slog:
        model, init = task.build_with_report(settings, registry)
        if init:  # what every participant's start took from init-from (the sites build the same)
            write(out_dir / "init-report.json", init)
            slog(f"initialised from {settings.init_from}: " + "; ".join(describe_init(init).splitlines()))
        strategy = make_strategy(settings, buffers=[k for k, _ in model.named_buffers()])
        strategy.site_local = personal.local_keys(model, settings.personalise)
        nodes = wait_for_nodes(grid, max(settings.expected_sites, settings.min_sites), settings.round_timeout, slog)
        if settings.evaluate_only:
            return _evaluate_only(grid, model, strategy, settings, out_dir, slog)
        run = RunState.open(settings, out_dir, task.get_weights(model), max(len(nodes), settings.min_sites), slog,
                            server_opt=strategy.server_opt, best=BestModel.from_settings(settings))
        save_best = partial(_save_best, model, run, registry, slog)
        if run.best is not None and run.best_weights is not None and _best_file_round(out_dir) != run.best.round:
            save_best()  # a crash between the checkpoint and best.safetensors: written again from the checkpoint
        report = _readiness(grid, nodes, run, slog)
        strategy.caps = declared_caps(report, settings.max_site_samples, tuple(model.modalities))
        source = fusion_from(held_modalities(report)) if report else FUSION_FROM_MULTI
        stopped, crashed = _train(grid, run, strategy, len(nodes), source, slog, task.frozen_digest(model), save_best)
        if crashed:
            return {"stopped": stopped, "history": run.history, "out_dir": str(out_dir)}
        _score_last(grid, strategy, run, slog, save_best)
        final = evaluate_round(grid, strategy, run.weights, settings, run.refused, settings.num_server_rounds + 1,
                               "test", log=slog, rejections=run.rejections) if run.history else {}
        mine = _personalised(grid, strategy, run, final, slog) if run.history and settings.personalise else None
        return _finish(model, run, final, stopped, registry, slog, mine)


def _personalised(grid: Grid, strategy: ModalityAware, run: RunState, final: dict[str, Any],
                  log: ServerLog) -> dict[str, Any]:
    """Each site's personalised model (``personal``) on its own test split, next to the global model's
    score there; the models stay at the sites, only these metrics come back."""
    s = run.settings
    mine = evaluate_round(grid, strategy, run.weights, s, run.refused, s.num_server_rounds + 1, "test", log=log,
                          rejections=run.rejections, personalised=True)
    metric = main_metric(mine.get("overall", {}))
    for site, m in mine.get("per_site", {}).items():
        if metric in m:
            was = final.get("per_site", {}).get(site, {}).get(metric)
            log(f"personalised ({s.personalise}) site {site}: own test {metric} {m[metric]:.3f}"
                + (f" (global {was:.3f}, {m[metric] - was:+.3f})" if isinstance(was, (int, float)) else ""))
    return {"method": s.personalise, **mine}


def _evaluate_only(grid: Grid, model, strategy: ModalityAware, settings: Settings, out_dir: Path,
                   log: ServerLog) -> dict[str, Any]:
    """``evaluate-only`` (``mmdomain fed evaluate``): the init-from checkpoint's model, which every
    participant rebuilt from the file itself, sent to every site to score its ``evaluate-split``;
    nothing trained, no model written, no privacy spent (only metrics come back)."""
    from mmdomain.models.weights import sha256_of

    log(f"evaluate-only: {Path(settings.init_from).name} on every site's {settings.evaluate_split} split")
    refused: dict[int, str] = {}
    rejections: list[dict[str, Any]] = []
    final = evaluate_round(grid, strategy, task.get_weights(model), settings, refused, 1, settings.evaluate_split,
                           log=log, rejections=rejections)
    digest = sha256_of(settings.init_from)
    summary = {"stopped": "evaluate-only", "task": model.config.task.name, "rounds": 0, "model": None,
               "evaluated": {"checkpoint": Path(settings.init_from).name, "sha256": digest,
                             "split": settings.evaluate_split},
               "history": [], "final": final, "rejections": rejections,
               "refused": {str(k): v for k, v in refused.items()}, "epsilon": None, "local-epsilon": {},
               "out_dir": str(out_dir)}
    summary = log.names.summary(summary)
    write(out_dir / "summary.json", summary)
    log(f"finished (evaluate-only); {settings.evaluate_split} metrics {dumps(final.get('overall', {}))}; out {out_dir}",
        f"finished (evaluate-only): {settings.evaluate_split} {metrics_brief(final.get('overall', {}))}; out {out_dir}")
    return summary


def _readiness(grid: Grid, nodes: list[int], run: RunState, log: ServerLog) -> dict[str, Any]:
    """The sites' readiness reports (``readiness.json``); after a restart, those of the first start."""
    path = run.out_dir / "readiness.json"
    if run.settings.readiness and not run.resumed:
        report = readiness_round(grid, nodes, run.settings, run.refused, log, run.rejections)
        write(path, report)
        log.readiness(report)
        if len(report) > 1:  # how different the sites are, from their noised reports
            div = divergences(report)
            write(run.out_dir / "heterogeneity.json", div)
            log("heterogeneity, each site against the others (JS divergence 0-1, Hellinger distance 0-1):")
            for line in describe_heterogeneity(div):
                log("  " + line)
        return report
    return json.loads(path.read_text()) if path.exists() else {}


def _train(grid: Grid, run: RunState, strategy: ModalityAware, num_nodes: int, source: str,
           log: ServerLog, frozen: str, save_best: Callable[[], None]) -> tuple[str, bool]:
    """The rounds left; why they stopped, and whether that was the simulated crash. ``frozen``:
    the digest of the model parts rounds do not carry, for the sites to check; ``save_best``
    writes ``best.safetensors`` (after the checkpoint that holds a new best)."""
    s = run.settings
    for rnd in range(run.start_round, s.num_server_rounds + 1):
        if run.best is not None and run.best.exhausted():  # a resumed run that had stopped early
            return _stop(run.best.stop_reason(), log), False
        if reason := run.budget_stop(rnd):
            return _stop(reason, log), False
        result = train_round(grid, rnd, run.weights, s, strategy, run.refused, source, log, frozen)
        if len(result.targets) < s.min_sites:
            return _stop(f"round {rnd}: only {len(result.targets)} sites available, min-sites is {s.min_sites}",
                         log), False
        _note(result, run, log)
        if len(result.accepted) < s.min_sites:
            kept = f"keeping the model of round {rnd - 1}" if rnd > 1 else "no round trained"
            reason = _stop(f"round {rnd}: {len(result.accepted)} usable updates, min-sites is {s.min_sites}; {kept}",
                           log)
            if dropped := result.dropped:
                reason += "; dropped: " + ", ".join(f"site {site} ({how})" for site, how in dropped.items())
            if result.refused and len(run.refused) > num_nodes - s.min_sites:
                reason += "; refusals: " + " | ".join(f"site {site}: {r}" for site, r in run.refused.items())
            return reason, False
        record, ledger_rows = _record(grid, strategy, result, run, log)
        improved = _score(run, record, rnd, result.weights, log)
        run.commit(rnd, result.weights, record, ledger_rows)
        log.round(record, s.num_server_rounds)
        if improved:
            save_best()
        if s.stop_after_round and rnd == s.stop_after_round and rnd < s.num_server_rounds:
            return _stop(f"stop-after-round {rnd} (simulated crash)", log), True
        if run.best is not None and run.best.exhausted() and rnd < s.num_server_rounds:
            return _stop(run.best.stop_reason(), log), False
    return "completed", False


def _score(run: RunState, record: dict[str, Any], rnd: int, new_weights: dict[str, np.ndarray],
           log: ServerLog) -> bool:
    """Offer the model round ``rnd``'s validation metrics belong to (``best_model.scored_round``:
    with fused evaluation the one the round started from) as the best; whether it is."""
    if run.best is None:
        return False
    value = metric_value(record, run.best.metric)
    if value is None:
        log(f"round {rnd}: no validation metrics (no site evaluated its val split): best model not updated")
        return False
    fused = run.settings.fused_eval
    model_round = scored_round(rnd, fused)
    return _offer(run, model_round, value, run.weights if fused else new_weights, log)


def _offer(run: RunState, model_round: int, value: float, weights: dict[str, np.ndarray], log: ServerLog) -> bool:
    best = run.best
    if not run.offer_best(model_round, value, weights):
        return False
    initial = " (the initial model)" if model_round == 0 else ""
    log(f"best model: round {model_round}{initial}, {best.metric} {value:.4g}")
    return True


def _score_last(grid: Grid, strategy: ModalityAware, run: RunState, log: ServerLog,
                save_best: Callable[[], None]) -> None:
    """With fused evaluation the last model has not been scored on val (the next round would have):
    one validation round for it when the best model is tracked."""
    if run.best is None or not run.settings.fused_eval or not run.history:
        return
    last = int(run.history[-1]["round"])
    if run.best.last_scored is not None and run.best.last_scored >= last:
        return
    ev = evaluate_round(grid, strategy, run.weights, run.settings, run.refused, last, "val", log=log,
                        rejections=run.rejections)
    value = metric_value({f"eval-{k}": v for k, v in ev["overall"].items()}, run.best.metric)
    if value is None:
        log(f"validation of the model of round {last}: no site evaluated its val split")
        return
    improved = _offer(run, last, value, run.weights, log)
    run.commit_best()
    if improved:
        save_best()


def _best_file_round(out_dir: Path) -> int | None:
    """The round ``best.safetensors`` in ``out_dir`` records, None without one."""
    try:
        return read_header(out_dir / "best.safetensors")["extra"]["federated"]["best"]["round"]
    except Exception:  # noqa: BLE001 - missing or not this app's: written again
        return None


def _save_best(model, run: RunState, registry, log: ServerLog) -> None:
    """``best.safetensors`` (+ ``.json``): the best model, in the final model's format, with its
    round and score (``extra.federated.best``)."""
    best = run.best
    task.set_weights(model, run.best_weights)
    save_checkpoint(model, run.out_dir / "best.safetensors", registry,
                    extra={"federated": {"rounds": best.round, "dataset": run.settings.dataset,
                                         "task": model.config.task.name,
                                         "best": {"round": best.round, "metric": best.metric, "mode": best.mode,
                                                  "value": best.value}}})


def _stop(reason: str, log: ServerLog) -> str:
    log(reason)
    return reason


def _note(result: RoundResult, run: RunState, log: ServerLog) -> None:
    """Log what became of each site this round; remember refusals and rejections."""
    rnd = result.round
    for site, reason in result.refused:
        run.refused[site] = reason
        log(f"site {site} refused: {reason}")
    for site, reason in result.failed:
        log(f"round {rnd}: site {site} failed: {reason}")
    for site in result.timed_out:
        log(f"round {rnd}: site {site} did not answer within {run.settings.round_timeout:g}s")
    for site, reason in result.rejected:
        run.rejections.append({"round": rnd, "site": site, "reason": reason})
        log(f"round {rnd}: rejected update of site {site}: {reason}")
    for site, what in result.capped:
        log(f"round {rnd}: site {site}: {what}")
    for note in result.notes:
        log(f"round {rnd}: {note}")


def _record(grid: Grid, strategy: ModalityAware, result: RoundResult, run: RunState,
            log: ServerLog) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The round's record (with a separate evaluation when it is not fused, the DP release and
    the sites' local epsilons) and its ledger rows."""
    s = run.settings
    record = round_record(result)
    if not s.fused_eval:  # stock Flower shape: a separate evaluate message per round
        ev = evaluate_round(grid, strategy, result.weights, s, run.refused, result.round, "val", log=log,
                            rejections=run.rejections)
        record.update({f"eval-{k}": v for k, v in ev["overall"].items()})
        record["slowest-site-seconds"] += max((site_seconds(m) for m in ev["per_site"].values()),
                                              default=0.0)
    release, ledger_rows = run.spend(result.round, [u.site for u in result.accepted])
    record.update(release)
    if local := local_epsilon(result):
        record["local-epsilon"] = local
        ledger_rows = ledger_rows + local_ledger_rows(result, s)
    record["seconds"] = round(time.perf_counter() - result.started, 3)
    return record, ledger_rows


def _finish(model, run: RunState, final: dict[str, Any], stopped: str, registry, log: ServerLog,
            personalised: dict[str, Any] | None = None) -> dict[str, Any]:
    """The final model (``model.safetensors``, ``final.npz``) and ``summary.json``. A run that
    trained no round writes no model (only its initialisation would be in it): ``model`` is null.
    ``personalised``: the sites' personalised models' own-test metrics (``_personalised``)."""
    out_dir = run.out_dir
    model_file = None
    if run.history:
        task.set_weights(model, run.weights)
        model_file = save_checkpoint(model, out_dir / "model.safetensors", registry,
                                     extra={"federated": {"rounds": len(run.history), "dataset": run.settings.dataset,
                                                          "task": model.config.task.name}}).name
        np.savez(out_dir / "final.npz", **run.weights)
    else:
        stale = [p.name for p in (out_dir / "model.safetensors", out_dir / "final.npz") if p.exists()]
        log("no round was trained: no model written" + (f" ({', '.join(stale)} in {out_dir} are not from this run)"
                                                          if stale else ""))
    best = None
    if run.best is not None:
        best = run.best.summary("best.safetensors" if run.best_weights is not None else None)
    summary = {"stopped": stopped, "task": model.config.task.name, "rounds": len(run.history), "model": model_file,
               "best": best, "history": run.history, "final": final, "personalised": personalised,
               "rejections": run.rejections, "refused": {str(k): v for k, v in run.refused.items()},
               "epsilon": run.epsilon, "local-epsilon": _last_local_epsilon(run.history), "out_dir": str(out_dir)}
    summary = log.names.summary(summary)  # per-site entries by consortium name, when sites were registered so
    write(out_dir / "summary.json", summary)
    overall = final.get("overall", {})
    if bad := sorted(k for k, v in overall.items() if isinstance(v, float) and not math.isfinite(v)):
        log(f"final test metrics not finite (written as null): {', '.join(bad)}")
    log(f"finished ({stopped}); final test metrics {dumps(overall)}; out {out_dir}",
        f"finished ({stopped}): final test {metrics_brief(overall)}; out {out_dir}")
    return summary


def _last_local_epsilon(history: list[dict[str, Any]]) -> dict[str, float] | None:
    """Each site's local DP-SGD epsilon as last reported (what it spent over the whole run)."""
    spent: dict[str, float] = {}
    for record in history:
        spent.update(record.get("local-epsilon", {}))
    return spent or None
