"""Training loop, evaluation per availability pattern, checkpoint round trip in a fresh process."""

import json
import os
import subprocess
import sys

import pytest
import torch

from mmdomain import CheckpointError, ConfigError
from mmdomain.checkpoint import load_checkpoint, read_header
from mmdomain.config import DataConfig, RunConfig, TrainConfig
from mmdomain.demo import single_modality
from mmdomain.plugins import PluginManager
from mmdomain.training import fit


@pytest.fixture(scope="module")
def registry():
    return PluginManager().registry


@pytest.fixture(scope="module")
def toy_site(tmp_path_factory, registry):
    root = tmp_path_factory.mktemp("toy")
    return registry.synthetic("toy").generate(root, num_sites=1, seed=3, samples_per_site=200)[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, registry, toy_site):
    out = tmp_path_factory.mktemp("run")
    config = RunConfig(data=DataConfig(dataset="toy", root=toy_site),
                       train=TrainConfig(epochs=6, batch_size=16, lr=3e-3, out_dir=out, progress=False))
    return fit(config, registry, log=lambda *_: None)


def test_fit_learns_and_reports_per_pattern(trained):
    first, last = trained.history[0], trained.history[-1]
    assert last["train_loss"] < first["train_loss"]
    assert last["overall"]["accuracy"] > 0.5  # 4 balanced classes: chance is 0.25
    patterns = set(last["by_pattern"])
    assert "toy_image+toy_note" in patterns and patterns <= {"toy_image", "toy_note", "toy_image+toy_note"}
    assert sum(v["n"] for v in last["by_pattern"].values()) == last["n"]
    lines = (trained.checkpoint.parent / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, 7))


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


def test_evaluate_with_a_modality_dropped(trained, registry, toy_site):
    from mmdomain.training import build_dataset, evaluate, make_loader

    model = trained.model
    config = RunConfig(data=DataConfig(dataset="toy", root=toy_site))
    loader = make_loader(build_dataset(config, registry, "val"), model.modalities, 32, shuffle=False)
    result = evaluate(model, loader, drop=["toy_note"])
    assert set(result["by_pattern"]) == {"toy_image"}
    assert result.get("skipped", 0) > 0  # samples that only had a note


def test_fusion_beats_each_single_modality(registry, toy_site, tmp_path):
    from mmdomain.config import ModelConfig

    base = ModelConfig.model_validate(registry.dataset("toy").default_model)
    scores = {}
    for label, model_cfg in {"fusion": base, "image": single_modality(base, "toy_image"),
                             "note": single_modality(base, "toy_note")}.items():
        run = RunConfig(data=DataConfig(dataset="toy", root=toy_site), model=model_cfg,
                        train=TrainConfig(epochs=6, lr=3e-3, out_dir=tmp_path / label, progress=False))
        scores[label] = fit(run, registry, log=lambda *_: None).history[-1]["overall"]["accuracy"]
    assert scores["fusion"] > scores["image"] and scores["fusion"] > scores["note"], scores


def test_unknown_component_in_config_lists_available(registry, toy_site, tmp_path):
    from mmdomain.config import ModelConfig
    from mmdomain.models import build_model

    cfg = ModelConfig.model_validate({**registry.dataset("toy").default_model, "fusion": {"name": "early"}})
    with pytest.raises(Exception, match="available: concat, cross_attention, gated, late"):
        build_model(cfg, registry)
    cfg = ModelConfig.model_validate({**registry.dataset("toy").default_model,
                                      "encoders": {"toy_image": {"name": "bag_of_words"},
                                                   "toy_note": {"name": "bag_of_words"}}})
    with pytest.raises(ConfigError, match="encoders.toy_image.*'image'.*cnn"):
        build_model(cfg, registry)
