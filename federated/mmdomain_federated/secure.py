"""SecAgg+ rounds: Flower's SecAgg+ protocol carrying a modality-aware update.

Flower 1.42 offers SecAgg+ only on its legacy path: ``SecAggPlusWorkflow`` on the server
(driven through a ``LegacyContext`` and a legacy ``Strategy``) and ``secaggplus_mod`` on the
site, which wraps the train handler. The server then sees only the *sum* of the sites'
vectors, never one site's update.

What a site puts in its vector (``encode``), for every float parameter in a fixed order
(``Layout``, the sorted state_dict keys):

- ``weight_g * (w_site - w_global)`` for the parameters of each group ``g`` it trained
  (``encoder:<m>``, ``fusion``, ``task``), zeros for the others;
- then one array of the group weights ``weight_g`` themselves.

``weight_g`` is the clear-text path's weight (``groups.weight``, the one rule): the count of the
site's samples holding ``m`` for ``encoder:<m>``, its sample count for ``task``, and for
``fusion`` its sample count if it holds >= 2 modalities (or if the server says no site does:
``fusion-from=all``), divided by the public ``secagg-weight-scale`` to stay in the quantiser's
range. The sum over sites gives, per group, ``sum(weight * delta)`` and ``sum(weight)``: their
ratio is the same modality-aware average, so per-modality counts are summed under SecAgg+ too.
With central DP a site clips its own update to ``clip-norm`` and weights are 1 per group it
trained; the server adds the Gaussian noise to the sum (it cannot clip what it cannot see).

What stays in clear: which sites took part in a round and which answered; the train metrics a
site sends beside its vector (loss, seconds, fused-eval metrics: aggregate figures, as in the
clear path); the modalities each site holds (readiness report); the per-round sum. Update
screening (NaN/outliers) cannot run on the server: each site refuses to send a non-finite update.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .groups import param_group, trained_groups, weight

SECAGG_CONFIGS = "secaggplus_configs"  # flwr.common.secure_aggregation.secaggplus_constants.RECORD_KEY_CONFIGS
QUANTIZATION_RANGE = 1 << 24  # x 256 sites still fits the 2**32 modulus


def _is_float(a: np.ndarray) -> bool:
    return np.issubdtype(np.asarray(a).dtype, np.floating)


@dataclass(frozen=True)
class Layout:
    """The order both sides agree on: every key of the model's state, the float ones summed."""

    keys: tuple[str, ...]
    summed: tuple[str, ...]
    groups: tuple[str, ...]

    @classmethod
    def of(cls, weights: dict[str, np.ndarray]) -> "Layout":
        keys = tuple(sorted(weights))
        summed = tuple(k for k in keys if _is_float(weights[k]))
        return cls(keys, summed, tuple(sorted({param_group(k) for k in summed})))

    def to_list(self, weights: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(weights[k]) for k in self.keys]

    def from_list(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        if len(arrays) != len(self.keys):
            raise ValueError(f"secagg: {len(arrays)} arrays for a model of {len(self.keys)}")
        return dict(zip(self.keys, arrays))


def group_weights(mod_counts: dict[str, int], n: int, *, fusion_from: str, plain: bool, dp: bool,
                  scale: float) -> dict[str, float]:
    """The weight a site gives each group it trained (``groups.weight``); groups without one are left out."""
    if n <= 0:
        return {}
    w = {g: v for g in sorted(trained_groups(mod_counts, n))
         if (v := weight(g, mod_counts, n, plain=plain, fusion_from=fusion_from)) > 0}
    if dp:
        return {g: 1.0 for g in w}  # equal weights per site, as the Gaussian mechanism's accounting assumes
    return {g: v / scale for g, v in w.items()}


def encode(layout: Layout, global_w: dict[str, np.ndarray], local_w: dict[str, np.ndarray],
           weights: dict[str, float], clip: float = 0.0) -> list[np.ndarray]:
    """The site's vector. ``clip > 0``: the update (over the groups it trained) is first
    clipped to that L2 norm (central DP under SecAgg+)."""
    deltas = {k: (local_w[k].astype(np.float64) - global_w[k].astype(np.float64))
              if param_group(k) in weights else None for k in layout.summed}
    bad = [k for k, d in deltas.items() if d is not None and not np.all(np.isfinite(d))]
    if bad:
        raise FloatingPointError(f"non-finite values in {len(bad)} updated arrays; not sending")
    factor = 1.0
    if clip > 0:
        norm = float(np.sqrt(sum(float(np.sum(d * d)) for d in deltas.values() if d is not None)))
        factor = min(1.0, clip / norm) if norm > 0 else 1.0
    out = [(d * factor * weights[param_group(k)]).astype(np.float32) if d is not None
           else np.zeros(np.shape(global_w[k]), np.float32) for k, d in deltas.items()]
    out.append(np.array([weights.get(g, 0.0) for g in layout.groups], np.float32))
    return out


@dataclass
class SecureResult:
    weights: dict[str, np.ndarray] | None  # None: the protocol halted (too few sites answered)
    sites: list[int] = field(default_factory=list)
    metrics: dict[int, dict[str, Any]] = field(default_factory=dict)
    failures: int = 0
    group_weight: dict[str, float] = field(default_factory=dict)


def decode(layout: Layout, global_w: dict[str, np.ndarray], mean: list[np.ndarray], n_sites: int,
           dp_noise: tuple[float, float, np.random.Generator] | None = None) -> tuple[dict[str, np.ndarray],
                                                                                  dict[str, float]]:
    """New global weights from the SecAgg+ mean over ``n_sites`` vectors. ``dp_noise`` =
    (noise multiplier, clip, rng): Gaussian noise on the sum before dividing."""
    if len(mean) != len(layout.summed) + 1:
        raise ValueError(f"secagg: aggregate has {len(mean)} arrays, expected {len(layout.summed) + 1}")
    totals = dict(zip(layout.groups, (np.asarray(mean[-1], np.float64) * n_sites).tolist()))
    new = dict(global_w)
    for k, m in zip(layout.summed, mean[:-1]):
        total = totals[param_group(k)]
        if total <= 1e-9:  # no site trained this group
            continue
        s = np.asarray(m, np.float64) * n_sites
        if dp_noise is not None:
            sigma, clip, rng = dp_noise
            s = s + rng.normal(0.0, sigma * clip, size=s.shape)
        g = global_w[k]
        new[k] = (g.astype(np.float64) + s.reshape(np.shape(g)) / total).astype(g.dtype)
    return new, totals


def run_secure_round(grid, rnd: int, global_w: dict[str, np.ndarray], nodes: list[int], settings, config: dict,
                     dp_rng: np.random.Generator | None) -> SecureResult:
    """One round through Flower's SecAggPlusWorkflow with ``nodes`` as the sampled sites."""
    from flwr.app import ConfigRecord, Context, RecordDict
    from flwr.common import ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

    layout = Layout.of(global_w)
    result = SecureResult(None)
    noise = (settings.noise_multiplier, settings.clip_norm, dp_rng) if settings.central_dp else None
    manager = SimpleClientManager()
    for n in nodes:
        manager.register(GridClientProxy(int(n), grid, 0))
    ctx = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                        strategy=_collector(layout, global_w, config, noise, result), client_manager=manager)
    ctx.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters(layout.to_list(global_w)), True)
    ctx.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: rnd})
    _workflow(settings)(grid, ctx)
    return result


