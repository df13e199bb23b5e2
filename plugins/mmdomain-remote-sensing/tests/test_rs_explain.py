"""`mmdomain explain` on a remote-sensing checkpoint: the plugin's default encoders with the
token-level head, trained one epoch on a small synthetic region, explained through the CLI
(Shapley contributions, Grad-CAM of both rasters, the S1 cells' attention on the S2 patch)."""

import json

import pytest
from click.testing import CliRunner

from mmdomain import get_registry
from mmdomain.cli import cli
from mmdomain.config import RunConfig, parse
from mmdomain.training import build_dataset, fit
from mmdomain_remote_sensing.plugin import DEFAULT_MODEL


def test_explain_a_remote_sensing_checkpoint(tmp_path):
    registry = get_registry()
    root = registry.synthetic("s2s1_regions").generate(tmp_path / "region", num_sites=1, seed=2, scenes_per_site=1,
                                                       size=96, patch_size=16)[0]
    model = {**DEFAULT_MODEL, "fusion": {"name": "token_attention", "options": {"dim": 32}}}
    config = parse(RunConfig, {"data": {"dataset": "s2s1_scenes", "root": str(root), "options": {"patch_size": 16}},
                               "model": model,
                               "train": {"epochs": 1, "batch_size": 8, "out_dir": str(tmp_path / "run"),
                                         "progress": False, "device": "cpu"}})
    run = fit(config, registry, log=lambda *_: None)
    data = build_dataset(config, registry, "train")
    sample = next(data[i] for i in range(len(data)) if set(data[i].inputs) == {"s1", "s2"})
    out = tmp_path / "explain"
    res = CliRunner().invoke(cli, ["explain", "--checkpoint", str(run.checkpoint), "--data-root", str(root),
                                   "--split", "train", "--sample", str(sample.meta["id"]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    record = json.loads((out / f"explain-{sample.meta['id']}.json").read_text())
    assert record["saliency"] == ["s1", "s2"] and record["attention"] == ["s1->s2", "s2->s1"]
    k = record["explained_output"]
    assert sum(c[k] for c in record["contributions"].values()) == pytest.approx(
        record["prediction"][k] - record["nothing_present"][k], abs=1e-5)
    assert (out / f"explain-{sample.meta['id']}.png").read_bytes()[:4] == b"\x89PNG"
