"""A real deployment on loopback: TLS + SuperNode auth; an unregistered node and a plain-text
connection are refused; a SuperNode killed after round 1 does not stop the run (the final
evaluation goes on with the two sites left; one round keeps the test short). Short rounds
(Flower polls every 3 s; each message starts a fresh ClientApp process). One deployment for
all of it: starting a second one would double the (slow) wall time."""

import json
import signal
import threading

import pytest

from mmdomain.plugins import get_registry
from mmdomain_federated import task
from mmdomain_federated.deploy import LocalDeployment, make_site_keys, wait_for_text


@pytest.mark.slow
def test_deployment_tls_auth_refusals_and_a_killed_supernode(tmp_path):
    rounds = 1
    sites = task.site_folders(task.synthetic_root(get_registry(), "toy", 3, 0, True))[:3]
    dep = LocalDeployment(tmp_path)
    runner = None
    try:
        dep.start_superlink()
        for i, site in enumerate(sites):
            priv, pub = make_site_keys(tmp_path / "keys", f"site-{i}")
            dep.register(pub)
            dep.start_supernode(f"site-{i}", priv, {"data-root": str(site)})
        stranger, _ = make_site_keys(tmp_path / "keys", "stranger")  # never registered
        unregistered = dep.start_supernode("unregistered", stranger, {"data-root": str(sites[0])}, retries=50,
                                           warm=False)  # refused before any ClientApp could start
        plaintext = dep.start_supernode("plaintext", None, {"data-root": str(sites[0])}, insecure=True, retries=50,
                                        warm=False)
        out = tmp_path / "run"
        result = {}
        config = {"num-server-rounds": rounds, "max-steps": 2, "readiness": False, "min-sites": 2,
                  "expected-sites": 3, "out-dir": str(out), "round-timeout": 90}
        runner = threading.Thread(target=lambda: result.update(r=dep.run_app(config, timeout=420)), daemon=True)
        runner.start()
        # after round 1 is aggregated, site-2's SuperNode dies (SIGKILL to its process group, by PID)
        assert wait_for_text(out / "events.log", "round 1: {", 300, runner.is_alive), \
            (out / "events.log").read_text() if (out / "events.log").exists() else result
        killed = dep.procs.procs["site-2"]
        dep.procs.stop("site-2", signal.SIGKILL)
        assert killed.poll() is not None
        runner.join(timeout=400)
        assert not runner.is_alive(), "flwr run did not finish"
        r = result["r"]
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["stopped"] == "completed" and summary["rounds"] == rounds, summary["stopped"]
        assert summary["history"][0]["sites"] == 3
        assert sum(1 for m in summary["final"]["per_site"].values() if m.get("n")) == 2  # sites that evaluated
        log = (out / "events.log").read_text()
        assert "site 1 failed" not in log  # the SuperLink's error reply is about the dead site, not node 1
        # neither got in: only the registered TLS sites trained and evaluated; both keep failing to connect
        for name in ("unregistered", "plaintext"):
            assert "Connection attempt failed" in dep.procs.log(name), dep.procs.log(name)[-1500:]
        assert "unregistered" not in json.dumps(summary)
    finally:
        dep.close()
        if runner is not None:
            runner.join(timeout=60)  # flwr run ends once the SuperLink is gone
    for proc in dep.procs.procs.values():
        assert proc.poll() is not None  # every process we started is gone
