"""mmdomain.checkpoint: a model rebuilds from its file alone, in a fresh process; bad files are clear errors."""

import json
import os
import subprocess
import sys

import pytest
import torch

from mmdomain import CheckpointError
from mmdomain.checkpoint import load_checkpoint, read_header


def test_checkpoint_rebuilds_from_the_file_alone(trained, registry, tmp_path):
    ckpt = trained.checkpoint
    alone = tmp_path / "copy.safetensors"
    alone.write_bytes(ckpt.read_bytes())  # no sidecar, no config.json beside it
    model, extra = load_checkpoint(alone, registry)
    assert model.config == trained.model.config
    for (k, a), (_, b) in zip(trained.model.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a.cpu(), b), k
    assert extra["data"]["dataset"] == "toy"
    assert read_header(alone)["owners"]["fusion:concat"] == "mmdomain.builtins.fusions"


def _cli(*args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "mmdomain.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_train_then_evaluate_in_fresh_processes_agree(tmp_path, toy_site):
    config = tmp_path / "run.toml"
    config.write_text(f"""
[data]
dataset = "toy"
root = "{toy_site}"

[train]
epochs = 2
batch_size = 16
out_dir = "{tmp_path / 'out'}"
progress = false
""")
    proc = _cli("train", "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    ckpt = tmp_path / "out" / "model.safetensors"
    assert f"checkpoint: {ckpt}" in proc.stdout
    first = _cli("evaluate", "--checkpoint", str(ckpt), "--split", "val", "--json")
    second = _cli("evaluate", "--checkpoint", str(ckpt), "--split", "val", "--json")
    assert first.returncode == 0, first.stderr
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert a == b
    logged = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[-1])
    assert a["overall"] == pytest.approx(logged["overall"], abs=1e-5)
    assert a["by_pattern"].keys() == logged["by_pattern"].keys()


def test_evaluate_missing_checkpoint_names_the_path(tmp_path):
    proc = _cli("evaluate", "--checkpoint", str(tmp_path / "nope.safetensors"))
    assert proc.returncode == 2
    assert "checkpoint not found" in proc.stderr and "nope.safetensors" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, registry):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_checkpoint(bad, registry)
