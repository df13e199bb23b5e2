"""Explanations (mmdomain.explain, ``mmdomain explain``): exact Shapley contributions of the
present modalities, which sum to the prediction minus the nothing-present prediction; Grad-CAM of
the image pathway; a summary per availability pattern."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from mmdomain.cli import cli
from mmdomain.config import DataConfig, RunConfig
from mmdomain.explain import modality_contributions, summarise
from mmdomain.training import build_dataset, make_loader


@pytest.fixture(scope="module")
def val_batch(trained, registry, toy_site):
    data = build_dataset(RunConfig(data=DataConfig(dataset="toy", root=toy_site)), registry, "val")
    return next(iter(make_loader(data, trained.model.modalities, 40, shuffle=False)))


def test_contributions_sum_to_the_prediction_minus_nothing_present(trained, val_batch):
    result = modality_contributions(trained.model, val_batch)
    total = sum(result["contributions"].values())
    assert torch.allclose(total, result["prediction"] - result["nothing_present"], atol=1e-5)
    for m, c in result["contributions"].items():
        absent = ~val_batch.present[m]
        assert absent.any() and torch.equal(c[absent], torch.zeros_like(c[absent]))  # toy rows miss modalities
    # a row with one modality: its contribution is the whole move from nothing present
    only = val_batch.present["toy_image"] & ~val_batch.present["toy_note"]
    assert only.any()
    moved = result["prediction"][only] - result["nothing_present"][only]
    assert torch.allclose(result["contributions"]["toy_image"][only], moved, atol=1e-6)
    both = val_batch.present["toy_image"] & val_batch.present["toy_note"]
    assert result["contributions"]["toy_note"][both].abs().sum() > 0  # a trained pathway moves predictions


def test_summary_per_pattern(trained, val_batch):
    summary = summarise(trained.model, [val_batch])
    assert set(summary) <= {"toy_image", "toy_note", "toy_image+toy_note"} and "toy_image+toy_note" in summary
    for pattern, row in summary.items():
        assert sum(row["share"].values()) == pytest.approx(1.0)
        for m, share in row["share"].items():
            if m not in pattern.split("+"):
                assert share == 0.0
    assert sum(row["n"] for row in summary.values()) == int(
        (val_batch.present["toy_image"] | val_batch.present["toy_note"]).sum())


def test_explain_command_writes_json_and_a_saliency_png(trained, registry, toy_site, tmp_path):
    data = build_dataset(RunConfig(data=DataConfig(dataset="toy", root=toy_site)), registry, "test")
    sample = next(data[i] for i in range(len(data)) if len(data[i].inputs) == 2)
    runner = CliRunner()
    out = tmp_path / "explain"
    res = runner.invoke(cli, ["explain", "--checkpoint", str(trained.checkpoint), "--data-root", str(toy_site),
                              "--sample", str(sample.meta["id"]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    record = json.loads((out / f"explain-{sample.meta['id']}.json").read_text())
    k = record["explained_output"]
    assert sum(c[k] for c in record["contributions"].values()) == pytest.approx(
        record["prediction"][k] - record["nothing_present"][k], abs=1e-5)
    assert record["saliency"] == ["toy_image"]
    png = (out / f"explain-{sample.meta['id']}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert "prediction" in res.output and "nothing present" in res.output

    res = runner.invoke(cli, ["explain", "--checkpoint", str(trained.checkpoint), "--data-root", str(toy_site),
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "explain-test.json").read_text())["by_pattern"]
    assert "toy_image+toy_note" in summary

    res = runner.invoke(cli, ["explain", "--checkpoint", str(trained.checkpoint), "--data-root", str(toy_site),
                              "--sample", "no-such-row", "--out", str(out)])
    assert res.exit_code != 0 and "no sample with id 'no-such-row' in the test split" in res.output


def test_explain_overlays_the_token_heads_attention_on_the_image(registry, toy_site, tmp_path):
    from mmdomain.config import ModelConfig, TrainConfig, parse
    from mmdomain.training import fit

    model = dict(registry.dataset("toy").default_model)
    model["fusion"] = {"name": "token_attention", "options": {"dim": 32, "heads": 2}}
    config = RunConfig(data=DataConfig(dataset="toy", root=toy_site), model=parse(ModelConfig, model),
                       train=TrainConfig(epochs=1, batch_size=16, out_dir=tmp_path / "run", progress=False))
    run = fit(config, registry, log=lambda *_: None)
    data = build_dataset(RunConfig(data=DataConfig(dataset="toy", root=toy_site)), registry, "test")
    sample = next(data[i] for i in range(len(data)) if len(data[i].inputs) == 2)
    out = tmp_path / "explain"
    res = CliRunner().invoke(cli, ["explain", "--checkpoint", str(run.checkpoint), "--data-root", str(toy_site),
                                   "--sample", str(sample.meta["id"]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    record = json.loads((out / f"explain-{sample.meta['id']}.json").read_text())
    assert record["attention"] == ["toy_note->toy_image"] and record["saliency"] == ["toy_image"]
    k = record["explained_output"]
    assert sum(c[k] for c in record["contributions"].values()) == pytest.approx(
        record["prediction"][k] - record["nothing_present"][k], abs=1e-5)
    assert (out / f"explain-{sample.meta['id']}.png").read_bytes()[:4] == b"\x89PNG"
    from mmdomain.data.collate import Collate
    from mmdomain.explain import attention_maps

    maps = attention_maps(run.model, Collate(run.model.modalities)([sample]))
    heat = maps["toy_note->toy_image"]
    assert heat.shape == sample.inputs["toy_image"].shape[-2:] and heat.min() == 0 and heat.max() == 1
    image_only = next(data[i] for i in range(len(data)) if set(data[i].inputs) == {"toy_image"})
    assert attention_maps(run.model, Collate(run.model.modalities)([image_only])) == {}  # no report: no map
