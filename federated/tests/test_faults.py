import json

import numpy as np

from mmdomain_federated.inprocess import LocalGrid
from mmdomain_federated.records import arrays_to_numpy, numpy_to_arrays
from mmdomain_federated.server_app import run_server


def _poison(value):
    def tamper(reply):
        if "arrays" not in reply.content:
            return reply
        w = arrays_to_numpy(reply.content["arrays"])
        k = sorted(w)[0]
        w[k] = np.full_like(w[k], value)
        reply.content["arrays"] = numpy_to_arrays(w)
        return reply
    return tamper


def test_nan_and_outlier_updates_are_rejected_and_logged(settings_for, tmp_path):
    s = settings_for(num_server_rounds=1, min_sites=2)
    grid = LocalGrid(4, s.as_run_config())
    grid.tamper[101] = _poison(np.nan)
    grid.tamper[102] = _poison(1e6)
    summary = run_server(grid, s, tmp_path)
    reasons = {r["site"]: r["reason"] for r in summary["rejections"]}
    assert "non-finite" in reasons[101] and "norm" in reasons[102]
    assert summary["history"][0]["sites"] == 2
    log = (tmp_path / "events.log").read_text()
    assert "rejected update of site 101" in log
    assert all(np.all(np.isfinite(v)) for v in np.load(tmp_path / "final.npz").values())


def test_site_that_disappears_does_not_stop_training(settings_for, tmp_path):
    s = settings_for(num_server_rounds=3, min_sites=2)
    grid = LocalGrid(3, s.as_run_config())
    orig = grid.push_messages

    def push(messages):  # site 103 vanishes after round 1
        messages = list(messages)
        if any(m.metadata.group_id == "2" for m in messages):
            grid.down.add(103)
        return orig(messages)
    grid.push_messages = push
    summary = run_server(grid, s, tmp_path)
    assert summary["stopped"] == "completed" and summary["rounds"] == 3
    assert [h["sites"] for h in summary["history"]] == [3, 2, 2]
    assert "site 103 did not answer" in (tmp_path / "events.log").read_text()


def test_too_few_sites_stops_cleanly(settings_for, tmp_path):
    s = settings_for(num_server_rounds=2, min_sites=3)
    grid = LocalGrid(3, s.as_run_config())
    grid.down.add(102)
    summary = run_server(grid, s, tmp_path)
    assert summary["rounds"] == 0 and "min-sites is 3" in summary["stopped"]


def test_resume_from_a_checkpoint_of_an_older_version(settings_for, tmp_path):
    """Checkpoints written before the missing-modality tokens became layers name them
    ``fusion.missing.<m>``; resuming from one upgrades the names and keeps the values."""
    s = settings_for(num_server_rounds=2, stop_after_round=1)
    run_server(LocalGrid(3, s.as_run_config()), s, tmp_path)
    state = json.loads((tmp_path / "state.json").read_text())
    with np.load(tmp_path / state["weights"]) as z:
        weights = {k: z[k] for k in z.files}
    tokens = [k for k in weights if ".missing." in k and k.endswith(".weight")]
    assert tokens, "the toy model has missing-modality tokens"
    old = {k.removesuffix(".weight") if k in tokens else k: v for k, v in weights.items()}
    np.savez(tmp_path / state["weights"], **old)
    summary = run_server(LocalGrid(3, s.as_run_config()), settings_for(num_server_rounds=2), tmp_path)
    assert summary["stopped"] == "completed" and [h["round"] for h in summary["history"]] == [1, 2]
    with np.load(tmp_path / "final.npz") as z:
        assert set(tokens) <= set(z.files)
