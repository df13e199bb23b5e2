"""The real ClientApp / ServerApp code on real Messages, in-process (no Ray)."""

import json

from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from mmdomain_federated import task
from mmdomain_federated.client_app import app as client_app
from mmdomain_federated.inprocess import LocalGrid
from mmdomain_federated.records import arrays_to_numpy, numpy_to_arrays
from mmdomain_federated.server_app import run_server


def _train_message(weights, rnd=1):
    return Message(RecordDict({"arrays": numpy_to_arrays(weights), "config": ConfigRecord({"server-round": rnd,
                                                                                           "fused-eval": True})}),
                   message_type=MessageType.TRAIN, dst_node_id=101)


def test_client_train_reply_holds_only_the_site_modalities(settings_for, registry):
    s = settings_for(site_modalities="0=toy_image")
    grid = LocalGrid(2, s.as_run_config())
    weights = task.get_weights(task.build(s, registry))
    reply = client_app(_train_message(weights), grid.contexts[101])
    assert not reply.has_error()
    sent = arrays_to_numpy(reply.content["arrays"])
    assert any(k.startswith("encoders.toy_image.") for k in sent)
    assert not any(k.startswith("encoders.toy_note.") for k in sent)  # site 0 has no notes
    metrics = dict(reply.content["metrics"])
    assert metrics["count/toy_note"] == 0 and metrics["count/toy_image"] > 0
    assert "eval-loss" in metrics and metrics["num-examples"] > 0
    assert json.loads(reply.content["site"]["modalities"]) == ["toy_image"]


def test_readiness_query_is_noised_and_anonymous(settings_for):
    s = settings_for()
    grid = LocalGrid(2, s.as_run_config())
    msg = Message(RecordDict({"config": ConfigRecord({})}), message_type=MessageType.QUERY, dst_node_id=101)
    report = json.loads(client_app(msg, grid.contexts[101]).content["site"]["readiness"])
    train = report["splits"]["train"]
    assert set(train["modalities"]) == {"toy_image", "toy_note"}
    assert "toy_image+toy_note" in train["patterns"]
    assert "s0-" not in json.dumps(report)  # no sample ids


def test_policy_refuses_weaker_job_with_clear_message(settings_for, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text("min-noise-multiplier = 1.0\nmax-clip-norm = 2.0\n")
    s = settings_for(central_dp=True, noise_multiplier=0.5)
    grid = LocalGrid(2, s.as_run_config(), node_configs=[{"policy-file": str(policy)}] * 2)
    reply = client_app(_train_message({}), grid.contexts[101])
    reason = reply.content["site"]["refused"]
    assert "noise-multiplier 0.5 < the site's minimum 1" in reason
    summary = run_server(grid, s, tmp_path / "run")
    assert summary["rounds"] == 0 and "min-sites" in summary["stopped"]
    assert "noise-multiplier" in summary["stopped"]  # the refusal reason reaches the operator
    # a job meeting the policy is accepted
    ok = settings_for(central_dp=True, noise_multiplier=1.0, clip_norm=1.0)
    grid_ok = LocalGrid(2, ok.as_run_config(), node_configs=[{"policy-file": str(policy)}] * 2)
    assert "refused" not in client_app(_train_message(task.get_weights(task.build(ok, None or __import__(
        "mmdomain.plugins", fromlist=["x"]).get_registry()))), grid_ok.contexts[101]).content.get(
        "site", ConfigRecord())


def test_policy_allowed_plugins(settings_for, tmp_path, registry):
    from mmdomain_federated.policy import load_policy, violations
    policy = tmp_path / "p.toml"
    policy.write_text('allowed-plugins = ["some-other"]\n')
    problems = violations(load_policy(policy), settings_for(), registry)
    assert any("not in the site's allowed-plugins" in p for p in problems)


def test_policy_share_data_profile(settings_for, tmp_path, registry):
    from mmdomain_federated.policy import load_policy, violations
    policy = tmp_path / "p.toml"
    policy.write_text("share-data-profile = false\n")
    problems = violations(load_policy(policy), settings_for(readiness=True, readiness_rows=64), registry)
    assert problems == ["the site shares no label counts or input statistics (share-data-profile=false), the job "
                        "has readiness-rows=64 (set readiness-rows=0)"]
    assert violations(load_policy(policy), settings_for(readiness=True, readiness_rows=0), registry) == []
    assert violations(load_policy(policy), settings_for(readiness=False, readiness_rows=64), registry) == []


def test_server_loop_checkpoints_and_finishes(settings_for, tmp_path):
    s = settings_for(num_server_rounds=2, readiness=True)
    grid = LocalGrid(3, s.as_run_config())
    summary = run_server(grid, s, tmp_path)
    assert summary["stopped"] == "completed" and summary["rounds"] == 2
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "readiness.json").exists()
    assert summary["final"]["overall"]["n"] > 0
    assert json.loads((tmp_path / "state.json").read_text())["round"] == 2


def test_fedprox_and_bf16_compression(settings_for, tmp_path):
    s = settings_for(num_server_rounds=1, strategy="fedprox", proximal_mu=0.1, compress="bf16")
    summary = run_server(LocalGrid(2, s.as_run_config()), s, tmp_path)
    h = summary["history"][0]
    assert summary["rounds"] == 1 and h["bytes-up"] < h["bytes-down"] * 0.6
