"""A real deployment on loopback: TLS + SuperNode auth; an unregistered node and a plain-text
connection are refused. One short round (Flower polls every 3 s; each message starts a fresh
ClientApp process)."""

import json
import time

import pytest

from mmdomain.plugins import get_registry
from mmdomain_federated import task
from mmdomain_federated.deploy import LocalDeployment, make_site_keys


@pytest.mark.slow
def test_deployment_tls_auth_and_refusals(tmp_path):
    settings = task.Settings.from_run_config({"max-steps": 2})
    sites = task.site_folders(task.synthetic_root(get_registry(), "toy", 2, 0, True))[:2]
    dep = LocalDeployment(tmp_path)
    try:
        dep.start_superlink()
        for i, site in enumerate(sites):
            priv, pub = make_site_keys(tmp_path / "keys", f"site-{i}")
            dep.register(pub)
            dep.start_supernode(f"site-{i}", priv, {"data-root": str(site)})
        stranger, _ = make_site_keys(tmp_path / "keys", "stranger")  # never registered
        unregistered = dep.start_supernode("unregistered", stranger, {"data-root": str(sites[0])}, retries=50)
        plaintext = dep.start_supernode("plaintext", None, {"data-root": str(sites[0])}, insecure=True, retries=50)
        out = tmp_path / "run"
        result = dep.run_app({"num-server-rounds": 1, "max-steps": 2, "readiness": False, "min-sites": 2,
                              "expected-sites": 2, "out-dir": str(out), "round-timeout": 240}, timeout=420)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["stopped"] == "completed" and summary["rounds"] == 1
        assert summary["history"][0]["sites"] == 2 and len(summary["final"]["per_site"]) == 2
        # neither got in: only the 2 registered TLS sites trained and evaluated; both keep failing to connect
        for name in ("unregistered", "plaintext"):
            assert "Connection attempt failed" in dep.procs.log(name), dep.procs.log(name)[-1500:]
        assert "unregistered" not in json.dumps(summary)
    finally:
        dep.close()
    for proc in dep.procs.procs.values():
        assert proc.poll() is not None  # every process we started is gone
