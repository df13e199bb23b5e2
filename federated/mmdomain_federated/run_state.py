"""What a federated run carries from round to round, and across a restart.

``RunState.open`` starts a run or resumes it from the last checkpoint in the run folder
(``state.py``), builds the central-DP accountant (restoring its state) and repairs the privacy
ledger: a crash between the checkpoint and the ledger append leaves rows only in the
checkpoint, which are appended then, so no round is accounted twice or lost. ``commit`` is the
end of a round: history, checkpoint (the commit point), then the ledger.

Beside the global model a checkpoint keeps the server optimiser's moments
(``server-opt-<round>.npz``) and the best model so far (``best-<round>.npz``, ``best_model``),
each written before ``state.json`` names it (the commit point) and older ones removed after: a
resume continues with both, and with the early-stopping patience counter.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from mmdomain.errors import ConfigError

from .best_model import BestModel
from .budget import plan_central
from .privacy import CentralAccountant, Ledger
from .server_opt import ServerOptimiser
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
    server_opt: ServerOptimiser | None = None  # the strategy's, whose state the checkpoints keep
    best: BestModel | None = None
    best_weights: dict[str, np.ndarray] | None = None
    best_changed: bool = False  # best_weights not yet in a checkpoint
    last_state: dict[str, Any] = field(default_factory=dict)  # what the last checkpoint's state.json holds

    @classmethod
    def open(cls, settings: Settings, out_dir: Path, weights: dict[str, np.ndarray], population: int,
             log: Callable[[str], None], *, server_opt: ServerOptimiser | None = None,
             best: BestModel | None = None) -> "RunState":
        run = cls(settings, out_dir, weights, population, Ledger(out_dir / "privacy-ledger.jsonl"),
                  server_opt=server_opt, best=best)
        resumed = load_state(out_dir) if settings.resume else None
        if resumed:
            last_round, run.weights, state = resumed
            run.start_round, run.history = last_round + 1, state["history"]
            run.rejections, run.population = state.get("rejections", []), int(state["population"])
            run.last_state = {k: v for k, v in state.items() if k not in ("round", "weights")}
            log(f"resuming after round {last_round} from {out_dir}")
            run._resume_extras(state, log)
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

    def _resume_extras(self, state: dict[str, Any], log: Callable[[str], None]) -> None:
        """The server optimiser's moments and the best model from the checkpoint (``state.json``)."""
        if self.server_opt is not None:
            saved = state.get("server-opt")
            if not saved:
                log(f"{self.server_opt.rule}: the checkpoint has no server optimiser state (written by a run without "
                    f"one): its moments start at zero")
            else:
                with np.load(self.out_dir / saved["file"]) as z:
                    arrays = {k: z[k] for k in z.files}
                try:
                    self.server_opt.load(arrays, saved)
                except ValueError as exc:
                    raise ConfigError(f"run config: strategy={self.settings.strategy} cannot resume from {self.out_dir}: "
                                      f"{exc}; use another out-dir or resume=false") from None
        if self.best is not None and (saved := state.get("best")):
            if not self.best.load(saved):
                log(f"the checkpoint tracked the best model by {saved.get('metric')} ({saved.get('mode')}); this run "
                    f"tracks {self.best.metric} ({self.best.mode}): starting afresh")
                self.last_state.pop("best", None)
            elif saved.get("file"):
                with np.load(self.out_dir / saved["file"]) as z:
                    self.best_weights = {k: z[k] for k in z.files}
                log(f"best model so far: round {self.best.round} ({self.best.metric} {self.best.value:.4g}), "
                    f"{self.best.stale} scored models since")

    def offer_best(self, model_round: int, value: float, weights: dict[str, np.ndarray]) -> bool:
        """Score the model of ``model_round`` (``weights``); True when it is the new best (kept, and
        written with the next checkpoint)."""
        if self.best is None or not self.best.offer(model_round, value):
            return False
        self.best_weights, self.best_changed = weights, True
        return True

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
        state: dict[str, Any] = {
            "history": self.history, "rejections": self.rejections, "population": self.population,
            "accountant": self.accountant.state_dict() if self.accountant else None,
            "ledger-rows": ledger_rows, "settings": self.settings.as_run_config()}
        if self.server_opt is not None:
            arrays, meta = self.server_opt.state()
            state["server-opt"] = {"file": _save_arrays(self.out_dir, f"server-opt-{rnd}.npz", arrays), **meta}
        self._save(rnd, state)
        if ledger_rows:
            self.ledger.append(ledger_rows)

    def commit_best(self) -> None:
        """A score taken after the last round (the last model's validation), and the best model when
        it changed: into the last checkpoint (a restart does not score it again)."""
        if self.best is not None and self.history:
            self._save(int(self.history[-1]["round"]), dict(self.last_state))

    def _save(self, rnd: int, state: dict[str, Any]) -> None:
        """The checkpoint of round ``rnd`` (with the best model, when tracked); stale array files go after it."""
        if self.best is not None:
            best = {**self.best.state(), "file": (self.last_state.get("best") or {}).get("file")}
            if self.best_changed and self.best_weights is not None:
                best["file"] = _save_arrays(self.out_dir, f"best-{self.best.round}.npz", self.best_weights)
            state["best"] = best
        save_state(self.out_dir, rnd, self.weights, state)
        self.last_state, self.best_changed = state, False
        keep = {(state.get("server-opt") or {}).get("file"), (state.get("best") or {}).get("file")}
        for old in [*self.out_dir.glob("server-opt-*.npz"), *self.out_dir.glob("best-*.npz")]:
            if old.name not in keep:
                old.unlink(missing_ok=True)

    @property
    def epsilon(self) -> float | None:
        return self.accountant.epsilon if self.accountant else None


def _save_arrays(out_dir: Path, name: str, arrays: dict[str, np.ndarray]) -> str:
    """``arrays`` to ``out_dir / name`` atomically (temp file + rename); the name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (name + ".tmp")
    with tmp.open("wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, out_dir / name)
    return name
