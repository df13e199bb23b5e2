"""One real Flower simulation (Ray): `flwr run federated local` with a temp FLWR_HOME."""

import json

import pytest

from mmdomain_federated.simulate import _pids_using, run_simulation


@pytest.mark.slow
def test_real_simulation_three_sites(tmp_path):
    home = tmp_path / "flwr-home"
    out = tmp_path / "run"
    # ditto: the global model is FedAvg's, and each site's own model must survive from its training
    # rounds to the final evaluation in Flower's context state, across the simulation's actors
    result = run_simulation(3, {"num-server-rounds": 2, "out-dir": str(out), "max-steps": 3, "personalise": "ditto"},
                            flwr_home=home, timeout=420)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "completed" and summary["rounds"] == 2
    assert sum(1 for m in summary["final"]["per_site"].values() if m.get("n")) == 3  # sites that evaluated
    mine = summary["personalised"]["per_site"]
    assert len(mine) == 3 and all(m.get("personal-kept") == 1 for m in mine.values()), mine
    assert not _pids_using(str(home))  # the local SuperLink was stopped


@pytest.mark.gpu
@pytest.mark.slow
def test_simulation_shares_one_gpu_among_sites(tmp_path):
    """Three virtual sites on one GPU (0.3 of it each, Ray's fractional resources) train in bf16
    autocast on CUDA and stay within the card's memory."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here (the CPU path is test_real_simulation_three_sites)")
    out = tmp_path / "run"
    result = run_simulation(3, {"num-server-rounds": 2, "out-dir": str(out), "max-steps": 3, "device": "cuda"},
                            flwr_home=tmp_path / "flwr-home", num_gpus=0.3, timeout=420)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "completed" and summary["rounds"] == 2
    sites = summary["history"][-1]["per-site"]
    assert len(sites) == 3
    peaks = [m["gpu-peak-mib"] for m in sites.values()]
    total = torch.cuda.get_device_properties(0).total_memory / 2**20
    assert all(p > 0 for p in peaks) and sum(peaks) < 0.9 * total, peaks
