"""Flower's FedAvg / FedProx with modality-aware aggregation.

The strategies keep Flower's node sampling and train config (FedProx adds ``proximal-mu``);
their weighting is replaced: train replies become ``SiteUpdate``s, are screened (NaN, outlier
norm) and averaged per parameter group (``aggregation``), with central-DP noise when on.
``Aggregation`` says what happened to every reply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
from flwr.app import ConfigRecord, Message
from flwr.serverapp.strategy import FedAvg, FedProx

from .aggregation import DPNoise, SiteUpdate, aggregate, screen
from .records import arrays_to_numpy, decompress
from .settings import Settings


@dataclass
class Aggregation:
    """One round's aggregation: the new weights and what became of each site's reply."""

    weights: dict[str, np.ndarray]
    updates: list[SiteUpdate] = field(default_factory=list)  # every usable reply
    accepted: list[SiteUpdate] = field(default_factory=list)  # ... that passed screening
    rejected: list[tuple[Any, str]] = field(default_factory=list)  # (site, reason) failed screening
    failed: list[tuple[Any, str]] = field(default_factory=list)  # (site, reason) error replies
    refused: list[tuple[int, str]] = field(default_factory=list)  # (site, reason) policy refusals
    used: dict[str, list[Any]] = field(default_factory=dict)  # group -> sites in its average


def origin(messages: Iterable[Message]) -> dict[str, int]:
    """message id -> destination node, for the messages a Grid has pushed (it sets the ids)."""
    return {m.metadata.message_id: m.metadata.dst_node_id for m in messages if m.metadata.message_id}


def sender(reply: Message, origin: dict[str, int]) -> int:
    """The site a reply is about. An error reply the SuperLink writes for a node that stopped
    answering ("Node Unavailable") comes from the SuperLink's own node id, not from the site."""
    return origin.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)


def site_update(src: int, content) -> SiteUpdate:
    """A train reply's content as an update: weights (decompressed), per-modality counts, metrics."""
    site = content.get("site") or ConfigRecord()
    weights = decompress(arrays_to_numpy(content["arrays"]), str(site.get("compress", "none")))
    m = dict(content["metrics"])
    counts = {k.split("/", 1)[1]: int(v) for k, v in m.items() if k.startswith("count/")}
    return SiteUpdate(src, weights, counts, int(m.get("num-examples", 0)), m)


class ModalityAware:
    """Mixin for Flower strategies: their sampling and config, modality-aware aggregation."""

    settings: Settings
    dp_rng: np.random.Generator | None = None

    def aggregate_modalities(self, server_round: int, replies: Iterable[Message],
                             global_weights: dict[str, np.ndarray],
                             origin: dict[str, int] | None = None) -> Aggregation:
        s = self.settings
        out = Aggregation(global_weights)
        for msg in replies:
            src = sender(msg, origin or {})
            if msg.has_error():
                out.failed.append((src, msg.error.reason))
            elif "refused" in (site := msg.content.get("site") or ConfigRecord()):
                out.refused.append((src, str(site["refused"])))
            else:
                out.updates.append(site_update(src, msg.content))
        out.accepted, out.rejected = screen(out.updates, global_weights, s.outlier_factor)
        dp = DPNoise(s.noise_multiplier, s.clip_norm, self.dp_rng) if s.central_dp else None
        if out.accepted:
            out.weights, out.used = aggregate(global_weights, out.accepted, plain=s.aggregation == "plain", dp=dp)
        return out


class ModalityAwareFedAvg(ModalityAware, FedAvg):
    pass


class ModalityAwareFedProx(ModalityAware, FedProx):
    pass


def make_strategy(s: Settings) -> ModalityAware:
    kw = dict(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=s.min_sites, min_evaluate_nodes=s.min_sites,
              min_available_nodes=s.min_sites)
    strategy = ModalityAwareFedProx(proximal_mu=s.proximal_mu, **kw) if s.strategy == "fedprox" \
        else ModalityAwareFedAvg(**kw)
    strategy.settings = s
    strategy.dp_rng = np.random.default_rng(None)  # DP noise must not be reproducible
    return strategy
