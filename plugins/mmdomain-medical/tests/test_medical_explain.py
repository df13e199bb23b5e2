"""`mmdomain explain` on a medical checkpoint: the plugin's default model (MONAI ResNet + BERT-like
report encoder) trained one epoch on a small synthetic site, then explained through the CLI."""

import json

import pytest
from click.testing import CliRunner

from mmdomain import get_registry
from mmdomain.cli import cli
from mmdomain.config import RunConfig, parse
from mmdomain.training import build_dataset, fit
from mmdomain_medical.synthetic import generate


def test_explain_a_medical_checkpoint(tmp_path):
    root = generate(tmp_path / "site", num_sites=1, seed=5, studies_per_site=24, image_size=32)[0]
    config = parse(RunConfig, {"data": {"dataset": "medical", "root": str(root), "options": {"image_size": 32}},
                               "train": {"epochs": 1, "batch_size": 8, "out_dir": str(tmp_path / "run"),
                                         "progress": False, "device": "cpu"}})
    registry = get_registry()
    run = fit(config, registry, log=lambda *_: None)
    data = build_dataset(config, registry, "train")
    sample = next(data[i] for i in range(len(data)) if set(data[i].inputs) == {"dicom_image", "report"})
    out = tmp_path / "explain"
    res = CliRunner().invoke(cli, ["explain", "--checkpoint", str(run.checkpoint), "--data-root", str(root),
                                   "--split", "train", "--sample", str(sample.meta["id"]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    record = json.loads((out / f"explain-{sample.meta['id']}.json").read_text())
    assert set(record["contributions"]) == {"dicom_image", "report"} and record["saliency"] == ["dicom_image"]
    k = record["explained_output"]
    assert sum(c[k] for c in record["contributions"].values()) == pytest.approx(
        record["prediction"][k] - record["nothing_present"][k], abs=1e-5)
    assert (out / f"explain-{sample.meta['id']}.png").read_bytes()[:4] == b"\x89PNG"
    res = CliRunner().invoke(cli, ["explain", "--checkpoint", str(run.checkpoint), "--data-root", str(root),
                                   "--split", "train", "--out", str(out)])  # per availability pattern
    assert res.exit_code == 0, res.output
    shares = json.loads((out / "explain-train.json").read_text())["by_pattern"]
    assert shares["dicom_image+report"]["share"]["report"] == pytest.approx(
        1 - shares["dicom_image+report"]["share"]["dicom_image"])
