"""Federated checkpointing (#16 item 7): ``best.safetensors`` is the model with the best validation
metric, early stopping ends a run that stopped improving, and a resume keeps the best model and
the patience counter.

The validation metric the site reports is scripted per round (``LocalGrid.tamper`` on the real
replies), so which model is best is known; everything else is the real ServerApp loop and ClientApp."""

import json
import math

import numpy as np
import pytest
from mmdomain.checkpoint import load_checkpoint, read_header
from mmdomain.errors import ConfigError

from mmdomain_federated import task
from mmdomain_federated.best_model import BestModel, metric_value, scored_round
from mmdomain_federated.inprocess import LocalGrid
from mmdomain_federated.records import arrays_to_numpy
from mmdomain_federated.server_app import run_server
from mmdomain_federated.settings import Settings

#: The val score the site reports for the model it receives in round r (fused evaluation: the model of r - 1).
TRAIN_SCORES = {1: 0.50, 2: 0.70, 3: 0.60, 4: 0.65, 5: 0.95, 6: 0.95}
LAST_VAL = 0.62  # the separate val evaluation of the last model


def _script(grid):
    def tamper(reply):
        if reply.has_error():
            return reply
        m = reply.content.metric_records["metrics"]
        kind = reply.metadata.message_type
        if kind == "train":
            m["eval-macro_auroc"] = TRAIN_SCORES[int(reply.metadata.group_id)]
        elif kind == "evaluate" and grid.sent[-1].content["config"]["split"] == "val":
            m["macro_auroc"] = LAST_VAL
        return reply
    return tamper


def _grid(s):
    grid = LocalGrid(1, s.as_run_config())
    grid.tamper[101] = _script(grid)
    return grid


def test_best_model_early_stopping_and_resume(settings_for, registry, tmp_path):
    """Patience 2, 6 rounds, a crash after round 3: the best is the model of round 1 (0.70, scored
    in round 2); after the restart round 4 scores the model of round 3 (0.65), the second in a row
    without improvement, and the run stops there. ``best.safetensors`` holds exactly the model of
    round 1 (the one the site was sent in round 2) with its round and score."""
    s = settings_for(num_server_rounds=6, min_sites=1, max_steps=1, checkpoint_metric="eval-macro_auroc",
                     early_stopping_patience=2, stop_after_round=3)
    first = _grid(s)
    crashed = run_server(first, s, tmp_path, echo=False)
    assert "simulated crash" in crashed["stopped"]
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["best"]["round"] == 1 and state["best"]["stale"] == 1 and (tmp_path / state["best"]["file"]).exists()
    model_1 = arrays_to_numpy(next(m for m in first.sent if m.metadata.group_id == "2").content["arrays"])

    resumed = Settings.from_run_config({**s.as_run_config(), "stop-after-round": 0})
    summary = run_server(_grid(resumed), resumed, tmp_path, echo=False)
    assert summary["stopped"].startswith("early stopping") and summary["rounds"] == 4
    assert "early-stopping-patience 2" in summary["stopped"]
    assert summary["best"] == {"metric": "eval-macro_auroc", "mode": "max", "round": 1, "value": 0.70,
                               "file": "best.safetensors",
                               "scores": {"0": 0.50, "1": 0.70, "2": 0.60, "3": 0.65, "4": LAST_VAL}}
    assert summary["model"] == "model.safetensors" and json.loads((tmp_path / "state.json").read_text())["round"] == 4
    best, extra = load_checkpoint(tmp_path / "best.safetensors", registry)
    assert extra["federated"]["best"] == {"round": 1, "metric": "eval-macro_auroc", "mode": "max", "value": 0.70}
    assert read_header(tmp_path / "model.safetensors")["extra"]["federated"]["rounds"] == 4
    kept = task.get_weights(best)
    assert set(kept) == set(model_1) and all(np.array_equal(kept[k], model_1[k]) for k in model_1)
    with np.load(tmp_path / "final.npz") as z:  # the last model is another one
        assert any(not np.array_equal(z[k], model_1[k]) for k in model_1 if np.issubdtype(z[k].dtype, np.floating))
    log = (tmp_path / "events.log").read_text()
    assert "best model: round 1, eval-macro_auroc 0.7" in log and "early stopping" in log
    assert sorted(p.name for p in tmp_path.glob("best-*.npz")) == ["best-1.npz"]


def test_best_model_rules():
    best = BestModel("eval-loss", "min", patience=2)
    assert best.offer(0, 1.0) and not best.offer(1, 1.0) and best.offer(2, 0.8)  # ties do not improve
    assert not best.offer(3, math.nan) and not best.offer(3, 0.1)  # NaN never best; a model is scored once
    assert (best.round, best.value, best.stale) == (2, 0.8, 1) and not best.exhausted()
    assert not best.offer(4, 0.9) and best.exhausted()
    again = BestModel("eval-loss", "min", patience=2)
    assert again.load(json.loads(json.dumps(best.state()))) and json.dumps(again.state()) == json.dumps(best.state())
    assert not BestModel("eval-accuracy").load(best.state())  # another metric: start afresh
    assert scored_round(5, fused_eval=True) == 4 and scored_round(5, fused_eval=False) == 5
    assert metric_value({"eval-loss": 0.3, "eval-n": 10}, "eval-loss") == 0.3
    assert metric_value({"train-loss": 0.3}, "eval-loss") is None  # no site evaluated: nothing to compare
    with pytest.raises(ConfigError, match="'eval-aucroc' is not a validation metric of this run; the rounds "
                                          "report eval-accuracy, eval-loss"):
        metric_value({"eval-loss": 0.3, "eval-accuracy": 0.5, "eval-n": 10, "eval-a/n": 3}, "eval-aucroc")


@pytest.mark.parametrize("config, message", [
    ({"checkpoint-metric": "macro_auroc"}, "eval-<name>"), ({"checkpoint-metric": "eval-loss"}, "checkpoint-mode=min"),
    ({"checkpoint-metric": "eval-loss", "checkpoint-mode": "down"}, "checkpoint-mode must be max or min"),
    ({"early-stopping-patience": 3}, "needs checkpoint-metric"),
    ({"checkpoint-metric": "eval-macro_auroc", "early-stopping-patience": -1}, "early-stopping-patience must be >= 0")])
def test_bad_checkpointing_settings_are_refused(config, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_run_config(config)
