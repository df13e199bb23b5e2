"""ClientApp (Message API): records <-> ``task`` calls. Nothing identifying leaves the site:
replies carry weights, counts and aggregate metrics only."""

from __future__ import annotations

import functools
import json
import logging
import time

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from mmdomain.errors import DataError

from . import task
from .policy import load_policy, violations
from .records import arrays_to_numpy, numpy_to_arrays

app = ClientApp()
EVAL_ERRORS = (DataError, IndexError, ValueError, RuntimeError)  # metric failures on tiny splits
log = logging.getLogger("mmdomain.federated.site")


class SiteError(RuntimeError):
    """What the server sees when a site fails: the exception type only. Messages of data errors
    name files, and file paths at a hospital can carry patient identifiers; the full message
    stays in the site's own log."""


def _contained(handler):
    @functools.wraps(handler)
    def wrapper(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except Exception as exc:  # noqa: BLE001 - nothing but the type may leave the site
            log.exception("site %s: %s failed", context.node_id, handler.__name__)
            raise SiteError(f"{handler.__name__} failed at the site with {type(exc).__name__} "
                            "(details in the site's log)") from None
    return wrapper


def _registry():
    from mmdomain.plugins import get_registry
    return get_registry()


def _setup(msg: Message, context: Context):
    settings = task.Settings.from_run_config(context.run_config)
    registry = _registry()
    node_config = dict(context.node_config)
    problems = violations(load_policy(node_config.get("policy-file")), settings, registry)
    return settings, registry, node_config, problems


def _refusal(msg: Message, problems: list[str]) -> Message:
    reason = "site policy refuses this job: " + "; ".join(problems)
    return Message(RecordDict({"site": ConfigRecord({"refused": reason})}), reply_to=msg)


@app.train()
@_contained
def train(msg: Message, context: Context) -> Message:
    t0 = time.perf_counter()
    settings, registry, node_config, problems = _setup(msg, context)
    if problems:
        return _refusal(msg, problems)
    cfg = msg.content["config"]
    model = task.build(settings, registry)
    task.set_weights(model, arrays_to_numpy(msg.content["arrays"]))
    data = task.load_site(settings, node_config, registry, "train")
    mod_counts, _ = task.counts(data, model.modalities)
    metrics: dict = {}
    if cfg.get("fused-eval", False):  # evaluate the incoming global model: one message per round
        try:
            metrics.update(task.flat_metrics(task.evaluate_site(model, task.load_site(
                settings, node_config, registry, "val"), settings), prefix="eval-"))
        except EVAL_ERRORS:  # e.g. an empty or tiny validation split: train anyway
            metrics["eval-skipped"] = 1
    rnd = int(cfg.get("server-round", 0))
    stats = task.train_site(model, data, settings, seed=settings.seed * 1000 + rnd + 7919 * int(context.node_id % 997))
    groups = task.trained_groups(mod_counts, len(data))
    weights = task.get_weights(model, groups)
    if settings.compress == "bf16":
        weights = {k: task.bf16_encode(v) for k, v in weights.items()}
    metrics.update({k: v for k, v in stats.items() if isinstance(v, (int, float))})
    metrics["num-examples"] = len(data)
    metrics["site-seconds"] = time.perf_counter() - t0  # local compute, for overhead figures
    metrics.update({f"count/{m}": c for m, c in mod_counts.items()})
    return Message(RecordDict({"arrays": numpy_to_arrays(weights), "metrics": MetricRecord(metrics),
                               "site": ConfigRecord({"modalities": json.dumps(sorted(m for m, c in mod_counts.items()
                                                                                     if c > 0)),
                                                     "compress": settings.compress})}), reply_to=msg)


@app.evaluate()
@_contained
def evaluate(msg: Message, context: Context) -> Message:
    t0 = time.perf_counter()
    settings, registry, node_config, problems = _setup(msg, context)
    if problems:
        return _refusal(msg, problems)
    model = task.build(settings, registry)
    task.set_weights(model, arrays_to_numpy(msg.content["arrays"]))
    split = str(msg.content["config"].get("split", "test"))
    try:
        result = task.evaluate_site(model, task.load_site(settings, node_config, registry, split), settings)
    except EVAL_ERRORS as exc:  # the type leaves the site; the message (it may name files) stays in its log
        log.warning("site %s: evaluation skipped: %s", context.node_id, exc)
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 0}),
                                   "site": ConfigRecord({"eval-error": type(exc).__name__})}),
                       reply_to=msg)
    metrics = task.flat_metrics(result)
    metrics["num-examples"] = int(result["n"])
    metrics["site-seconds"] = time.perf_counter() - t0
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


@app.query()
@_contained
def query(msg: Message, context: Context) -> Message:
    """Readiness report: noised counts per modality / availability pattern + describe stats."""
    settings, registry, node_config, problems = _setup(msg, context)
    if problems:
        return _refusal(msg, problems)
    report = task.readiness(settings, node_config, registry)
    return Message(RecordDict({"site": ConfigRecord({"readiness": json.dumps(report)})}), reply_to=msg)