def _collector(layout: Layout, global_w: dict[str, np.ndarray], config: dict, noise, result: SecureResult):
    """The legacy strategy the workflow drives: send to every registered site, decode the sum into ``result``."""
    from flwr.common import FitIns, parameters_to_ndarrays
    from flwr.server.strategy import Strategy

    class _Collect(Strategy):
        def initialize_parameters(self, client_manager):
            return None

        def configure_fit(self, server_round, parameters, client_manager):
            return [(p, FitIns(parameters, dict(config))) for p in client_manager.all().values()]

        def aggregate_fit(self, server_round, results, failures):
            result.failures = len(failures)
            result.sites = [int(p.node_id) for p, _ in results]
            result.metrics = {int(p.node_id): dict(r.metrics) for p, r in results}
            if not results:
                return None, {}
            mean = parameters_to_ndarrays(results[0][1].parameters)
            result.weights, result.group_weight = decode(layout, global_w, mean, len(results), noise)
            return None, {}

        def configure_evaluate(self, server_round, parameters, client_manager):
            return []

        def aggregate_evaluate(self, server_round, results, failures):
            return None, {}

        def evaluate(self, server_round, parameters):
            return None

    return _Collect()


def _workflow(settings):
    """Flower's SecAggPlusWorkflow with the run's shares, threshold, range and timeout.

    A site that does not answer the setup stage never shares keys or masks, yet Flower 1.42
    still lists it as dead at unmasking, where the survivors then fail looking up its key shares
    (``KeyError`` in ``secaggplus_mod``): the round is lost to one absent site. After setup,
    only the sites that answered count as sampled."""
    from flwr.server.workflow import SecAggPlusWorkflow

    class _SecAggPlus(SecAggPlusWorkflow):
        def setup_stage(self, grid, context, state):
            ok = super().setup_stage(grid, context, state)
            state.sampled_node_ids = set(state.active_node_ids)
            return ok

    return _SecAggPlus(num_shares=settings.secagg_shares, reconstruction_threshold=settings.secagg_threshold,
                       max_weight=1.0, clipping_range=settings.secagg_clip_range,
                       quantization_range=QUANTIZATION_RANGE, timeout=settings.round_timeout)
