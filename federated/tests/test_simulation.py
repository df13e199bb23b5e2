"""One real Flower simulation (Ray): `flwr run federated local` with a temp FLWR_HOME."""

import json

import pytest

from mmdomain_federated.simulate import _pids_using, run_simulation


@pytest.mark.slow
def test_real_simulation_three_sites(tmp_path):
    home = tmp_path / "flwr-home"
    out = tmp_path / "run"
    result = run_simulation(3, {"num-server-rounds": 2, "out-dir": str(out), "max-steps": 3}, flwr_home=home,
                            timeout=420)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "completed" and summary["rounds"] == 2
    assert len(summary["final"]["per_site"]) == 3
    assert not _pids_using(str(home))  # the local SuperLink was stopped
