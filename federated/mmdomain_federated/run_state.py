"""What a federated run carries from round to round, and across a restart.

``RunState.open`` starts a run or resumes it from the last checkpoint in the run folder
(``state.py``), builds the central-DP accountant (restoring its state) and repairs the privacy
ledger: a crash between the checkpoint and the ledger append leaves rows only in the
checkpoint, which are appended then, so no round is accounted twice or lost. ``commit`` is the
end of a round: history, checkpoint (the commit point), then the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .budget import plan_central
from .privacy import CentralAccountant, Ledger
from .settings import Settings
from .state import load_state, save_state

CENTRAL_MECHANISM = "gaussian-central-site-level"


@dataclass
class RunState:
    settings: Settings
    out_dir: Path
    weights: dict[str, np.ndarray]  # the global model
    population: int  # sites the accountant assumes (fixed at the first start)
    ledger: Ledger
    start_round: int = 1
    history: list[dict[str, Any]] = field(default_factory=list)
    rejections: list[dict[str, Any]] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)  # site -> its policy's reason (this start only)
    accountant: CentralAccountant | None = None

    @classmethod
    def open(cls, settings: Settings, out_dir: Path, weights: dict[str, np.ndarray], population: int,
             log: Callable[[str], None]) -> "RunState":
        run = cls(settings, out_dir, weights, population, Ledger(out_dir / "privacy-ledger.jsonl"))
        resumed = load_state(out_dir) if settings.resume else None
        if resumed:
            last_round, run.weights, state = resumed
            run.start_round, run.history = last_round + 1, state["history"]
            run.rejections, run.population = state.get("rejections", []), int(state["population"])
            log(f"resuming after round {last_round} from {out_dir}")
        if settings.central_dp and settings.target_epsilon > 0:  # planned, on the server's own accountant
            settings.noise_multiplier = plan_central(settings.target_epsilon, settings.target_delta,
                                                     rounds=settings.num_server_rounds, sampled=run.population,
                                                     population=run.population)
            log(f"central DP: noise multiplier {settings.noise_multiplier:.3f} planned for epsilon "
                f"{settings.target_epsilon:g} over {settings.num_server_rounds} rounds of {run.population} sites")
        if settings.central_dp:
            run.accountant = CentralAccountant(noise_multiplier=settings.noise_multiplier, clip=settings.clip_norm,
                                               target_delta=settings.target_delta, population=run.population,
                                               max_epsilon=settings.max_epsilon or None)
            if resumed:
                run.accountant.load_state_dict(resumed[2]["accountant"])
                run._repair_ledger(resumed[2].get("ledger-rows", []))
        return run

    def _repair_ledger(self, checkpointed: list[dict[str, Any]]) -> None:
        """Append the last checkpoint's ledger rows the ledger lacks (a crash before the append)."""
        done = self.ledger.rounds()
        missing = [r for r in checkpointed if int(r["round"]) not in done]
        if missing:
            self.ledger.append(missing)

    @property
    def resumed(self) -> bool:
        return self.start_round > 1

    def budget_stop(self, rnd: int) -> str | None:
        """Why round ``rnd`` must not run under the privacy budget, or None."""
        if self.accountant and self.accountant.would_exceed(self.population):
            return (f"privacy budget: round {rnd} would take epsilon past {self.settings.max_epsilon:g} "
                    f"(now {self.accountant.epsilon:.3f}); keeping the model of round {rnd - 1}")
        return None

    def spend(self, rnd: int, sites: list[Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """A central-DP release this round: its record fields and ledger rows (none without DP)."""
        if not self.accountant:
            return {}, []
        s = self.settings
        eps = self.accountant.spend(self.population)
        rows = [{"round": rnd, "site": site, "mechanism": CENTRAL_MECHANISM, "noise": s.noise_multiplier,
                 "clip": s.clip_norm, "epsilon": eps, "delta": s.target_delta} for site in sites]
        return {"epsilon": eps, "delta": s.target_delta}, rows

    def commit(self, rnd: int, weights: dict[str, np.ndarray], record: dict[str, Any],
               ledger_rows: list[dict[str, Any]]) -> None:
        """The round is done: history, the checkpoint (commit point), then the ledger."""
        self.weights = weights
        self.history.append(record)
        save_state(self.out_dir, rnd, weights, {
            "history": self.history, "rejections": self.rejections, "population": self.population,
            "accountant": self.accountant.state_dict() if self.accountant else None,
            "ledger-rows": ledger_rows, "settings": self.settings.as_run_config()})
        if ledger_rows:
            self.ledger.append(ledger_rows)

    @property
    def epsilon(self) -> float | None:
        return self.accountant.epsilon if self.accountant else None
