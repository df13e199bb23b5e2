"""The best global model by a validation metric (``checkpoint-metric``, ``checkpoint-mode``) and
early stopping (``early-stopping-patience``). No flwr, no torch.

A round's record carries the validation metrics (``eval-*``) of one model: with ``fused-eval``
those of the model the round *started* from (the sites score the incoming model on their val
split before training: round ``r`` scores the model of round ``r - 1``, round 1 the initial one);
without it those of the model the round produced (a separate evaluation). ``scored_round`` says
which. ``BestModel.offer`` takes each score; the run keeps the best model's weights
(``run_state``: ``best-<round>.npz``, named in ``state.json``) and writes ``best.safetensors``
(``server_app``). Patience counts the models scored since the best without improving on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mmdomain.errors import ConfigError

from .settings import Settings

#: Record keys that start with ``eval-`` but are not metrics of the model.
NOT_METRICS = ("eval-n", "eval-skipped")


def scored_round(record_round: int, fused_eval: bool) -> int:
    """The model a round record's validation metrics belong to (see the module's docstring)."""
    return record_round - 1 if fused_eval else record_round


def metric_value(record: dict[str, Any], metric: str) -> float | None:
    """``metric`` of a round record; None when the round has no validation metrics at all (no site
    evaluated); a ``ConfigError`` naming the ones it has when ``metric`` is not among them."""
    if metric in record:
        return float(record[metric])
    have = sorted(k for k in record if k.startswith("eval-") and "/" not in k and k not in NOT_METRICS
                  and not k.endswith("-samples"))
    if not have:
        return None
    raise ConfigError(f"run config: checkpoint-metric {metric!r} is not a validation metric of this run; "
                      f"the rounds report {', '.join(have)}")


@dataclass
class BestModel:
    metric: str
    mode: str = "max"  # max | min
    patience: int = 0  # 0 = no early stopping
    round: int | None = None  # the best model's round (0 = the initial model), None before any score
    value: float | None = None
    stale: int = 0  # models scored since the best without improving on it
    scores: dict[int, float] = field(default_factory=dict)  # model round -> its score

    @classmethod
    def from_settings(cls, s: Settings) -> BestModel | None:
        if not s.checkpoint_metric:
            return None
        return cls(s.checkpoint_metric, s.checkpoint_mode, s.early_stopping_patience)

    def better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.value is None:
            return True
        return value > self.value if self.mode == "max" else value < self.value

    def offer(self, model_round: int, value: float) -> bool:
        """Score the model of ``model_round``; whether it is the new best (strictly better; a
        non-finite score never is). A model scored before (a resumed round) is not counted twice."""
        if model_round in self.scores:
            return False
        self.scores[model_round] = value
        if self.better(value):
            self.round, self.value, self.stale = model_round, value, 0
            return True
        self.stale += 1
        return False

    @property
    def last_scored(self) -> int | None:
        return max(self.scores) if self.scores else None

    def exhausted(self) -> bool:
        """Whether early stopping is due: ``patience`` models scored since the best, none better."""
        return self.patience > 0 and self.round is not None and self.stale >= self.patience

    def stop_reason(self) -> str:
        return (f"early stopping: {self.metric} has not improved for {self.stale} scored models "
                f"(early-stopping-patience {self.patience}); best {self.value:.4g} at round {self.round}")

    def state(self) -> dict[str, Any]:
        return {"metric": self.metric, "mode": self.mode, "round": self.round, "value": self.value,
                "stale": self.stale, "scores": {str(k): v for k, v in sorted(self.scores.items())}}

    def load(self, state: dict[str, Any]) -> bool:
        """Restore ``state()`` when it tracked the same metric and mode (else start afresh: False)."""
        if state.get("metric") != self.metric or state.get("mode") != self.mode:
            return False
        self.round, self.value, self.stale = state.get("round"), state.get("value"), int(state.get("stale", 0))
        self.scores = {int(k): (float(v) if v is not None else math.nan) for k, v in state.get("scores", {}).items()}
        return True

    def summary(self, file: str | None) -> dict[str, Any]:
        return {"metric": self.metric, "mode": self.mode, "round": self.round, "value": self.value, "file": file,
                "scores": {str(k): v for k, v in sorted(self.scores.items())}}
