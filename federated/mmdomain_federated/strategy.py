"""Flower's FedAvg / FedProx with modality-aware aggregation (and a server optimiser).

The strategies keep Flower's node sampling and train config (FedProx adds ``proximal-mu``;
``fedadam`` / ``fedyogi`` / ``fedadagrad`` sample as FedAvg and carry a ``server_opt.ServerOptimiser``
that ``rounds.train_round`` applies to the round's average); their weighting is replaced: train replies are checked against what the server sent
(``train_update``: records, arrays, counts; a bad one is rejected for that site, never raised),
become ``SiteUpdate``s with counts capped (``aggregation.Caps``), are screened (NaN, outlier
norm) and averaged per parameter group (``aggregation``), with central-DP noise when on.
``Aggregation`` says what happened to every reply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
from flwr.app import ConfigRecord, Message
from flwr.serverapp.strategy import FedAvg, FedProx

from .aggregation import ROBUST, BadReply, Caps, DPNoise, SiteUpdate, aggregate, check_update, count, screen
from .records import arrays_to_numpy, decompress
from .server_opt import ServerOptimiser
from .settings import Settings


@dataclass
class Aggregation:
    """One round's aggregation: the new weights and what became of each site's reply."""

    weights: dict[str, np.ndarray]
    updates: list[SiteUpdate] = field(default_factory=list)  # every usable reply
    accepted: list[SiteUpdate] = field(default_factory=list)  # ... that passed screening
    rejected: list[tuple[Any, str]] = field(default_factory=list)  # (site, reason) bad reply or failed screening
    failed: list[tuple[Any, str]] = field(default_factory=list)  # (site, reason) error replies
    refused: list[tuple[int, str]] = field(default_factory=list)  # (site, reason) policy refusals
    capped: list[tuple[Any, str]] = field(default_factory=list)  # (site, what) counts lowered to the caps
    used: dict[str, list[Any]] = field(default_factory=dict)  # group -> sites in its average
    notes: list[str] = field(default_factory=list)  # what the robust aggregation left out (krum)


def origin(messages: Iterable[Message]) -> dict[str, int]:
    """message id -> destination node, for the messages a Grid has pushed (it sets the ids)."""
    return {m.metadata.message_id: m.metadata.dst_node_id for m in messages if m.metadata.message_id}


def sender(reply: Message, origin: dict[str, int]) -> int:
    """The site a reply is about. An error reply the SuperLink writes for a node that stopped
    answering ("Node Unavailable") comes from the SuperLink's own node id, not from the site."""
    return origin.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)


def site_info(content) -> ConfigRecord:
    """A reply's ``site`` ConfigRecord (empty when there is none, or it is not a ConfigRecord)."""
    return content.config_records.get("site") or ConfigRecord()


def metrics_of(content) -> dict[str, float]:
    """A reply's ``metrics`` MetricRecord as a dict of numbers (``numbers``); ``BadReply`` when
    it is missing."""
    if "metrics" not in content.metric_records:
        raise BadReply("no metrics record")
    return numbers(dict(content.metric_records["metrics"]))


