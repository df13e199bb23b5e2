"""ClientApp (Message API): records <-> ``task`` calls (train, evaluate, the readiness query).
Nothing identifying leaves the site: replies carry weights, counts and aggregate metrics only."""

from __future__ import annotations

import functools
import json
import logging
import time

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from mmdomain.errors import ConfigError

from . import personal, task
from .groups import FUSION_FROM_MULTI, held, trained_groups
from mmdomain.jsonout import dumps
from .policy import PolicyFileError, load_policy, planned_noise_violations, violations
from .readiness import readiness
from .records import arrays_to_numpy, compress, numpy_to_arrays
from .secure import SECAGG_CONFIGS
from .settings import Settings

app = ClientApp()
log = logging.getLogger("mmdomain.federated.site")


class PolicyRefusal(RuntimeError):
    """The site's policy refuses the job; the message names only policy settings."""

    def __init__(self, problems: list[str]):
        super().__init__(_reason(problems))
        self.problems = problems


class SiteError(RuntimeError):
    """What the server sees when a site fails: the exception type only. Messages of data errors
    name files, and file paths at a hospital can carry patient identifiers; the full message
    stays in the site's own log."""


def _contained(handler):
    @functools.wraps(handler)
    def wrapper(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except PolicyRefusal as exc:
            raise SiteError(str(exc)) from None
        except PolicyFileError as exc:  # the site's own file, not the job: its problems, never its path
            log.error("site %s: %s", context.node_id, exc)
            raise SiteError("site policy file invalid: " + "; ".join(exc.problems)
                            + " (the site must fix its policy file; its log names the file)") from None
        except SiteError:  # written to leave the site (no path, no identifier)
            raise
        except Exception as exc:  # noqa: BLE001 - nothing but the type may leave the site
            log.exception("site %s: %s failed", context.node_id, handler.__name__)
            raise SiteError(f"{handler.__name__} failed at the site with {type(exc).__name__} "
                            "(details in the site's log)") from None
    return wrapper


def _registry():
    from mmdomain.plugins import get_registry
    return get_registry()


def _setup(msg: Message, context: Context):
    """The job's settings, the registry, this site's node config and what in the job its policy
    refuses (empty: acceptable). A refusal is written to the site's log here, with its reasons."""
    settings = Settings.from_run_config(context.run_config)
    registry = _registry()
    node_config = dict(context.node_config)
    problems = violations(load_policy(node_config.get("policy-file")), settings, registry)
    if problems:
        log.warning("site %s: refused the %s message of run %s: %s", context.node_id, msg.metadata.message_type,
                    context.run_id, _reason(problems))
    return settings, registry, node_config, problems


def _reason(problems: list[str]) -> str:
    """What a refusal says (to the server and in the site's log): the policy settings only."""
    return "site policy refuses this job: " + "; ".join(problems)


def _refusal(msg: Message, problems: list[str]) -> Message:
    return Message(RecordDict({"site": ConfigRecord({"refused": _reason(problems)})}), reply_to=msg)


def _site_index(node_config, node_id: int) -> int:
    """The number a site's training seeds derive from. Simulation: the partition id, so a run
    repeats exactly whatever ids Flower gives the nodes."""
    return int(node_config["partition-id"]) if "partition-id" in node_config else node_id % 997


def _train_locally(cfg, settings, registry, node_config, global_w, node_id: int, model=None, state=None):
    """The site's round: optional fused evaluation of the incoming model, local training.
    Returns the trained model, its modality counts, its sample count and aggregate metrics.
    ``state``: the site's context state, where personalisation keeps what stays at the site
    (``personal``); with it, the kept arrays replace the global ones before the round and are
    stored again after it."""
    t0 = time.perf_counter()
    model = model if model is not None else task.build(settings, registry)
    expected = str(cfg.get("frozen-sha256", ""))
    if expected and task.frozen_digest(model) != expected:
        raise SiteError("the frozen parts of this site's model differ from the server's (frozen-sha256): every "
                        "participant must start from the same init-from checkpoint and seed")
    task.set_weights(model, global_w)
    kept = personal.local_keys(model, settings.personalise) if state is not None else frozenset()
    if kept:
        personal.restore(model, state)
    data = task.load_site(settings, node_config, registry, "train")
    mod_counts, n = task.training_counts(model, data)  # contrastive: the rows holding both modalities
    if settings.local_dp and settings.target_epsilon > 0 and n > 0:  # the noise exists only now: check it
        from .local_dp import site_noise

        noise = site_noise(settings, len(data), settings.train_batch_size(len(data)))
        problems = planned_noise_violations(load_policy(node_config.get("policy-file")), noise,
                                            settings.target_epsilon)
        if problems:
            log.warning("site %s: refused round %s: %s", node_id, cfg.get("server-round", "?"),
                        _reason(problems))
            raise PolicyRefusal(problems)
    metrics: dict = {}
    if cfg.get("fused-eval", False):  # evaluate the incoming global model: one message per round
        try:
            metrics.update(task.flat_metrics(task.evaluate_site(model, task.load_site(
                settings, node_config, registry, "val"), settings), prefix="eval-"))
        except task.EVAL_ERRORS:  # e.g. an empty or tiny validation split: train anyway
            metrics["eval-skipped"] = 1
    rnd = int(cfg.get("server-round", 0))
    site = _site_index(node_config, node_id)
    if n > 0:  # a contrastive site without one pair has nothing to learn from (and sends nothing)
        stats = task.train_site(model, data, settings, seed=settings.seed * 1000 + rnd + 7919 * site,
                                server_round=max(rnd, 1))
        metrics.update({k: v for k, v in stats.items() if isinstance(v, (int, float))})
        personal.keep(model, kept, state)
        if settings.personalise == "ditto" and state is not None:
            metrics.update(personal.ditto(global_w, settings, registry, data, state,
                                          seed=settings.seed * 1000 + rnd + 7919 * site + 1))
    metrics["num-examples"] = n
    metrics["site-seconds"] = time.perf_counter() - t0  # local compute, for overhead figures
    return model, mod_counts, n, metrics


def _train_secure(msg: Message, context: Context, settings, registry, node_config) -> Message:
    """A train message inside SecAgg+ (``secaggplus_mod`` called us at its masking stage):
    legacy FitIns in, legacy FitRes out; the mod masks the vector before it leaves."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    from .secure import Layout, encode, group_weights

    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    cfg = dict(fitins.config)
    model = task.build(settings, registry)
    layout = Layout.of(task.get_weights(model))
    global_w = layout.from_list(parameters_to_ndarrays(fitins.parameters))
    model, mod_counts, n, metrics = _train_locally(cfg, settings, registry, node_config, global_w, context.node_id,
                                                   model, state=context.state)
    weights = group_weights(mod_counts, n, fusion_from=str(cfg.get("fusion-from", FUSION_FROM_MULTI)),
                            plain=settings.aggregation == "plain", dp=settings.central_dp,
                            scale=settings.secagg_weight_scale)
    if weights and max(weights.values()) > settings.secagg_clip_range:
        raise ConfigError(f"secagg-weight-scale {settings.secagg_weight_scale:g} is too small for this site's "
                          f"sample counts: weights must stay within secagg-clip-range {settings.secagg_clip_range:g}")
    vector = encode(layout, global_w, task.get_weights(model), weights,
                    clip=settings.clip_norm if settings.central_dp else 0.0)
    res = FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters(vector), 1, metrics)  # equal weight: counts are inside
    return Message(compat.fitres_to_recorddict(res, keep_input=False), reply_to=msg)


def _secagg_when_asked(msg: Message, context: Context, call_next) -> Message:
    """Flower's ``secaggplus_mod`` for train messages of a SecAgg+ round; others pass through."""
    if SECAGG_CONFIGS in msg.content.config_records:
        from flwr.client.mod import secaggplus_mod
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


@app.train(mods=[_secagg_when_asked])
@_contained
def train(msg: Message, context: Context) -> Message:
    settings, registry, node_config, problems = _setup(msg, context)
    if SECAGG_CONFIGS in msg.content.config_records:
        if problems:
            raise PolicyRefusal(problems)
        return _train_secure(msg, context, settings, registry, node_config)
    if problems:
        return _refusal(msg, problems)
    cfg = msg.content["config"]
    try:
        model, mod_counts, n, metrics = _train_locally(cfg, settings, registry, node_config,
                                                       arrays_to_numpy(msg.content["arrays"]), context.node_id,
                                                       state=context.state)
    except PolicyRefusal as exc:  # the noise a target epsilon plans on this site's data
        return _refusal(msg, exc.problems)
    kept = personal.local_keys(model, settings.personalise)  # they never leave the site
    weights = {k: v for k, v in task.get_weights(model, trained_groups(mod_counts, n)).items() if k not in kept}
    weights = compress(weights, settings.compress)
    metrics.update({f"count/{m}": c for m, c in mod_counts.items()})
    site = ConfigRecord({"modalities": json.dumps(sorted(held(mod_counts))), "compress": settings.compress})
    return Message(RecordDict({"arrays": numpy_to_arrays(weights), "metrics": MetricRecord(metrics), "site": site}),
                   reply_to=msg)


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
    extra: dict = {}
    try:
        if msg.content["config"].get("personalised", False) and settings.personalise:
            extra = _personalise(model, settings, registry, node_config, context)
        data = task.load_site(settings, node_config, registry, split)
        if len(data) == 0:  # said as such: the server lists the site with 0 rows, not as a failure
            log.warning("site %s: the %s split is empty: nothing to evaluate", context.node_id, split)
            return Message(RecordDict({"metrics": MetricRecord({"num-examples": 0}),
                                       "site": ConfigRecord({"eval-empty": True})}), reply_to=msg)
        result = task.evaluate_site(model, data, settings)
    except task.EVAL_ERRORS as exc:  # the type leaves the site; the message (it may name files) stays in its log
        log.warning("site %s: evaluation skipped: %s", context.node_id, exc)
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 0}),
                                   "site": ConfigRecord({"eval-error": type(exc).__name__})}),
                       reply_to=msg)
    metrics = task.flat_metrics(result)
    metrics.update(extra)
    metrics["num-examples"] = int(result["n"])
    metrics["site-seconds"] = time.perf_counter() - t0
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def _personalise(model, settings, registry, node_config, context: Context) -> dict:
    """This site's personalised model from the global one in ``model`` (``personal.personalised``),
    written to the site's ``personal-dir`` when its node config names one; numbers of what was done."""
    site = _site_index(node_config, context.node_id)
    train_data = task.load_site(settings, node_config, registry, "train") if settings.personalise == "finetune" \
        else None
    val_data = task.load_site(settings, node_config, registry, "val") \
        if settings.personalise == "finetune" and settings.finetune_select == "val-loss" else None
    done = personal.personalised(model, settings, context.state, train_data, seed=settings.seed * 1000 + 7 + site,
                                 val_data=val_data)
    if node_config.get("personal-dir"):
        path = personal.save(model, str(node_config["personal-dir"]), context.run_id, registry)
        log.info("site %s: personalised model (%s) written to %s", context.node_id, settings.personalise, path)
    return done


@app.query()
@_contained
def query(msg: Message, context: Context) -> Message:
    """Readiness report: noised counts per modality / availability pattern + describe stats."""
    settings, registry, node_config, problems = _setup(msg, context)
    if problems:
        return _refusal(msg, problems)
    report = readiness(settings, node_config, registry)
    return Message(RecordDict({"site": ConfigRecord({"readiness": dumps(report)})}), reply_to=msg)
