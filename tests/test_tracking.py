"""mmdomain.tracking: `mmdomain train` logs its run to MLflow's embedded file store (read back
with MLflow's own client), `--no-track` writes no store, a bad store is a clear error after the
run's outputs are written, and MLflow starts with its telemetry off and opens no socket."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from mmdomain.cli import cli
from mmdomain.tracking import STORE_FOLDER, flat_numbers, resolve_uri


def _config(tmp_path, toy_site, out, epochs=2):
    path = tmp_path / f"run-{epochs}.toml"
    path.write_text(f"""
[data]
dataset = "toy"
root = "{toy_site}"

[train]
epochs = {epochs}
batch_size = 16
max_steps_per_epoch = 4
out_dir = "{out}"
progress = false
""")
    return path


def _train(*args):
    return CliRunner().invoke(cli, ["train", *map(str, args)])


def _client(uri):
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads its file store only with this
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_train_run_is_read_back_through_mlflow(tmp_path, toy_site, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "out"
    res = _train("--config", _config(tmp_path, toy_site, out))
    assert res.exit_code == 0, res.output
    uri = (out / STORE_FOLDER).as_uri()
    assert "tracked: MLflow run" in res.output and uri in res.output
    client = _client(uri)
    experiment = client.get_experiment_by_name("mmdomain-train")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["train.epochs"] == "2" and params["data.dataset"] == "toy" and params["train.lr"] == "0.001"
    assert params["model.modalities"] == json.dumps(["toy_image", "toy_note"])
    assert params["data.root"] == toy_site.name  # the data root's name only, never its path
    assert not any(str(toy_site.parent) in v for v in params.values())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    expected = {}
    for r in records:
        for key, value in flat_numbers(r).items():
            expected.setdefault(key, []).append((r["epoch"], pytest.approx(value)))
    assert "overall/accuracy" in expected and "by_pattern/toy_image.toy_note/accuracy" in expected
    for key, values in expected.items():
        if key == "epoch":
            continue
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert history == values, key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.safetensors", "metrics.jsonl", "config.json"} <= artifacts
    model = client.download_artifacts(run.info.run_id, "model.safetensors", str(tmp_path))
    assert open(model, "rb").read() == (out / "model.safetensors").read_bytes()
    config = json.loads(open(client.download_artifacts(run.info.run_id, "config.json", str(tmp_path))).read())
    assert config["data"]["root"] == toy_site.name and config["train"]["epochs"] == 2


def test_no_track_writes_no_store_and_a_reused_folder_logs_its_last_run(tmp_path, toy_site, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "out"
    res = _train("--config", _config(tmp_path, toy_site, out), "--no-track")
    assert res.exit_code == 0, res.output
    assert (out / "model.safetensors").is_file() and not (out / STORE_FOLDER).exists()
    assert "tracked" not in res.output
    res = _train("--config", _config(tmp_path, toy_site, out, epochs=1), "--experiment", "again")
    assert res.exit_code == 0, res.output
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3  # metrics.jsonl appends: 2 + 1 epochs
    client = _client((out / STORE_FOLDER).as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("again").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1]  # this run's epoch


def test_bad_tracking_store_is_a_clear_error_after_the_outputs(tmp_path, toy_site):
    out = tmp_path / "out"
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    res = _train("--config", _config(tmp_path, toy_site, out, epochs=1), "--tracking-uri",
                 (not_a_folder / "mlruns").as_uri())
    assert res.exit_code == 2, res.output
    assert "error: tracking: could not log to file://" in res.output and "a-file" in res.output
    assert f"outputs are kept in {out}" in res.output and "Traceback" not in res.output
    assert (out / "model.safetensors").is_file() and (out / "metrics.jsonl").is_file()
    res = _train("--config", _config(tmp_path, toy_site, out, epochs=1), "--tracking-uri", "nope://store")
    assert res.exit_code == 2 and "could not log to nope://store" in res.output and "nope" in res.output.split(
        "nope://store", 1)[1], res.output
    assert "Traceback" not in res.output and (out / "model.safetensors").is_file()


_PROBE = """
import json, sys
sockets = []
OUT = ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto", "socket.sendmsg")
sys.addaudithook(lambda event, args: sockets.append([event, str(args)[:200]]) if event in OUT else None)
from pathlib import Path
from mmdomain.tracking import log_run, resolve_uri
run = log_run(uri=resolve_uri(None, Path(sys.argv[1])), experiment="probe", params={"a": "1"}, metrics=[("m", 1.0, 0)])
from mlflow.telemetry.client import get_telemetry_client
print(json.dumps({"telemetry": get_telemetry_client() is not None, "sockets": sockets, "run": run.run_id}))
"""


def test_mlflow_starts_without_telemetry_and_opens_no_socket(tmp_path):
    # a bare environment: none of the CI / pytest variables under which MLflow turns telemetry off by itself
    env = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR", "LANG") if k in os.environ}
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.splitlines()[-1])
    assert found["telemetry"] is False and found["sockets"] == []
    assert _client(resolve_uri(None, tmp_path)).get_run(found["run"]).data.params == {"a": "1"}
