"""Server-side adaptive optimisers (``strategy = fedadam | fedyogi | fedadagrad``; numpy only).

Adaptive Federated Optimization (Reddi et al., ICLR 2021): the round's average minus the global
model is a pseudo-gradient ``d``; the server keeps moments of it and steps
``x + lr * m / (sqrt(v) + tau)`` instead of taking the average. The rules are those of Flower's
``FedAdam`` / ``FedYogi`` / ``FedAdagrad`` (``flwr.serverapp.strategy``), FedAdam's bias
correction ``sqrt(1 - beta2^(t+1)) / (1 - beta1^(t+1))`` included (a test checks equality with
Flower's own classes). They are restated here because Flower's compute them inside its
``aggregate_train`` on its own FedAvg average, over every array and every round, and here:

- the average is this app's (modality-aware, robust or central-DP noised: the optimiser is
  post-processing of the release), so it stays the pseudo-gradient's source;
- only the parameter groups the round averaged (``used``: some site sent them) step, and count
  their own steps ``t``: the encoder of a modality no site held this round keeps its values and
  its moments (Flower's would move it by its first moment, with ``d = 0``);
- buffers (BatchNorm running statistics and step counters) take the average as it is: they are
  statistics, not parameters, and a step of size ``lr`` on a running variance could make it
  negative.

``state()`` / ``load()``: the moments and step counts, which a checkpoint keeps (``run_state``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from .groups import param_group
from .settings import Settings


class ServerOptimiser:
    def __init__(self, rule: str, lr: float, beta1: float, beta2: float, tau: float,
                 buffers: Iterable[str] = ()):
        if rule not in ("fedadam", "fedyogi", "fedadagrad"):
            raise ValueError(f"unknown server optimiser {rule!r}")
        self.rule, self.lr, self.tau = rule, lr, tau
        self.beta1 = 0.0 if rule == "fedadagrad" else beta1  # FedAdagrad: m = d (Flower's beta_1 = 0)
        self.beta2 = beta2
        self.buffers = frozenset(buffers)
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}
        self.steps: dict[str, int] = {}

    @classmethod
    def from_settings(cls, s: Settings, buffers: Iterable[str] = ()) -> ServerOptimiser | None:
        if not s.server_optimiser:
            return None
        return cls(s.server_optimiser, s.server_lr, s.server_beta1, s.server_beta2, s.server_tau, buffers)

    def optimised(self, key: str, array: np.ndarray) -> bool:
        """Whether ``key`` is stepped by the rule (a float parameter), not taken as averaged."""
        return key not in self.buffers and np.issubdtype(array.dtype, np.floating)

    def step(self, current: dict[str, np.ndarray], average: dict[str, np.ndarray],
             used: dict[str, list[Any]]) -> dict[str, np.ndarray]:
        """The new global model from the ``current`` one and the round's ``average``; ``used``:
        the groups the average took from some site (``aggregation.aggregate``)."""
        updated = {g for g, sites in used.items() if sites}
        out: dict[str, np.ndarray] = {}
        for k, x in current.items():
            a = average[k]
            if not self.optimised(k, x) or param_group(k) not in updated:
                out[k] = a  # a buffer as averaged; a group nobody sent is the current one (and keeps its moments)
                continue
            x64 = x.astype(np.float64)
            d = a.astype(np.float64) - x64
            t = self.steps.get(k, 0) + 1
            m = self.beta1 * self.m.get(k, 0.0) + (1 - self.beta1) * d
            v = self.v.get(k, np.zeros_like(d))
            d2 = d * d
            if self.rule == "fedadam":
                v = self.beta2 * v + (1 - self.beta2) * d2
                lr = self.lr * np.sqrt(1 - self.beta2 ** (t + 1.0)) / (1 - self.beta1 ** (t + 1.0))
            elif self.rule == "fedyogi":
                v = v - (1 - self.beta2) * d2 * np.sign(v - d2)
                lr = self.lr
            else:
                v = v + d2
                lr = self.lr
            self.m[k], self.v[k], self.steps[k] = m.astype(np.float32), v.astype(np.float32), t
            out[k] = (x64 + lr * m / (np.sqrt(v) + self.tau)).astype(x.dtype)
        return out

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays (``m/<key>``, ``v/<key>``) and the JSON part (rule, step counts) of the state."""
        arrays = {f"m/{k}": v for k, v in self.m.items()} | {f"v/{k}": v for k, v in self.v.items()}
        return arrays, {"rule": self.rule, "steps": dict(self.steps)}

    def load(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Restore ``state()``; a ``ValueError`` when it is another rule's."""
        if meta.get("rule") != self.rule:
            raise ValueError(f"the checkpoint's server optimiser is {meta.get('rule')!r}, this run's {self.rule!r}")
        self.m = {k[2:]: v for k, v in arrays.items() if k.startswith("m/")}
        self.v = {k[2:]: v for k, v in arrays.items() if k.startswith("v/")}
        self.steps = {k: int(t) for k, t in meta.get("steps", {}).items()}
