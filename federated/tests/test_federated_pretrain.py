"""Federated cross-modal self-supervised pretraining (``task = "contrastive"``), then supervised
federated fine-tuning from its checkpoint (``init-from``): the real apps in-process (LocalGrid),
on quick synthetic sites; central DP trains it, local DP-SGD refuses it."""

import json
import math

import numpy as np
import pytest
from safetensors.torch import load_file

from mmdomain.checkpoint import load_checkpoint, read_header
from mmdomain.errors import ConfigError
from mmdomain_federated import task
from mmdomain_federated.inprocess import LocalGrid
from mmdomain_federated.privacy import Ledger
from mmdomain_federated.records import arrays_to_numpy
from mmdomain_federated.rounds import valid_statistics
from mmdomain_federated.server_app import run_server
from mmdomain_federated.settings import Settings

MEDICAL = {"dataset": "medical", "batch_size": 8, "max_steps": 1}


@pytest.fixture(scope="module")
def medical(registry, tmp_path_factory) -> dict:
    """Two small synthetic hospitals (16 studies each, 32 px images); the run config for them."""
    if "medical" not in registry.names("dataset"):
        pytest.skip("dataset 'medical' is not installed")
    root = tmp_path_factory.mktemp("hospitals")
    registry.synthetic_for("medical").generate(root, num_sites=2, seed=0, studies_per_site=16, image_size=32)
    return {**MEDICAL, "data_root": str(root)}


@pytest.fixture
def pretrain(medical) -> dict:
    return {**medical, "task": "contrastive", "proj_dim": 32}


def _first_train_weights(grid: LocalGrid) -> dict[str, np.ndarray]:
    """The global model the server sent in round 1 (what every site starts fine-tuning from)."""
    msg = next(m for m in grid.sent if m.metadata.message_type.startswith("train"))
    return arrays_to_numpy(msg.content["arrays"])


def test_federated_pretrain_then_federated_fine_tune(medical, pretrain, settings_for, registry, tmp_path):
    pre = settings_for(**pretrain, num_server_rounds=2)
    summary = run_server(LocalGrid(2, pre.as_run_config()), pre, tmp_path / "pretrain")
    assert summary["stopped"] == "completed" and summary["rounds"] == 2 and summary["task"] == "contrastive"
    losses = [h["train-loss"] for h in summary["history"]]
    assert all(math.isfinite(v) and v > 0 for v in losses), losses
    final = summary["final"]["overall"]
    assert math.isfinite(final["loss"]) and 0.0 <= final["recall@1"] <= 1.0
    assert not any("auroc" in k for k in final)  # the contrastive metrics, not a supervised one
    assert summary["history"][0]["train-samples"] > 0 and "eval-recall@1" in summary["history"][0]

    ckpt = tmp_path / "pretrain" / "model.safetensors"
    header = read_header(ckpt)
    assert header["model"]["task"]["name"] == "contrastive" and header["model"]["modality_dropout"] == 0.0
    assert header["extra"]["federated"]["task"] == "contrastive"
    assert json.loads(ckpt.with_suffix(".json").read_text())["model"]["task"]["options"]["proj_dim"] == 32
    model, _ = load_checkpoint(ckpt, registry)  # the checkpoint rebuilds alone
    assert model.task.kind == "contrastive"

    fine = settings_for(**medical, num_server_rounds=1, init_from=str(ckpt))
    grid = LocalGrid(2, fine.as_run_config())
    tuned = run_server(grid, fine, tmp_path / "fine-tune")
    assert tuned["stopped"] == "completed" and tuned["task"] == "multilabel"
    assert "macro_auroc" in tuned["final"]["overall"]
    pretrained = load_file(str(ckpt))
    start = _first_train_weights(grid)
    encoders = [k for k in start if k.startswith("encoders.")]
    assert {k.split(".")[1] for k in encoders} == {"dicom_image", "report"}
    for k in encoders:  # every site starts fine-tuning from the pretrained encoders
        np.testing.assert_array_equal(start[k], pretrained[k].numpy(), err_msg=k)
    report = json.loads((tmp_path / "fine-tune" / "init-report.json").read_text())["modules"]
    assert all(e["loaded"] > 0 and not e["not_in_checkpoint"] for m, e in report.items() if m.startswith("encoders."))
    assert report["task"]["loaded"] == 0 and report["task"]["unused_in_checkpoint"] > 0  # projection heads unused
    assert "task: 0/" in (tmp_path / "fine-tune" / "events.log").read_text()


