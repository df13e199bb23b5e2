"""mmdomain_federated.tracking: a federated run folder (a real in-process run with central DP) and
a ``fed compare`` result logged to MLflow's embedded file store, read back with MLflow's client:
per-round and per-site metrics, epsilon, the ledger, model and reports as artifacts."""

import json
import os
import shutil

import pytest

from mmdomain.tracking import STORE_FOLDER, TrackingError
from mmdomain_federated import task
from mmdomain_federated.compare import markdown
from mmdomain_federated.inprocess import LocalGrid
from mmdomain_federated.server_app import run_server
from mmdomain_federated.settings import Settings
from mmdomain_federated.tracking import log_compare, log_fed_run

FAST = {"max-steps": 1, "readiness": False, "batch-size": 16, "local-batch-size": 0}


@pytest.fixture(scope="module")
def fed_run(tmp_path_factory):
    """2 toy sites, 2 rounds with central DP (an epsilon per round, a ledger row per site): ~10 s."""
    from mmdomain.plugins import get_registry

    out = tmp_path_factory.mktemp("fed") / "run"
    root = task.synthetic_root(get_registry(), "toy", 2, 0, True)
    s = Settings.from_run_config({**FAST, "num-server-rounds": 2, "max-steps": 1, "central-dp": True,
                                  "noise-multiplier": 1.0, "data-root": str(root), "out-dir": str(out)})
    run_server(LocalGrid(2, s.as_run_config()), s, out, echo=False)
    return out


