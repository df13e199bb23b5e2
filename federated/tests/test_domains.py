"""Each installed domain dataset federates over >= 3 sites (in-process real apps, 1 round).
The app knows the domains only through the registry: skipped when a plugin is not installed."""

import json

import pytest

from mmdomain_federated.inprocess import LocalGrid
from mmdomain_federated.server_app import run_server

DOMAINS = ["medical", "s2s1_scenes"]


@pytest.mark.slow
@pytest.mark.parametrize("dataset", DOMAINS)
def test_domain_federates_over_three_sites(dataset, registry, settings_for, tmp_path):
    if dataset not in registry.names("dataset"):
        pytest.skip(f"dataset {dataset!r} is not installed")
    s = settings_for(dataset=dataset, num_server_rounds=1, max_steps=1, batch_size=8, readiness=True)
    summary = run_server(LocalGrid(3, s.as_run_config()), s, tmp_path)
    assert summary["stopped"] == "completed" and summary["history"][0]["sites"] == 3
    assert any(m.get("n") for m in summary["final"]["per_site"].values()), "no site could evaluate the final model"
    readiness = json.loads((tmp_path / "readiness.json").read_text())
    assert len(readiness) == 3 and all("splits" in r for r in readiness.values())
