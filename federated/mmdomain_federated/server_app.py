"""ServerApp (Message API): readiness report, rounds with Flower's FedAvg / FedProx sampling
and modality-aware aggregation, central DP with a budget, update screening, a checkpoint per
round (resume after a restart), final federated evaluation."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedProx

from . import task
from .aggregation import DPNoise, SiteUpdate, aggregate, screen
from .privacy import CentralAccountant, Ledger
from .records import arrays_to_numpy, numpy_to_arrays
from .state import load_state, save_state

app = ServerApp()


class ModalityAware:
    """Mixin for Flower strategies: keeps their node sampling and config (FedProx adds
    ``proximal-mu``), replaces the weighting by modality-aware aggregation with screening
    and optional central DP. ``last`` holds what the last aggregation did."""

    settings: task.Settings
    dp_rng: np.random.Generator | None = None
    last: dict[str, Any]

    def aggregate_modalities(self, server_round: int, replies: Iterable[Message],
                             global_weights: dict[str, np.ndarray],
                             origin: dict[str, int] | None = None) -> dict[str, np.ndarray]:
        s = self.settings
        updates, failed, refused = [], [], []
        for msg in replies:
            src = _sender(msg, origin or {})
            if msg.has_error():
                failed.append((src, msg.error.reason))
                continue
            site = msg.content.get("site") or ConfigRecord()
            if "refused" in site:
                refused.append((src, str(site["refused"])))
                continue
            weights = arrays_to_numpy(msg.content["arrays"])
            if site.get("compress") == "bf16":
                weights = {k: task.bf16_decode(v) for k, v in weights.items()}
            m = dict(msg.content["metrics"])
            counts = {k.split("/", 1)[1]: int(v) for k, v in m.items() if k.startswith("count/")}
            updates.append(SiteUpdate(src, weights, counts, int(m.get("num-examples", 0)), m))
        accepted, rejected = screen(updates, global_weights, s.outlier_factor)
        dp = DPNoise(s.noise_multiplier, s.clip_norm, self.dp_rng) if s.central_dp else None
        new, used = (aggregate(global_weights, accepted, plain=s.aggregation == "plain", dp=dp)
                     if accepted else (global_weights, {}))
        self.last = {"updates": updates, "accepted": accepted, "rejected": rejected, "failed": failed,
                     "refused": refused, "used": used}
        return new


class ModalityAwareFedAvg(ModalityAware, FedAvg):
    pass


class ModalityAwareFedProx(ModalityAware, FedProx):
    pass


def make_strategy(s: task.Settings) -> ModalityAware:
    kw = dict(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=s.min_sites, min_evaluate_nodes=s.min_sites,
              min_available_nodes=s.min_sites)
    strategy = ModalityAwareFedProx(proximal_mu=s.proximal_mu, **kw) if s.strategy == "fedprox" \
        else ModalityAwareFedAvg(**kw)
    strategy.settings = s
    strategy.dp_rng = np.random.default_rng(None)  # DP noise must not be reproducible
    return strategy


def _origin(messages: Iterable[Message]) -> dict[str, int]:
    """message id -> destination node, for the messages a Grid has pushed (it sets the ids)."""
    return {m.metadata.message_id: m.metadata.dst_node_id for m in messages if m.metadata.message_id}


def _sender(reply: Message, origin: dict[str, int]) -> int:
    """The site a reply is about. An error reply the SuperLink writes for a node that stopped
    answering ("Node Unavailable") comes from the SuperLink's own node id, not from the site."""
    return origin.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)


def _nbytes(record: ArrayRecord) -> int:
    return sum(len(a.data) for a in record.values())


def _weighted(rows: list[dict[str, Any]], prefix: str, n_key: str) -> dict[str, float]:
    """Weighted mean of the overall metrics (keys without '/') across sites."""
    rows = [r for r in rows if n_key in r]
    total = sum(float(r.get(n_key, 0)) for r in rows)
    if total <= 0:
        return {}
    keys = {k for r in rows for k in r if k.startswith(prefix) and "/" not in k and k != n_key}
    counts = {k for k in keys if k.removeprefix(prefix) in ("n", "samples") or k.endswith("-samples")}
    out = {k: sum(float(r[k]) * float(r[n_key]) for r in rows if k in r) / total for k in sorted(keys - counts)}
    out.update({k: sum(float(r.get(k, 0)) for r in rows) for k in sorted(counts)})  # counts add up
    return out


