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


def test_the_plan_counts_the_steps_private_training_takes(settings_for, registry):
    """Rounds x the steps one round's local epochs take (``local_steps``, the rule the training loop
    uses): 4 rounds of 1 epoch at n=1400, batch 256 are 4 x ceil(1400/256) = 24 steps, not the
    ceil(4 x 1400/256) = 22 of one long run, which spent less than planned (7.7 of 8)."""
    from mmdomain_federated import task

    assert plan_local(8.0, 1e-5, n=1400, batch_size=256, epochs=1, rounds=4).steps == 24
    s = settings_for(local_dp=True, target_epsilon=3.0, num_server_rounds=3, local_epochs=2, batch_size=16,
                     max_steps=0, encoder_train="toy_image=none")
    model, data = task.build(s, registry), task.load_site(s, {"partition-id": 0, "num-partitions": 2}, registry,
                                                             "train")
    stats = task.train_site(model, data, s, server_round=3)
    plan = plan_local(3.0, 1e-5, n=len(data), batch_size=16, epochs=2, rounds=3)
    assert stats["local-epsilon"] == pytest.approx(plan.epsilon)  # the last round spends exactly the plan
    with pytest.raises(ConfigError, match="at least one round"):
        plan_local(3.0, 1e-5, n=100, batch_size=10, epochs=1, rounds=0)


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
