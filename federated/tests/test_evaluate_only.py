"""Evaluation without training (issue #16 item 1): ``evaluate-only`` sends a checkpoint's model,
which every participant rebuilds from the file, to every site; nothing is trained or written but
the metrics. ``mmdomain fed evaluate --checkpoint M`` runs it in Flower's simulation."""

import pytest
from click.testing import CliRunner

from mmdomain.cli import _add_plugin_commands, cli
from mmdomain.errors import ConfigError
from mmdomain_federated.inprocess import LocalGrid
from mmdomain_federated.server_app import run_server
from mmdomain_federated.settings import Settings

_add_plugin_commands()  # what `mmdomain` does before parsing: `fed evaluate` among them


def test_a_checkpoint_is_scored_on_every_site_and_nothing_is_trained(settings_for, tmp_path):
    s = settings_for(num_server_rounds=1, max_steps=2)
    trained = run_server(LocalGrid(3, s.as_run_config()), s, tmp_path / "train", echo=False)
    checkpoint = tmp_path / "train" / "model.safetensors"
    e = settings_for(evaluate_only=True, init_from=str(checkpoint))
    grid = LocalGrid(3, e.as_run_config())
    summary = run_server(grid, e, tmp_path / "eval", echo=False)
    assert summary["stopped"] == "evaluate-only" and summary["rounds"] == 0 and summary["model"] is None
    assert summary["evaluated"]["checkpoint"] == "model.safetensors" and len(summary["evaluated"]["sha256"]) == 64
    assert not (tmp_path / "eval" / "model.safetensors").exists()
    assert {m.metadata.message_type for m in grid.sent} == {"evaluate"}  # no train, no readiness query
    # the same model on the same test splits: what the training run's final evaluation measured
    metric = "macro_auroc" if "macro_auroc" in trained["final"]["overall"] else "accuracy"
    assert set(summary["final"]["per_site"]) == set(trained["final"]["per_site"])
    for site, m in trained["final"]["per_site"].items():
        assert summary["final"]["per_site"][site][metric] == pytest.approx(m[metric], abs=1e-6), site


def test_evaluate_only_needs_a_checkpoint_and_a_known_split():
    with pytest.raises(ConfigError, match="evaluate-only evaluates the model of init-from"):
        Settings.from_run_config({"evaluate-only": True})
    with pytest.raises(ConfigError, match="evaluate-split must be test or val"):
        Settings.from_run_config({"evaluate-only": True, "init-from": "m.safetensors", "evaluate-split": "train"})


def test_fed_evaluate_refuses_a_file_that_is_not_a_checkpoint_before_starting(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(cli, ["fed", "evaluate", "--checkpoint", str(bad)])
    assert result.exit_code != 0 and "--checkpoint:" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["fed", "evaluate", "--checkpoint", str(tmp_path / "missing.safetensors")])
    assert result.exit_code != 0 and "missing.safetensors" in result.output
