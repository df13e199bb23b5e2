import json

from mmdomain_federated.inprocess import LocalGrid
from mmdomain_federated.privacy import CentralAccountant, Ledger
from mmdomain_federated.server_app import run_server

DP = dict(central_dp=True, noise_multiplier=1.5, clip_norm=1.0, target_delta=1e-3)


def test_accountant_epsilon_grows_and_budget_projection():
    acc = CentralAccountant(noise_multiplier=1.5, clip=1.0, target_delta=1e-3, population=3, max_epsilon=3.0)
    eps = [acc.spend(3) for _ in range(3)]
    assert 0 < eps[0] < eps[1] < eps[2]
    restored = CentralAccountant(noise_multiplier=1.5, clip=1.0, target_delta=1e-3, population=3, max_epsilon=3.0)
    restored.load_state_dict(json.loads(json.dumps(acc.state_dict())))
    assert restored.epsilon == acc.epsilon and restored.releases == 3


def test_epsilon_reported_every_round_and_ledger(settings_for, tmp_path):
    s = settings_for(num_server_rounds=2, **DP)
    summary = run_server(LocalGrid(3, s.as_run_config()), s, tmp_path)
    eps = [h["epsilon"] for h in summary["history"]]
    assert len(eps) == 2 and eps[0] < eps[1]
    rows = Ledger(tmp_path / "privacy-ledger.jsonl").rows()
    assert len(rows) == 6 and {r["round"] for r in rows} == {1, 2}
    assert set(rows[0]) >= {"round", "site", "mechanism", "noise", "clip", "epsilon"}


def test_budget_stops_before_it_would_be_exceeded(settings_for, tmp_path):
    acc = CentralAccountant(noise_multiplier=1.5, clip=1.0, target_delta=1e-3, population=3)
    e2 = [acc.spend(3) for _ in range(2)][-1]
    e3 = acc.spend(3)
    budget = (e2 + e3) / 2  # rounds 1-2 fit, round 3 would not
    s = settings_for(num_server_rounds=5, max_epsilon=budget, **DP)
    summary = run_server(LocalGrid(3, s.as_run_config()), s, tmp_path)
    assert summary["rounds"] == 2 and "privacy budget" in summary["stopped"]
    assert summary["epsilon"] <= budget


def test_resume_after_crash_neither_loses_nor_repeats_accounting(settings_for, tmp_path):
    s = settings_for(num_server_rounds=3, stop_after_round=2, **DP)
    first = run_server(LocalGrid(3, s.as_run_config()), s, tmp_path)
    assert "simulated crash" in first["stopped"] and len(first["history"]) == 2
    # the crash lands between the checkpoint and the ledger append of round 2
    ledger = tmp_path / "privacy-ledger.jsonl"
    lines = ledger.read_text().splitlines()
    ledger.write_text("\n".join(l for l in lines if json.loads(l)["round"] != 2) + "\n")
    s2 = settings_for(num_server_rounds=3, **DP)
    second = run_server(LocalGrid(3, s2.as_run_config()), s2, tmp_path)
    assert second["rounds"] == 3 and [h["round"] for h in second["history"]] == [1, 2, 3]
    rows = Ledger(ledger).rows()
    assert sorted(r["round"] for r in rows) == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    fresh = CentralAccountant(noise_multiplier=1.5, clip=1.0, target_delta=1e-3, population=3)
    for _ in range(3):
        fresh.spend(3)
    assert abs(second["epsilon"] - fresh.epsilon) < 1e-9
