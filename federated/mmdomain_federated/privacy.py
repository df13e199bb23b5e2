"""Central-DP accounting: Flower's RDP accountant, an append-only ledger, a budget.

Each round with central DP is one sampled Gaussian release (site-level DP: the neighbouring
datasets differ by one whole site). ``before_round`` says whether the next release would
exceed ``max_epsilon``; the server then stops and keeps the last model within budget.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from flwr.serverapp import GaussianPrivacyEvent, PrivacyConfig, RdpAccountant
from flwr.supercore.privacy_accounting import NeighboringRelation, SamplingMethod

from mmdomain.jsonout import dumps


class CentralAccountant:
    def __init__(self, *, noise_multiplier: float, clip: float, target_delta: float, population: int,
                 max_epsilon: float | None = None):
        self.noise_multiplier, self.clip, self.population = noise_multiplier, clip, population
        self.max_epsilon = max_epsilon or None
        self.config = PrivacyConfig(target_delta=target_delta, population_size=population,
                                    neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                                    sampling_method=SamplingMethod.POISSON, max_epsilon=self.max_epsilon)
        self.accountant = RdpAccountant(self.config)

    def event(self, sample_size: int) -> GaussianPrivacyEvent:
        return GaussianPrivacyEvent(noise_multiplier=self.noise_multiplier, sample_size=sample_size,
                                    population_size=self.population)

    def would_exceed(self, sample_size: int) -> bool:
        return self.max_epsilon is not None and self.accountant.would_exceed(self.event(sample_size))

    def spend(self, sample_size: int) -> float:
        self.accountant.compose(self.event(sample_size))
        return self.epsilon

    @property
    def epsilon(self) -> float:
        return self.accountant.get_epsilon(self.config.target_delta) if self.accountant.num_releases else 0.0

    @property
    def releases(self) -> int:
        return self.accountant.num_releases

    def state_dict(self) -> dict[str, Any]:
        return self.accountant.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.accountant.load_state_dict(state)


def sampled_population(config_population: int) -> int:
    return max(1, config_population)


class Ledger:
    """Append-only JSON lines: one row per site per release (round, site, mechanism, noise, clip, epsilon)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, rows: list[dict[str, Any]]) -> None:
        with self.path.open("a") as f:
            for row in rows:
                f.write(dumps(row, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def rounds(self) -> set[int]:
        return {int(r["round"]) for r in self.rows()}