def numbers(m: dict[str, Any]) -> dict[str, float]:
    """``m`` when every value is a single number (what a site sends), else ``BadReply``."""
    bad = [k for k, v in m.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
    if bad:  # the keys are the site's: not echoed
        raise BadReply(f"{len(bad)} metrics are not single numbers")
    return m


def capped_count(site: Any, name: str, value: Any, caps: Caps, split: str, modality: str | None = None,
                 notes: list[tuple[Any, str]] | None = None) -> int:
    """A count checked (``aggregation.count``: above ``max-site-samples`` it is a bad reply) and
    lowered to what the site's readiness report declared for ``split``, noting that in ``notes``."""
    n = count(name, value, caps.ceiling)
    cap, source = caps.limit(site, split, modality)
    if n > cap:
        if notes is not None:
            notes.append((site, f"{name} {n} capped to {cap} ({source})"))
        n = cap
    return n


def is_count(key: str) -> bool:
    """Whether an overall metric (no ``/``) is a sample count, which ``rounds.weighted`` sums:
    ``n``, ``samples`` or ``*-samples`` after a ``train-`` / ``eval-`` prefix (``eval-n``...)."""
    name = key.removeprefix("train-").removeprefix("eval-")
    return "/" not in key and (name in ("n", "samples") or key.endswith("-samples"))


def cap_count_metrics(site: Any, m: dict[str, float], caps: Caps, notes: list[tuple[Any, str]], *,
                      eval_split: str, eval_n: int | None = None) -> None:
    """The sample counts among the overall metrics, in place: each a valid count (``count``),
    those of an evaluation (``eval-*`` in a train reply: fused evaluation of ``eval_split``; any
    in an evaluate reply, ``eval_n`` its ``num-examples``) lowered to what the site declared for
    that split and to ``eval_n``."""
    for k in [k for k in m if is_count(k) and k != "num-examples"]:
        if eval_n is None and not k.startswith("eval-"):
            m[k] = count(k, m[k], caps.ceiling)  # train-samples: epochs x rows, checked only
        else:
            c = capped_count(site, k, m[k], caps, eval_split, notes=notes)
            m[k] = c if eval_n is None else min(c, eval_n)


def train_update(src: int, content, global_weights: dict[str, np.ndarray], caps: Caps,
                 notes: list[tuple[Any, str]] | None = None) -> SiteUpdate:
    """A train reply's content as an update (``BadReply`` when it does not fit what was sent):
    the arrays (decompressed) of the global model's names, shapes and dtypes; ``num-examples`` and
    the per-modality counts (``count/<m>``, of the model's modalities, each <= ``num-examples``)
    finite whole numbers within ``max-site-samples``, lowered to the site's readiness report
    (``caps``, noted in ``notes``); the fused-eval counts likewise."""
    notes = notes if notes is not None else []
    site = site_info(content)
    how = str(site.get("compress", "none"))
    if how not in ("none", "bf16"):
        raise BadReply("unknown compress value")
    if "arrays" not in content.array_records:
        raise BadReply("no arrays record")
    try:
        weights = decompress(arrays_to_numpy(content.array_records["arrays"]), how)
    except Exception:  # noqa: BLE001 - undecodable bytes: the site's fault, not the server's
        raise BadReply("arrays that cannot be read as numpy arrays") from None
    weights = check_update(weights, global_weights)
    m, counts = train_metrics(src, metrics_of(content), caps, notes)
    return SiteUpdate(src, weights, counts, int(m["num-examples"]), m)


def train_metrics(src: Any, m: dict[str, float], caps: Caps, notes: list[tuple[Any, str]]
                  ) -> tuple[dict[str, float], dict[str, int]]:
    """A train reply's metrics with ``num-examples``, the per-modality counts (``count/<m>``) and
    the fused-eval counts checked and capped (``train_update``); and the per-modality counts."""
    if "num-examples" not in m:
        raise BadReply("no num-examples")
    n = capped_count(src, "num-examples", m["num-examples"], caps, "train", notes=notes)
    counts = {}
    for k in sorted(k for k in m if k.startswith("count/")):
        mod = k.split("/", 1)[1]
        if caps.modalities and mod not in caps.modalities:
            raise BadReply("a count of a modality the model does not have")
        c = capped_count(src, k, m[k], caps, "train", mod, notes)
        if c > n:
            raise BadReply(f"{k} {c} is above num-examples {n}")
        counts[mod] = c
    m["num-examples"] = n
    m.update({f"count/{k}": v for k, v in counts.items()})
    cap_count_metrics(src, m, caps, notes, eval_split="val")
    return m, counts


def eval_metrics(src: int, content, caps: Caps, split: str, notes: list[tuple[Any, str]]) -> dict[str, float]:
    """An evaluate reply's metrics (``BadReply`` when they do not fit): ``num-examples`` checked
    and capped as in training (within the ``split`` the site declared), and so the other counts."""
    m = metrics_of(content)
    n = capped_count(src, "num-examples", m.get("num-examples", 0), caps, split, notes=notes)
    m["num-examples"] = n
    cap_count_metrics(src, m, caps, notes, eval_split=split, eval_n=n)
    return m


def site_seconds(m: dict[str, Any]) -> float:
    """A site's reported seconds, 0 when it is not a finite, non-negative number."""
    v = m.get("site-seconds", 0)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 else 0.0


class ModalityAware:
    """Mixin for Flower strategies: their sampling and config, modality-aware aggregation.
    ``caps``: the most each site may report (``max-site-samples``, set from the readiness report
    by the server before round 1)."""

    settings: Settings
    dp_rng: np.random.Generator | None = None
    caps: Caps = Caps()  # make_strategy: max-site-samples; run_server: the readiness report
    server_opt: ServerOptimiser | None = None  # fedadam / fedyogi / fedadagrad: steps from the average
    site_local: frozenset[str] = frozenset()  # personalisation: names that stay at the sites (personal.local_keys)

    def aggregate_modalities(self, server_round: int, replies: Iterable[Message],
                             global_weights: dict[str, np.ndarray],
                             origin: dict[str, int] | None = None) -> Aggregation:
        s = self.settings
        out = Aggregation(global_weights)
        seen: set[int] = set()
        # what the sites send back: never what personalisation keeps at them (a reply with it is rejected)
        expected = {k: v for k, v in global_weights.items() if k not in self.site_local}
        for msg in replies:
            src = sender(msg, origin or {})
            if src in seen:  # one reply per site and round
                out.rejected.append((src, "a second reply in the same round"))
                continue
            seen.add(src)
            if msg.has_error():
                out.failed.append((src, msg.error.reason))
            elif "refused" in (site := site_info(msg.content)):
                out.refused.append((src, str(site["refused"])))
            else:
                try:
                    out.updates.append(train_update(src, msg.content, expected, self.caps, out.capped))
                except BadReply as exc:
                    out.rejected.append((src, f"bad reply: {exc}"))
        accepted, rejected = screen(out.updates, expected, s.outlier_factor)
        out.accepted, out.rejected = accepted, out.rejected + rejected
        dp = DPNoise(s.noise_multiplier, s.clip_norm, self.dp_rng) if s.central_dp else None
        if out.accepted:
            out.weights, out.used = aggregate(
                global_weights, out.accepted, plain=s.aggregation == "plain", dp=dp, max_share=s.max_site_weight,
                robust=s.aggregation if s.aggregation in ROBUST else "", trim_fraction=s.trim_fraction,
                byzantine=s.krum_byzantine, notes=out.notes)
        return out


class ModalityAwareFedAvg(ModalityAware, FedAvg):
    pass


class ModalityAwareFedProx(ModalityAware, FedProx):
    pass


def make_strategy(s: Settings, buffers: Iterable[str] = ()) -> ModalityAware:
    """The strategy of ``s.strategy``; ``buffers``: the model's buffer names (running statistics),
    which a server optimiser takes as averaged."""
    kw = dict(fraction_train=s.fraction_train, fraction_evaluate=1.0, min_train_nodes=s.min_sites,
              min_evaluate_nodes=s.min_sites, min_available_nodes=s.min_sites)  # every site evaluates
    strategy = ModalityAwareFedProx(proximal_mu=s.proximal_mu, **kw) if s.strategy == "fedprox" \
        else ModalityAwareFedAvg(**kw)
    strategy.settings = s
    strategy.dp_rng = np.random.default_rng(None)  # DP noise must not be reproducible
    strategy.caps = Caps(s.max_site_samples)
    strategy.server_opt = ServerOptimiser.from_settings(s, buffers)
    return strategy