def test_central_dp_trains_the_contrastive_task(pretrain, settings_for, tmp_path):
    s = settings_for(**pretrain, num_server_rounds=1, central_dp=True, noise_multiplier=1.0, clip_norm=1.0)
    summary = run_server(LocalGrid(2, s.as_run_config()), s, tmp_path)
    assert summary["stopped"] == "completed" and summary["epsilon"] > 0
    assert math.isfinite(summary["final"]["overall"]["loss"])  # noised BatchNorm statistics stay usable
    rows = [r for r in Ledger(tmp_path / "privacy-ledger.jsonl").rows() if r["mechanism"].startswith("gaussian")]
    assert {r["round"] for r in rows} == {1}
    final = np.load(tmp_path / "final.npz")
    assert all((final[k] >= 0).all() for k in final.files if k.endswith("running_var"))


def test_noised_variances_are_clamped_and_nothing_else():
    """Running variances are raised to their group's floor (here the task's 0.1); means, weights and
    the variances of a group without a floor (clamped at 0 only) keep what was released."""
    noised = {"a.bn.running_var": np.array([-0.5, 0.2], np.float32), "a.bn.running_mean": np.array([-0.5]),
              "a.weight": np.array([-1.0]), "fusion.bn.running_var": np.array([-0.5, 0.05], np.float32)}
    out = valid_statistics(noised, {"task": 0.1})
    assert out["a.bn.running_var"].tolist() == [pytest.approx(0.1), pytest.approx(0.2)]
    assert out["a.bn.running_var"].dtype == np.float32
    assert out["fusion.bn.running_var"].tolist() == [0.0, pytest.approx(0.05)]
    assert out["a.bn.running_mean"].tolist() == [-0.5] and out["a.weight"].tolist() == [-1.0]


def test_local_dp_sgd_refuses_the_contrastive_task(settings_for, registry, tmp_path):
    s = settings_for(task="contrastive", local_dp=True)
    with pytest.raises(ConfigError, match="no per-sample loss"):
        task.build(s, registry)  # every site and the server build with it: refused before any round
    with pytest.raises(ConfigError, match="no per-sample loss"):
        run_server(LocalGrid(2, s.as_run_config()), s, tmp_path)


def test_only_rows_with_both_modalities_train_it(settings_for, registry, tmp_path):
    """Site 0 holds images only: no pair, nothing to learn; its update weighs nothing, the encoders
    and heads come from site 1's pairs alone."""
    s = settings_for(task="contrastive", site_modalities="0=toy_image", num_server_rounds=1)
    model = task.build(s, registry)
    assert model.config.modality_dropout == 0.0 and model.task.kind == "contrastive"
    site0 = task.load_site(s, {"partition-id": 0, "num-partitions": 2}, registry, "train")
    site1 = task.load_site(s, {"partition-id": 1, "num-partitions": 2}, registry, "train")
    assert task.training_counts(model, site0) == ({"toy_image": 0, "toy_note": 0}, 0)
    counts, n = task.training_counts(model, site1)
    assert 0 < n < len(site1) and counts == {"toy_image": n, "toy_note": n}  # toy sites miss modalities
    summary = run_server(LocalGrid(2, s.as_run_config()), s, tmp_path)
    record = summary["history"][0]
    assert summary["stopped"] == "completed" and record["train-samples"] > 0
    assert record["groups"] == {"encoder:toy_image": 1, "encoder:toy_note": 1, "fusion": 1, "task": 1}
    assert record["per-site"]["101"].get("train-samples", 0) == 0


def test_contrastive_run_config_is_checked():
    s = Settings.from_run_config({"task": "contrastive", "proj-dim": 16, "temperature": 0.1})
    assert (s.task, s.proj_dim, s.temperature) == ("contrastive", 16, 0.1)
    with pytest.raises(ConfigError, match="task must be"):
        Settings.from_run_config({"task": "simclr"})
    with pytest.raises(ConfigError, match="proj-dim apply to task=contrastive only"):
        Settings.from_run_config({"proj-dim": 16})


def test_sites_pretrain_on_augmented_views_unless_turned_off(settings_for, registry):
    """``augment = auto`` gives a contrastive site its view augmentation (mmdomain.data.augment):
    the same start, seed and rows end at other weights than ``augment = off``, whose run repeats."""
    def trained(augment: str) -> dict[str, np.ndarray]:
        s = settings_for(task="contrastive", max_steps=2, augment=augment)
        model = task.build(s, registry)
        data = task.load_site(s, {"partition-id": 1, "num-partitions": 2}, registry, "train")
        task.train_site(model, data, s, seed=5)
        return task.get_weights(model)

    views, plain, again = trained("auto"), trained("off"), trained("off")
    assert all(np.array_equal(plain[k], again[k]) for k in plain)
    assert any(not np.allclose(views[k], plain[k]) for k in plain if k.startswith("encoders.toy_image"))
