"""The server's message rounds: the readiness query, a training round (in clear or SecAgg+)
returning a typed ``RoundResult``, and evaluation rounds; ``round_record`` turns a result into
the round's metrics (what ``summary.json``'s history holds)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from .aggregation import BadReply, SiteUpdate, cap_shares
from .groups import param_group
from .records import nbytes, numpy_to_arrays
from .settings import Settings
from .strategy import ModalityAware, eval_metrics, numbers, origin, sender, site_info, site_seconds, train_metrics

LOCAL_MECHANISM = "dp-sgd-local-record-level"

Log = Callable[[str], None]


@dataclass
class RoundResult:
    """What one training round did. ``targets`` empty of enough sites: nothing was sent."""

    round: int
    weights: dict[str, np.ndarray]  # the new global model (the old one when nothing was usable)
    targets: list[int]  # the sites the round went to
    answered: set[int] = field(default_factory=set)
    accepted: list[SiteUpdate] = field(default_factory=list)
    rejected: list[tuple[Any, str]] = field(default_factory=list)  # (site, reason): bad reply or failed screening
    capped: list[tuple[Any, str]] = field(default_factory=list)  # (site, what): counts lowered to its caps
    failed: list[tuple[Any, str]] = field(default_factory=list)  # (site, reason): error replies
    refused: list[tuple[int, str]] = field(default_factory=list)  # (site, reason): policy refusals
    used: dict[str, list[Any]] = field(default_factory=dict)  # group -> sites (None under SecAgg+) averaged
    notes: list[str] = field(default_factory=list)  # what the robust aggregation left out (krum)
    bytes_down: int = 0
    bytes_up: int | None = None  # None under SecAgg+: masked vectors travel as protocol records
    secure: bool = False
    max_share: float = 1.0  # the largest share one site has in the round's weighted metrics (max-site-weight)
    started: float = field(default_factory=time.perf_counter)

    @property
    def timed_out(self) -> list[int]:
        """The sites the round went to that sent no reply (within ``round-timeout``; under SecAgg+:
        whose masked vector is not in the sum)."""
        return [n for n in self.targets if n not in self.answered]

    @property
    def dropped(self) -> dict[int, str]:
        """The sites the round went to that gave no update, and how: ``"no answer"`` (timed out or
        gone) or ``"error"`` (an error reply: the site failed). Refusals and rejected updates are
        counted apart. Sites by node id only, never a reason (it could come from a site's data)."""
        errors = {site for site, _ in self.failed}
        return {n: "error" if n in errors else "no answer" for n in sorted(self.targets)
                if n in errors or n not in self.answered}


def wait_for_nodes(grid: Grid, need: int, timeout: float, log: Log) -> list[int]:
    start = time.monotonic()
    while len(nodes := list(grid.get_node_ids())) < need:
        if time.monotonic() - start > timeout:
            break
        time.sleep(1)
    log(f"{len(nodes)} sites connected (need {need})")
    return nodes


def readiness_round(grid: Grid, nodes: list[int], settings: Settings, refused: dict[int, str],
                    log: Log, rejections: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Ask every site for its readiness report; ``{site: report | {"error"} | {"refused"}}``.
    Refusing sites are added to ``refused``; a bad reply (``readiness_report``) is an error entry,
    logged and added to ``rejections`` (round 0)."""
    msgs = [Message(RecordDict({"config": ConfigRecord({})}), message_type=MessageType.QUERY, dst_node_id=n,
                    group_id="readiness") for n in nodes]
    report: dict[str, Any] = {}
    replies = list(grid.send_and_receive(msgs, timeout=settings.round_timeout))
    sent = origin(msgs)
    for reply in replies:
        src = sender(reply, sent)
        if reply.has_error():
            report[str(src)] = {"error": reply.error.reason}
            continue
        site = site_info(reply.content)
        if "refused" in site:
            refused[src] = str(site["refused"])
            report[str(src)] = {"refused": refused[src]}
            log(f"site {src} refused: {refused[src]}")
            continue
        try:
            report[str(src)] = readiness_report(site)
        except BadReply as exc:  # as a failed site: no declared counts, no modalities from it
            report[str(src)] = {"error": f"bad readiness reply: {exc}"}
            log(f"site {src}: bad readiness reply: {exc}")
            if rejections is not None:
                rejections.append({"round": 0, "site": src, "reason": f"bad readiness reply: {exc}"})
    return report


def readiness_report(site) -> dict[str, Any]:
    """A readiness reply's report (``BadReply`` unless it is what ``readiness.readiness`` writes:
    JSON, per split ``n`` and per-modality counts, each a non-negative integer or ``"<5"``)."""
    try:
        report = json.loads(str(site["readiness"]))
    except (KeyError, ValueError):
        raise BadReply("no readiness report, or not JSON") from None
    splits = report.get("splits") if isinstance(report, dict) else None
    if not isinstance(splits, dict):
        raise BadReply("no splits")
    for entry in splits.values():
        if not isinstance(entry, dict):
            raise BadReply("a split that is not an object")
        if "error" in entry:
            continue
        cells = [entry.get("n")] + list((entry.get("modalities") or {}).values()) \
            if isinstance(entry.get("modalities", {}), dict) else [None]
        if not all(_cell(c) for c in cells):
            raise BadReply("a count that is neither a non-negative integer nor suppressed")
        if "profile" in entry:
            _check_profile(entry["profile"])
    return report


MAX_PROFILE_CELLS = 4096  # labels, or channels of one modality


def _check_profile(profile: Any) -> None:
    """A train split's ``profile`` (``heterogeneity.profile``): label counts that are counts, and per
    modality as many finite means as non-negative standard deviations; else ``BadReply``."""
    if not isinstance(profile, dict):
        raise BadReply("a profile that is not an object")
    if "error" in profile:
        return
    labels = profile.get("labels")
    if labels is not None:
        counts = labels.get("counts") if isinstance(labels, dict) else None
        if (labels.get("kind") if isinstance(labels, dict) else None) not in ("multi-label", "classes") or \
                not isinstance(counts, list) or not 0 < len(counts) <= MAX_PROFILE_CELLS or \
                not all(_cell(c) for c in counts):
            raise BadReply("profile labels that are not a kind and a list of counts")
    inputs = profile.get("inputs", {})
    if not isinstance(inputs, dict):
        raise BadReply("profile inputs that are not an object")
    for stats in inputs.values():
        mean, std = (stats.get("mean"), stats.get("std")) if isinstance(stats, dict) else (None, None)
        if not (isinstance(mean, list) and isinstance(std, list) and 0 < len(mean) == len(std) <= MAX_PROFILE_CELLS
                and _cell(stats.get("rows")) and all(_finite(v) for v in mean)
                and all(_finite(v) and v >= 0 for v in std)):
            raise BadReply("profile input statistics that are not finite means and non-negative deviations")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _cell(c: Any) -> bool:
    return (isinstance(c, int) and not isinstance(c, bool) and c >= 0) or \
        (isinstance(c, str) and c.startswith("<") and c[1:].isdigit())


def train_round(grid: Grid, rnd: int, weights: dict[str, np.ndarray], settings: Settings,
                strategy: ModalityAware, refused: dict[int, str], fusion_from: str, log: Log,
                frozen_sha256: str = "") -> RoundResult:
    """One training round to every live, non-refusing site; nothing is sent to fewer than ``min-sites``.
    ``frozen_sha256`` (``task.frozen_digest``) lets each site check the parts that do not travel."""
    started = time.perf_counter()
    if settings.secagg:
        targets = [n for n in grid.get_node_ids() if n not in refused]
        result = RoundResult(rnd, weights, targets, secure=True, max_share=settings.max_site_weight, started=started)
        if len(targets) >= settings.min_sites:
            result = _secure(grid, result, settings, strategy, fusion_from, log)
    else:
        config = ConfigRecord({"fused-eval": settings.fused_eval, "frozen-sha256": frozen_sha256})
        messages = [m for m in strategy.configure_train(rnd, numpy_to_arrays(weights), config, grid)
                    if m.metadata.dst_node_id not in refused]
        for m in messages:
            m.metadata.group_id = str(rnd)
        result = RoundResult(rnd, weights, [m.metadata.dst_node_id for m in messages],
                             max_share=settings.max_site_weight, started=started)
        if len(messages) >= settings.min_sites:
            result = _clear(grid, result, messages, settings, strategy)
    if strategy.server_opt is not None and result.weights is not weights:  # the average is the pseudo-gradient's source
        result.weights = strategy.server_opt.step(weights, result.weights, result.used)
    if settings.central_dp and result.weights is not weights:
        result.weights = valid_statistics(result.weights, variance_floors(settings, result.used))
    return result


def variance_floors(settings: Settings, used: dict[str, list[Any]]) -> dict[str, float]:
    """Per parameter group, the standard deviation of the central-DP noise on each released value:
    noise-multiplier x clip-norm over the group's contributors (the sum's noise is divided by them)."""
    return {g: settings.noise_multiplier * settings.clip_norm / len(sites) for g, sites in used.items() if sites}


def valid_statistics(weights: dict[str, np.ndarray], floors: dict[str, float]) -> dict[str, np.ndarray]:
    """Central-DP noise lands on the normalisation layers' running statistics as well (they travel
    with the update) and can push a running variance to or below zero. A normalisation then divides
    by sqrt(eps) (x316 for BatchNorm's 1e-5): a ResNet's activations grew ~1e5 per block, overflowed
    float32 in the fusion's LayerNorm and every test loss of the released model was NaN. A noised
    variance below the noise's own standard deviation (``floors``, per group: ``variance_floors``)
    cannot be told from zero; it is raised to that value, a post-processing of the release that
    uses only public parameters (no privacy cost). Everything else is left as released."""
    return {k: (np.maximum(v, floors.get(param_group(k), 0.0)).astype(v.dtype) if k.endswith("running_var") else v)
            for k, v in weights.items()}


def _clear(grid: Grid, result: RoundResult, messages: list[Message], settings: Settings,
           strategy: ModalityAware) -> RoundResult:
    result.bytes_down = sum(nbytes(m.content["arrays"]) for m in messages)
    replies = list(grid.send_and_receive(messages, timeout=settings.round_timeout))
    sent = origin(messages)
    agg = strategy.aggregate_modalities(result.round, replies, result.weights, sent)
    result.weights, result.accepted, result.rejected = agg.weights, agg.accepted, agg.rejected
    result.failed, result.refused, result.used, result.capped = agg.failed, agg.refused, agg.used, agg.capped
    result.notes = agg.notes
    result.answered = {sender(m, sent) for m in replies}
    result.bytes_up = sum(nbytes(m.content.array_records["arrays"]) for m in replies
                          if not m.has_error() and "arrays" in m.content.array_records)
    return result


def _secure(grid: Grid, result: RoundResult, settings: Settings, strategy: ModalityAware, fusion_from: str,
            log: Log) -> RoundResult:
    """A SecAgg+ round: the server gets the sum only, the sites' train metrics beside it."""
    from .secure import run_secure_round

    rnd = result.round
    config = {"server-round": rnd, "fused-eval": settings.fused_eval, "fusion-from": fusion_from}
    res = run_secure_round(grid, rnd, result.weights, result.targets, settings, config, strategy.dp_rng)
    result.bytes_down = sum(int(a.nbytes) for a in result.weights.values()) * len(result.targets)
    if res.weights is None:
        log(f"round {rnd}: SecAgg+ halted (too few sites answered to unmask)")
    else:
        result.weights = res.weights
        result.accepted = [secure_update(site, res.metrics.get(site, {}), strategy, result.capped)
                           for site in res.sites]
    result.failed = [("?", f"{res.failures} sites failed inside the SecAgg+ protocol")] if res.failures else []
    result.used = {g: [None] * len(res.sites) for g, w in res.group_weight.items() if w > 0}
    result.answered = set(res.sites)
    return result


def secure_update(site: int, metrics: dict[str, Any], strategy: ModalityAware,
                  notes: list[tuple[Any, str]]) -> SiteUpdate:
    """A SecAgg+ site's clear-text train metrics as an update without weights (its vector is in
    the sum already: it cannot be rejected). Metrics that do not fit are dropped from the round's
    records (noted)."""
    try:
        m, _ = train_metrics(site, numbers(dict(metrics)), strategy.caps, notes)
    except BadReply as exc:
        notes.append((site, f"train metrics dropped from the records: {exc}"))
        m = {"num-examples": 0}
    return SiteUpdate(site, {}, {}, int(m["num-examples"]), m)


def round_record(result: RoundResult) -> dict[str, Any]:
    """The round's metrics: sites, traffic, groups, site-weighted train / fused-eval metrics and
    each site's own aggregate metrics (already released by the site)."""
    dropped = result.dropped
    record: dict[str, Any] = {"round": result.round, "sites": len(result.accepted), "dropped": len(dropped),
                              "dropped-sites": {str(site): how for site, how in dropped.items()},
                              "rejected": len(result.rejected), "bytes-down": result.bytes_down,
                              "groups": {g: len(s) for g, s in result.used.items()}}
    if result.bytes_up is not None:
        record["bytes-up"] = result.bytes_up
    if result.secure:
        record["secagg"] = True
    rows = [u.metrics for u in result.accepted]
    record["slowest-site-seconds"] = max(site_seconds(r) for r in rows)
    record.update(weighted(rows, "train-", "num-examples", result.max_share))
    record.update(weighted(rows, "eval-", "eval-n", result.max_share))
    if result.capped:
        record["capped-sites"] = sorted({str(site) for site, _ in result.capped})
    record["per-site"] = {str(u.site): {k: v for k, v in u.metrics.items()
                                        if (k.startswith(("train-", "eval-")) or k == "site-seconds")
                                        and isinstance(v, (int, float))}
                          for u in result.accepted}
    return record


def local_ledger_rows(result: RoundResult, settings: Settings) -> list[dict[str, Any]]:
    """Ledger rows of the sites' local DP-SGD: what each has spent by the end of this round."""
    return [{"round": result.round, "site": u.site, "mechanism": LOCAL_MECHANISM,
             "noise": u.metrics.get("local-noise-multiplier"), "clip": settings.local_clip_norm,
             "epsilon": u.metrics["local-epsilon"], "delta": settings.target_delta}
            for u in result.accepted if "local-epsilon" in u.metrics]


def local_epsilon(result: RoundResult) -> dict[str, float]:
    """Each site's local DP-SGD epsilon, where it reported one."""
    return {str(u.site): u.metrics["local-epsilon"] for u in result.accepted if "local-epsilon" in u.metrics}


def weighted(rows: list[dict[str, Any]], prefix: str, n_key: str, max_share: float = 1.0) -> dict[str, float]:
    """Weighted mean of the overall metrics (keys without '/') across sites, each weighted by its
    ``n_key`` count with no site's share above ``max_share`` (``aggregation.cap_shares``, with
    >= 3 sites); counts add up."""
    rows = [r for r in rows if n_key in r]
    total = sum(float(r.get(n_key, 0)) for r in rows)
    if total <= 0:
        return {}
    keys = {k for r in rows for k in r if k.startswith(prefix) and "/" not in k and k != n_key}
    counts = {k for k in keys if k.removeprefix(prefix) in ("n", "samples") or k.endswith("-samples")}
    share = shares(rows, n_key, max_share)
    out = {k: sum(float(r[k]) * s for r, s in zip(rows, share) if k in r and s > 0) for k in sorted(keys - counts)}
    out.update({k: sum(float(r.get(k, 0)) for r in rows) for k in sorted(counts)})
    return out


def shares(rows: list[dict[str, Any]], n_key: str, max_share: float = 1.0) -> list[float]:
    """Each row's share of a weighted mean by its ``n_key`` count, none above ``max_share``."""
    n = [float(r.get(n_key, 0)) for r in rows]
    pos = [i for i, v in enumerate(n) if v > 0]
    out = [0.0] * len(rows)
    for i, s in zip(pos, cap_shares([n[i] for i in pos], max_share) if pos else []):
        out[i] = float(s)
    return out


def evaluate_round(grid: Grid, strategy: ModalityAware, weights: dict[str, np.ndarray], settings: Settings,
                   refused: dict[int, str], rnd: int, split: str, *, log: Log | None = None,
                   rejections: list[dict[str, Any]] | None = None, personalised: bool = False) -> dict[str, Any]:
    """Every non-refusing site evaluates ``weights`` on its ``split``: overall metrics weighted by
    the sites' counts (capped as in training: ``strategy.eval_metrics``; no site's share above
    ``max-site-weight``) and each site's own, with its ``share``. A site that evaluated nothing is
    listed too, with a ``note`` (and ``n`` 0 when it said why: an empty split, or the error type of
    its evaluation); a reply that does not fit is rejected (``note``, ``log``, ``rejections``).
    ``personalised``: each site scores its personalised model (``personal``), not ``weights`` as sent."""
    config = ConfigRecord({"split": split, "personalised": True} if personalised else {"split": split})
    msgs = [m for m in strategy.configure_evaluate(rnd, numpy_to_arrays(weights), config, grid)
            if m.metadata.dst_node_id not in refused]
    rows, sites, per_site = [], [], {}
    replies = list(grid.send_and_receive(msgs, timeout=settings.round_timeout))
    sent = origin(msgs)
    for reply in replies:
        src = sender(reply, sent)
        site = str(src)
        if site in per_site:
            continue  # one reply per site: the first
        if reply.has_error():
            per_site[site] = {"note": "error reply (the site failed)"}
            continue
        if "refused" in (info := site_info(reply.content)):
            per_site[site] = {"note": "refused by the site's policy"}
            continue
        capped: list[tuple[Any, str]] = []
        try:
            m = eval_metrics(src, reply.content, strategy.caps, split, capped)
        except BadReply as exc:
            per_site[site] = {"note": f"reply rejected: {exc}"}
            if rejections is not None:
                rejections.append({"round": rnd, "site": src, "reason": f"bad {split} evaluation reply: {exc}"})
            if log:
                log(f"round {rnd}: rejected {split} evaluation of site {src}: {exc}")
            continue
        if not m.get("num-examples"):  # the site could not evaluate: it says why
            why = (f"no {split} split (0 rows)" if info.get("eval-empty") else
                   f"evaluation failed at the site ({info['eval-error']})" if "eval-error" in info else
                   "no evaluation metrics")
            per_site[site] = {"n": 0, "num-examples": 0, "note": why}
            continue
        if capped:
            m["note"] = "; ".join(what for _, what in capped)
            if log:
                log(f"round {rnd}: {split} evaluation of site {src}: {m['note']}")
        rows.append(m)
        sites.append(site)
        per_site[site] = m
    for site, share in zip(sites, shares(rows, "num-examples", settings.max_site_weight)):
        per_site[site]["share"] = share
    answered = {sender(r, sent) for r in replies}
    for m in msgs:
        if m.metadata.dst_node_id not in answered:
            per_site[str(m.metadata.dst_node_id)] = {"note": "no answer"}
    return {"overall": weighted([{k: v for k, v in r.items() if k not in ("note", "share")} for r in rows], "",
                                "num-examples", settings.max_site_weight), "per_site": per_site}