def _client(uri):
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads its file store only with this
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_fed_run_is_read_back_per_round_per_site_with_epsilon(fed_run, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracked = log_fed_run(fed_run)
    assert tracked.uri == (fed_run / STORE_FOLDER).as_uri() and tracked.experiment == "mmdomain-fed"
    client = _client(tracked.uri)
    run = client.get_run(tracked.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mmdomain.stopped"] == "completed"
    params = run.data.params
    assert params["num-server-rounds"] == "2" and params["central-dp"] == "true" and params["dataset"] == "toy"
    assert params["out-dir"] == "run" and params["data-root"] == "sites"  # path params: their last component only
    assert not any(str(fed_run.parent) in v or "mmdomain-fed-synth" in v for v in params.values())
    summary = json.loads((fed_run / "summary.json").read_text())
    history = summary["history"]
    assert [r["round"] for r in history] == [1, 2]
    for key in ("train-loss", "eval-loss", "eval-accuracy", "epsilon", "groups/fusion"):
        expected = [(r["round"], pytest.approx(r[key] if "/" not in key else r["groups"]["fusion"])) for r in history]
        assert _history(client, tracked.run_id, key) == expected, key
    eps = [v for _, v in _history(client, tracked.run_id, "epsilon")]
    assert 0 < eps[0] < eps[1] == pytest.approx(summary["epsilon"])  # spent grows each round
    sites = sorted(history[0]["per-site"])
    assert len(sites) == 2
    for site in sites:
        expected = [(r["round"], pytest.approx(r["per-site"][site]["eval-loss"])) for r in history]
        assert _history(client, tracked.run_id, f"site-{site}/eval-loss") == expected
        final = summary["final"]["per_site"][site]["accuracy"]
        assert _history(client, tracked.run_id, f"site-{site}/final/accuracy") == [(2, pytest.approx(final))]
    assert _history(client, tracked.run_id, "final/accuracy") == [(2, pytest.approx(summary["final"]["overall"]
                                                                                 ["accuracy"]))]
    artifacts = {a.path for a in client.list_artifacts(tracked.run_id)}
    assert {"summary.json", "privacy-ledger.jsonl", "events.log", "model.safetensors", "run-config.json"} <= artifacts
    ledger = client.download_artifacts(tracked.run_id, "privacy-ledger.jsonl", str(fed_run.parent))
    assert open(ledger).read() == (fed_run / "privacy-ledger.jsonl").read_text()
    assert len(open(ledger).read().splitlines()) == 4  # a row per site per release


def test_compare_result_is_a_parent_run_with_a_nested_run_per_seed(fed_run, tmp_path):
    """The result in ``compare.run_compare``'s shape (its ``markdown`` renders it); seed 3's
    federated folder is the real run above, seed 4 has none."""
    out = tmp_path / "compare"
    shutil.copytree(fed_run, out / "seed-3" / "federated", ignore=shutil.ignore_patterns(STORE_FOLDER))
    boot = {"metric": "macro_auroc", "rows": 48, "reference": 0.707, "others": {"site-0": 0.589, "site-1": 0.590},
            "margin": 0.117, "interval": [-0.049, 0.210], "level": 0.95, "beats_all_share": 0.912, "resamples": 1000,
            "undefined_resamples": 0, "compared": ["site-0", "site-1"]}
    runs = [{"seed": 3, "metric": "macro_auroc", "test_samples": 48, "federated": 0.707,
             "local": {"site-0": 0.589, "site-1": 0.590}, "margin": 0.117, "bootstrap": boot},
            {"seed": 4, "metric": "macro_auroc", "test_samples": 48, "federated": 0.55,
             "local": {"site-0": 0.60, "site-1": 0.58}, "margin": -0.05, "bootstrap": None}]
    result = {"dataset": "toy", "sites": 2, "rounds": 2, "local_epochs": 1, "engine": "in-process", "quick": True,
              "runs": runs, "wins": 1, "seeds": 2, "mean_margin": 0.0335, "min_margin": -0.05, "max_margin": 0.117}
    (out / "compare.json").write_text(json.dumps(result))
    (out / "compare.md").write_text(markdown(result))
    tracked = log_compare(result, out, uri=(tmp_path / "store").as_uri())
    client = _client(tracked.uri)
    parent = client.get_run(tracked.run_id)
    assert parent.data.params["seeds"] == "[3, 4]" and parent.data.params["dataset"] == "toy"
    assert parent.data.metrics["wins"] == 1 and parent.data.metrics["mean_margin"] == pytest.approx(0.0335)
    assert {a.path for a in client.list_artifacts(tracked.run_id)} == {"compare.json", "compare.md"}
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{tracked.run_id}'")
    by_name = {c.info.run_name: c for c in children}
    assert set(by_name) == {"seed-3", "seed-4"} and all(c.info.status == "FINISHED" for c in children)
    seed3, seed4 = by_name["seed-3"], by_name["seed-4"]
    assert seed3.data.params["seed"] == "3" and seed3.data.params["num-server-rounds"] == "2"
    assert seed3.data.metrics["margin"] == pytest.approx(0.117)
    assert seed3.data.metrics["local/site-1"] == pytest.approx(0.590)
    assert seed3.data.metrics["bootstrap/interval-low"] == pytest.approx(-0.049)
    assert seed3.data.metrics["bootstrap/interval-high"] == pytest.approx(0.210)
    assert [s for s, _ in _history(client, seed3.info.run_id, "eval-loss")] == [1, 2]  # its federated run's rounds
    assert {"model.safetensors", "summary.json"} <= {a.path for a in client.list_artifacts(seed3.info.run_id)}
    assert seed4.data.metrics["margin"] == pytest.approx(-0.05) and "eval-loss" not in seed4.data.metrics
    assert client.list_artifacts(seed4.info.run_id) == []


def test_unwritable_store_is_a_clear_error_that_keeps_the_run_folder(fed_run, tmp_path):
    before = sorted(p.name for p in fed_run.iterdir())
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(TrackingError, match=r"could not log to file://.*a-file.*outputs are kept in"):
        log_fed_run(fed_run, uri=(blocker / "mlruns").as_uri())
    assert sorted(p.name for p in fed_run.iterdir()) == before
    with pytest.raises(TrackingError, match="no summary.json"):
        log_fed_run(tmp_path)
