"""Privacy budget planning: from a target epsilon to the noise that reaches it, never a guess.

Local DP-SGD (each patient's record at each site, the default for a few hospitals): a site
with ``n`` records, Poisson-sampled batches of expected size ``batch_size`` (rate ``q =
batch_size / n``) and ``epochs`` passes over its data in the WHOLE training (rounds x local
epochs) takes ``epochs / q`` noisy steps; Opacus' RDP accountant gives the smallest noise
multiplier whose epsilon after those steps is at most the target. Each site plans from its own
``n``, which never leaves it.

Central DP (a whole site, meaningful with many sites): ``rounds`` Gaussian releases of the
clipped sum of the sampled sites' updates, accounted with Flower's RDP accountant (the one the
server uses during the run), the noise found by bisection.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from mmdomain.errors import ConfigError

from .privacy import CentralAccountant


@dataclass(frozen=True)
class LocalPlan:
    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon: float  # what those steps spend at ``delta`` (<= the target)
    delta: float


def _check(target_epsilon: float, delta: float) -> None:
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise ConfigError(f"target-epsilon must be a positive number, got {target_epsilon}")
    if not 0 < delta < 1:
        raise ConfigError(f"target-delta must be in (0, 1), got {delta}")


def local_steps(n: int, batch_size: int, epochs: float) -> tuple[float, int]:
    """(sample rate, steps) of ``epochs`` passes with Poisson batches of expected size ``batch_size``:
    the one rule both the planner and the private training loop (``local_dp.private_training``,
    once per round) count steps by."""
    if n < 1:
        raise ConfigError("a site with no training sample cannot plan a privacy budget")
    rate = min(1.0, batch_size / n)
    return rate, max(1, math.ceil(epochs / rate))


def local_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "optimal order is the largest alpha": a looser, still valid bound
        return float(accountant.get_epsilon(delta=delta))


@functools.lru_cache(maxsize=256)  # seconds of accountant work; a site asks the same again every round
def plan_local(target_epsilon: float, delta: float, *, n: int, batch_size: int, epochs: float,
               rounds: int = 1) -> LocalPlan:
    """The noise multiplier of local DP-SGD that spends at most ``target_epsilon`` over the training:
    ``rounds`` rounds of ``epochs`` local passes each (the steps ``local_steps`` gives, per round)."""
    _check(target_epsilon, delta)
    if rounds < 1:
        raise ConfigError(f"a privacy budget needs at least one round, got {rounds}")
    rate, per_round = local_steps(n, batch_size, epochs)
    steps = rounds * per_round
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            noise = float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=rate,
                                               steps=steps, accountant="rdp", epsilon_tolerance=0.01))
        except ValueError as exc:
            raise ConfigError(f"no noise reaches epsilon {target_epsilon} at delta {delta} with {steps} steps at "
                              f"sample rate {rate:.3g} ({exc})") from None
    return LocalPlan(noise, rate, steps, local_epsilon(noise, rate, steps, delta), delta)


def plan_central(target_epsilon: float, delta: float, *, rounds: int, sampled: int, population: int,
                 tolerance: float = 0.01) -> float:
    """The smallest noise multiplier (to ``tolerance``) whose ``rounds`` central releases, each of
    ``sampled`` of ``population`` sites, stay within ``target_epsilon``."""
    _check(target_epsilon, delta)

    def spent(noise: float) -> float:
        acc = CentralAccountant(noise_multiplier=noise, clip=1.0, target_delta=delta, population=population)
        for _ in range(rounds):
            acc.spend(sampled)
        return acc.epsilon

    low, high = 0.05, 1.0
    while spent(high) > target_epsilon:
        low, high = high, high * 2
        if high > 1e4:
            raise ConfigError(f"no noise below 1e4 reaches epsilon {target_epsilon} in {rounds} rounds")
    while high - low > tolerance:
        mid = (low + high) / 2
        low, high = (low, mid) if spent(mid) <= target_epsilon else (mid, high)
    return high