def _wait_for_nodes(grid: Grid, need: int, timeout: float, log) -> list[int]:
    start = time.monotonic()
    while len(nodes := list(grid.get_node_ids())) < need:
        if time.monotonic() - start > timeout:
            break
        time.sleep(1)
    log(f"{len(nodes)} sites connected (need {need})")
    return nodes


def run_server(grid: Grid, settings: task.Settings, out_dir: Path, *, registry=None,
               log: Callable[[str], None] | None = None, echo: bool = True) -> dict[str, Any]:
    """The whole federated run; returns (and writes ``summary.json``) what happened. Events go to
    ``events.log``, to ``log`` and, with ``echo``, to stdout."""
    from mmdomain.checkpoint import save_checkpoint
    from mmdomain.plugins import get_registry

    registry = registry or get_registry()
    out_dir.mkdir(parents=True, exist_ok=True)
    events = (out_dir / "events.log").open("a")

    def _log(line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        if echo:
            print(f"[mmdomain-fed {stamp}] {line}", flush=True)
        events.write(f"{stamp} {line}\n")
        events.flush()
        if log:
            log(line)

    model = task.build(settings, registry)
    weights = task.get_weights(model)
    strategy = make_strategy(settings)
    need = max(settings.expected_sites, settings.min_sites)
    nodes = _wait_for_nodes(grid, need, settings.round_timeout, _log)
    population = max(len(nodes), settings.min_sites)
    history: list[dict[str, Any]] = []
    rejections: list[dict[str, Any]] = []
    refused: dict[int, str] = {}
    start_round = 1
    ledger = Ledger(out_dir / "privacy-ledger.jsonl")
    accountant = None
    stop_reason = "completed"
    resumed = load_state(out_dir) if settings.resume else None
    if resumed:
        last_round, weights, state = resumed
        start_round, history, rejections = last_round + 1, state["history"], state.get("rejections", [])
        population = int(state["population"])
        _log(f"resuming after round {last_round} from {out_dir}")
    if settings.central_dp:
        accountant = CentralAccountant(noise_multiplier=settings.noise_multiplier, clip=settings.clip_norm,
                                       target_delta=settings.target_delta, population=population,
                                       max_epsilon=settings.max_epsilon or None)
        if resumed:
            accountant.load_state_dict(resumed[2]["accountant"])
            done = ledger.rounds()  # a crash between checkpoint and ledger append: append what is missing
            missing = [r for r in resumed[2].get("ledger-rows", []) if int(r["round"]) not in done]
            if missing:
                ledger.append(missing)

    readiness: dict[str, Any] = {}
    if settings.readiness and start_round == 1:
        readiness = _readiness(grid, nodes, settings, out_dir, refused, _log)
    elif (out_dir / "readiness.json").exists():  # resumed: the report of the first start
        readiness = json.loads((out_dir / "readiness.json").read_text())
    fusion_from = _fusion_from(readiness)

    for rnd in range(start_round, settings.num_server_rounds + 1):
        if accountant and accountant.would_exceed(population):
            stop_reason = (f"privacy budget: round {rnd} would take epsilon past {settings.max_epsilon:g} "
                           f"(now {accountant.epsilon:.3f}); keeping the model of round {rnd - 1}")
            _log(stop_reason)
            break
        t0 = time.perf_counter()
        if settings.secagg:
            targets = [n for n in grid.get_node_ids() if n not in refused]
            live = len(targets)
        else:
            config = ConfigRecord({"fused-eval": settings.fused_eval})
            messages = [m for m in strategy.configure_train(rnd, numpy_to_arrays(weights), config, grid)
                        if m.metadata.dst_node_id not in refused]
            for m in messages:
                m.metadata.group_id = str(rnd)
            targets = [m.metadata.dst_node_id for m in messages]
            live = len(messages)
        if live < settings.min_sites:
            stop_reason = f"round {rnd}: only {live} sites available, min-sites is {settings.min_sites}"
            _log(stop_reason)
            break
        if settings.secagg:
            new_weights, info, answered = _secure_round(grid, rnd, weights, targets, settings, strategy,
                                                        fusion_from, _log)
            bytes_down = sum(int(a.nbytes) for a in weights.values()) * live
            bytes_up = None  # masked vectors travel as protocol records, not counted here
        else:
            bytes_down = sum(_nbytes(m.content["arrays"]) for m in messages)
            replies = list(grid.send_and_receive(messages, timeout=settings.round_timeout))
            origin = _origin(messages)
            new_weights = strategy.aggregate_modalities(rnd, replies, weights, origin)
            info = strategy.last
            answered = {_sender(m, origin) for m in replies}
            bytes_up = sum(_nbytes(m.content["arrays"]) for m in replies if not m.has_error() and "arrays" in m.content)
        for site, reason in info["refused"]:
            refused[site] = reason
            _log(f"site {site} refused: {reason}")
        for site, reason in info["failed"]:
            _log(f"round {rnd}: site {site} failed: {reason}")
        dropped = [n for n in targets if n not in answered]
        for site in dropped:
            _log(f"round {rnd}: site {site} did not answer within {settings.round_timeout:g}s")
        for site, reason in info["rejected"]:
            rejections.append({"round": rnd, "site": site, "reason": reason})
            _log(f"round {rnd}: rejected update of site {site}: {reason}")
        if len(info["accepted"]) < settings.min_sites:
            stop_reason = (f"round {rnd}: {len(info['accepted'])} usable updates, min-sites is {settings.min_sites}; "
                           f"keeping the model of round {rnd - 1}")
            _log(stop_reason)
            if info["refused"] and len(refused) > len(nodes) - settings.min_sites:
                stop_reason += "; refusals: " + " | ".join(f"site {s}: {r}" for s, r in refused.items())
            break
        weights = new_weights
        record: dict[str, Any] = {"round": rnd, "sites": len(info["accepted"]), "dropped": len(dropped),
                                  "rejected": len(info["rejected"]), "bytes-down": bytes_down,
                                  "groups": {g: len(s) for g, s in info["used"].items()}}
        if bytes_up is not None:
            record["bytes-up"] = bytes_up
        if settings.secagg:
            record["secagg"] = True
        rows = [u.metrics for u in info["accepted"]]
        record["slowest-site-seconds"] = max(float(r.get("site-seconds", 0)) for r in rows)
        record.update({k: v for k, v in _weighted(rows, "train-", "num-examples").items()})
        record.update({k: v for k, v in _weighted(rows, "eval-", "eval-n").items()})
        record["per-site"] = {str(u.site): {k: v for k, v in u.metrics.items()
                                            if (k.startswith(("train-", "eval-")) or k == "site-seconds")
                                            and isinstance(v, (int, float))}
                              for u in info["accepted"]}  # aggregate metrics only, already released by the site
        if not settings.fused_eval:  # stock Flower shape: a separate evaluate message per round
            ev = _evaluate(grid, strategy, new_weights, settings, refused, rnd, "val")
            record.update({f"eval-{k}": v for k, v in ev["overall"].items()})
            record["slowest-site-seconds"] += max((float(m.get("site-seconds", 0)) for m in ev["per_site"].values()),
                                                  default=0.0)
        ledger_rows: list[dict[str, Any]] = []
        if accountant:
            eps = accountant.spend(population)
            record.update({"epsilon": eps, "delta": settings.target_delta})
            ledger_rows = [{"round": rnd, "site": u.site, "mechanism": "gaussian-central-site-level",
                            "noise": settings.noise_multiplier, "clip": settings.clip_norm, "epsilon": eps,
                            "delta": settings.target_delta} for u in info["accepted"]]
        local_eps = {str(u.site): u.metrics["local-epsilon"] for u in info["accepted"] if "local-epsilon" in u.metrics}
        if local_eps:
            record["local-epsilon"] = local_eps
        record["seconds"] = round(time.perf_counter() - t0, 3)
        history.append(record)
        save_state(out_dir, rnd, weights, {"history": history, "rejections": rejections, "population": population,
                                           "accountant": accountant.state_dict() if accountant else None,
                                           "ledger-rows": ledger_rows, "settings": settings.as_run_config()})
        if ledger_rows:
            ledger.append(ledger_rows)
        _log(f"round {rnd}: " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                                            for k, v in record.items()}))
        if settings.stop_after_round and rnd == settings.stop_after_round and rnd < settings.num_server_rounds:
            stop_reason = f"stop-after-round {rnd} (simulated crash)"
            _log(stop_reason)
            events.close()
            return {"stopped": stop_reason, "history": history, "out_dir": str(out_dir)}

    final = _final_evaluate(grid, strategy, weights, settings, refused, _log) if history else {}
    task.set_weights(model, weights)
    save_checkpoint(model, out_dir / "model.safetensors", registry,
                    extra={"federated": {"rounds": len(history), "dataset": settings.dataset}})
    np.savez(out_dir / "final.npz", **weights)
    summary = {"stopped": stop_reason, "rounds": len(history), "history": history, "final": final,
               "rejections": rejections, "refused": {str(k): v for k, v in refused.items()},
               "epsilon": accountant.epsilon if accountant else None, "out_dir": str(out_dir)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    _log(f"finished ({stop_reason}); final test metrics {json.dumps(final.get('overall', {}))}; out {out_dir}")
    events.close()
    return summary


def _fusion_from(readiness: dict[str, Any]) -> str:
    """SecAgg+ rounds: ``multi`` (the fusion head is averaged over sites holding >= 2 modalities)
    unless the readiness report shows no such site, then ``all``."""
    if not readiness:
        return "multi"
    held = [sum(1 for c in ((rep.get("splits", {}).get("train", rep)).get("modalities") or {}).values() if c)
            for rep in readiness.values() if isinstance(rep, dict) and "error" not in rep and "refused" not in rep]
    return "multi" if any(h >= 2 for h in held) else "all"


def _secure_round(grid: Grid, rnd: int, weights, targets: list[int], settings: task.Settings, strategy,
                  fusion_from: str, log):
    """One SecAgg+ round; returns what the clear path's aggregation returns."""
    from .aggregation import SiteUpdate
    from .secure import run_secure_round

    config = {"server-round": rnd, "fused-eval": settings.fused_eval, "fusion-from": fusion_from}
    res = run_secure_round(grid, rnd, weights, targets, settings, config, strategy.dp_rng)
    accepted = [SiteUpdate(site, {}, {}, int(res.metrics[site].get("num-examples", 0)), res.metrics[site])
                for site in res.sites] if res.weights is not None else []
    failed = [("?", f"{res.failures} sites failed inside the SecAgg+ protocol")] if res.failures else []
    if res.weights is None:
        log(f"round {rnd}: SecAgg+ halted (too few sites answered to unmask)")
    info = {"updates": accepted, "accepted": accepted, "rejected": [], "failed": failed, "refused": [],
            "used": {g: [None] * len(res.sites) for g, w in res.group_weight.items() if w > 0}}
    return (res.weights if res.weights is not None else weights), info, set(res.sites)


def _readiness(grid: Grid, nodes: list[int], settings: task.Settings, out_dir: Path, refused: dict[int, str],
               log) -> dict[str, Any]:
    msgs = [Message(RecordDict({"config": ConfigRecord({})}), message_type=MessageType.QUERY, dst_node_id=n,
                    group_id="readiness") for n in nodes]
    report: dict[str, Any] = {}
    replies = list(grid.send_and_receive(msgs, timeout=settings.round_timeout))
    origin = _origin(msgs)
    for reply in replies:
        src = _sender(reply, origin)
        if reply.has_error():
            report[str(src)] = {"error": reply.error.reason}
            continue
        site = reply.content["site"]
        if "refused" in site:
            refused[src] = str(site["refused"])
            report[str(src)] = {"refused": refused[src]}
            log(f"site {src} refused: {refused[src]}")
            continue
        report[str(src)] = json.loads(str(site["readiness"]))
    (out_dir / "readiness.json").write_text(json.dumps(report, indent=1))
    log("readiness report (counts noised, cells < 5 suppressed):")
    for site, rep in report.items():
        train = rep.get("splits", {}).get("train", rep)
        log(f"  site {site}: train n={train.get('n')} modalities={train.get('modalities')} "
            f"patterns={train.get('patterns')}")
    return report


def _final_evaluate(grid: Grid, strategy, weights, settings: task.Settings, refused, log) -> dict[str, Any]:
    return _evaluate(grid, strategy, weights, settings, refused, settings.num_server_rounds + 1, "test")


def _evaluate(grid: Grid, strategy, weights, settings: task.Settings, refused, rnd: int, split: str) -> dict[str, Any]:
    msgs = [m for m in strategy.configure_evaluate(rnd, numpy_to_arrays(weights),
                                                   ConfigRecord({"split": split}), grid)
            if m.metadata.dst_node_id not in refused]
    rows, per_site = [], {}
    for reply in grid.send_and_receive(msgs, timeout=settings.round_timeout):
        if reply.has_error() or "metrics" not in reply.content:
            continue
        m = dict(reply.content["metrics"])
        if not m.get("num-examples"):
            continue  # the site could not evaluate (e.g. an empty split)
        rows.append(m)
        per_site[str(reply.metadata.src_node_id)] = m
    overall = _weighted(rows, "", "num-examples")
    return {"overall": overall, "per_site": per_site}


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = task.Settings.from_run_config(context.run_config)
    out = Path(settings.out_dir) if settings.out_dir else \
        Path(tempfile.gettempdir()) / "mmdomain-fed" / f"run-{context.run_id}"
    run_server(grid, settings, out)
