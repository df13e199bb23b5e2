"""Budget planning: the planned noise reaches the target epsilon, and no less noise would."""

import pytest

from mmdomain.errors import ConfigError
from mmdomain_federated.budget import local_epsilon, plan_central, plan_local


@pytest.mark.parametrize("target", [1.0, 3.0, 8.0])
def test_local_plan_spends_at_most_the_target_and_is_tight(target):
    plan = plan_local(target, 1e-5, n=2000, batch_size=256, epochs=8)
    assert plan.steps == 63 and plan.sample_rate == pytest.approx(0.128)
    assert plan.epsilon <= target
    assert local_epsilon(plan.noise_multiplier * 0.95, plan.sample_rate, plan.steps, 1e-5) > target  # tight
    assert plan_local(target, 1e-5, n=2000, batch_size=256, epochs=16).noise_multiplier > plan.noise_multiplier


def test_more_data_needs_less_noise():
    small = plan_local(3.0, 1e-5, n=200, batch_size=64, epochs=8)
    large = plan_local(3.0, 1e-5, n=5000, batch_size=64, epochs=8)
    assert large.noise_multiplier < small.noise_multiplier


def test_central_plan_matches_the_servers_accountant():
    from mmdomain_federated.privacy import CentralAccountant

    noise = plan_central(8.0, 1e-5, rounds=8, sampled=3, population=3)
    for factor, within in ((1.0, True), (0.9, False)):
        acc = CentralAccountant(noise_multiplier=noise * factor, clip=1.0, target_delta=1e-5, population=3)
        for _ in range(8):
            acc.spend(3)
        assert (acc.epsilon <= 8.0) is within


def test_bad_targets_are_config_errors():
    with pytest.raises(ConfigError, match="target-epsilon must be a positive"):
        plan_local(0, 1e-5, n=100, batch_size=10, epochs=1)
    with pytest.raises(ConfigError, match="target-delta"):
        plan_local(1, 2.0, n=100, batch_size=10, epochs=1)
    with pytest.raises(ConfigError, match="no training sample"):
        plan_local(1, 1e-5, n=0, batch_size=10, epochs=1)
