"""What a run records about itself: dropped sites by node id, strict JSON in every file, sites
without a test split, no model from a run that trained nothing, refusals in the site's log.
In-process (``LocalGrid``, the real apps), toy sites, a round or none."""

import csv
import json
import logging
import shutil

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from mmdomain.errors import ConfigError
from mmdomain_federated import task
from mmdomain_federated.client_app import app as client_app
from mmdomain_federated.inprocess import LocalGrid
from mmdomain.jsonout import dumps, finite
from mmdomain_federated.rounds import valid_statistics, variance_floors
from mmdomain_federated.server_app import run_server
from mmdomain_federated.settings import Settings


def _strict(text: str):
    """``json.loads`` that refuses NaN / Infinity, as a strict parser (or another language) does."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def test_failed_and_silent_sites_are_counted_as_dropped_by_node_id(settings_for, tmp_path):  # ~4 s
    """A site whose training raises (its data folder is gone: an error reply) and one that never
    answers are both dropped, named by node id; the failure's details (a path) stay at the site."""
    missing = tmp_path / "no-such-site-folder"
    s = settings_for(num_server_rounds=1, min_sites=2, max_steps=1)
    grid = LocalGrid(4, s.as_run_config(), node_configs=[{}, {}, {"data-root": str(missing)}, {}])
    grid.down.add(104)
    summary = run_server(grid, s, tmp_path / "run", echo=False)
    h = summary["history"][0]
    assert summary["rounds"] == 1 and h["sites"] == 2
    assert h["dropped"] == 2 and h["dropped-sites"] == {"103": "error", "104": "no answer"}
    assert summary["final"]["per_site"]["103"] == {"n": 0, "num-examples": 0,
                                                   "note": "evaluation failed at the site (DataError)"}
    assert summary["final"]["per_site"]["104"] == {"note": "no answer"}
    events = (tmp_path / "run" / "events.log").read_text()
    assert "site 103 failed" in events and "site 104 did not answer" in events
    for text in (events, (tmp_path / "run" / "summary.json").read_text()):
        assert str(missing) not in text and "no-such-site-folder" not in text


def test_json_writer_turns_non_finite_numbers_into_null():  # < 0.1 s
    value = {"a": float("nan"), "b": [float("inf"), np.float32("nan"), np.float64(1.5)], np.int64(3): (1, -np.inf),
             "c": np.array([0.5, np.nan]), "ok": 2}
    assert finite(value) == {"a": None, "b": [None, None, 1.5], 3: [1, None], "c": [0.5, None], "ok": 2}
    assert _strict(dumps(value)) == {"a": None, "b": [None, None, 1.5], "3": [1, None], "c": [0.5, None], "ok": 2}
    with pytest.raises(ValueError, match="NaN"):
        _strict(json.dumps({"x": float("nan")}))  # what the run wrote before


def _non_finite_site(reply):
    """A site whose figures are not finite (a diverged loss, a NaN statistic): its train and
    evaluation metrics and its readiness report carry NaN / inf; its weights are fine."""
    if reply.has_error():
        return reply
    if "metrics" in reply.content:
        key = "train-loss" if "arrays" in reply.content else "loss"
        reply.content["metrics"][key] = float("nan") if key == "train-loss" else float("inf")
    site = reply.content.get("site")
    if site is not None and "readiness" in site:
        report = json.loads(str(site["readiness"]))
        report["splits"]["train"]["describe"] = {"mean-age": float("nan")}
        site["readiness"] = json.dumps(report)  # Python writes a bare NaN: not JSON
    return reply


def test_every_json_file_of_a_run_parses_strictly(settings_for, tmp_path):  # ~4 s
    s = settings_for(num_server_rounds=1, max_steps=1, readiness=True, central_dp=True, noise_multiplier=1.5,
                     clip_norm=1.0, target_delta=1e-3)
    grid = LocalGrid(2, s.as_run_config())
    grid.tamper[102] = _non_finite_site
    out = tmp_path / "run"
    summary = run_server(grid, s, out, echo=False)
    assert summary["rounds"] == 1
    written = _strict((out / "summary.json").read_text())
    assert written["history"][0]["train-loss"] is None  # the weighted mean with a NaN loss
    assert written["final"]["per_site"]["102"]["loss"] is None and written["final"]["overall"]["loss"] is None
    assert _strict((out / "readiness.json").read_text())["102"]["splits"]["train"]["describe"] == {"mean-age": None}
    assert _strict((out / "state.json").read_text())["history"][0]["train-loss"] is None
    ledger = (out / "privacy-ledger.jsonl").read_text().splitlines()
    assert len(ledger) == 2 and all(_strict(line)["epsilon"] > 0 for line in ledger)
    events = (out / "events.log").read_text()
    round_line = next(line for line in events.splitlines() if " round 1: {" in line)
    assert _strict(round_line.split(" round 1: ", 1)[1])["train-loss"] is None
    assert "final test metrics not finite (written as null): loss" in events


def _bn_chain(layers: int = 8) -> torch.nn.Module:
    """Identity linear layers, each followed by a BatchNorm: what a noised variance does to a deep net."""
    mods = []
    for _ in range(layers):
        lin = torch.nn.Linear(16, 16)
        torch.nn.init.eye_(lin.weight)
        torch.nn.init.zeros_(lin.bias)
        mods += [lin, torch.nn.BatchNorm1d(16)]
    return torch.nn.Sequential(*mods, torch.nn.LayerNorm(16)).eval()


def test_central_dp_noised_variances_keep_the_model_finite():  # < 0.5 s
    """The NaN test loss of central-DP runs: noise pushed running variances below zero; clamped at
    zero, every BatchNorm divided by sqrt(eps) and activations overflowed float32 in the LayerNorm
    (as in the medical ResNet). Raised to the noise's standard deviation, the model stays finite."""
    s = Settings.from_run_config({"central-dp": True, "noise-multiplier": 1.0, "clip-norm": 1.0})
    floors = variance_floors(s, {"task": [101, 102, 103], "fusion": [101, 102], "encoder:x": []})
    assert floors == pytest.approx({"task": 1 / 3, "fusion": 1 / 2})
    net = _bn_chain()
    release = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    for k in release:
        if k.endswith("running_var"):
            release[k][:] = -0.1  # a small variance after noise of std 1/3
    x = torch.rand(4, 16) + 1.0

    def forward(weights):
        net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        with torch.no_grad():
            return net(x)

    assert not torch.isfinite(forward(valid_statistics(release, {}))).all()  # clamped at zero: the old NaN
    fixed = valid_statistics(release, floors)
    assert all(np.all(v == np.float32(1 / 3)) for k, v in fixed.items() if k.endswith("running_var"))
    assert torch.isfinite(forward(fixed)).all()
    assert all(np.array_equal(fixed[k], release[k]) for k in release if not k.endswith("running_var"))


def test_site_without_a_test_split_is_reported_as_such(settings_for, registry, tmp_path):  # ~4 s
    root = tmp_path / "sites"
    shutil.copytree(task.synthetic_root(registry, "toy", 3, 0), root)
    manifest = task.site_folders(root)[2] / "manifest.csv"
    with manifest.open() as f:
        rows = list(csv.DictReader(f))
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r["split"] != "test")
    s = settings_for(num_server_rounds=1, max_steps=1, data_root=str(root))
    summary = run_server(LocalGrid(3, s.as_run_config()), s, tmp_path / "run", echo=False)
    per_site = summary["final"]["per_site"]
    assert per_site["103"] == {"n": 0, "num-examples": 0, "note": "no test split (0 rows)"}
    assert per_site["101"]["n"] > 0 and per_site["102"]["n"] > 0
    assert summary["final"]["overall"]["n"] == per_site["101"]["n"] + per_site["102"]["n"]


def test_a_run_that_trained_no_round_writes_no_model_and_a_resume_starts_afresh(settings_for, tmp_path):  # ~4 s
    s = settings_for(num_server_rounds=1, min_sites=2, max_steps=1)
    gone = [{"data-root": str(tmp_path / "gone")}] * 2
    out = tmp_path / "run"
    summary = run_server(LocalGrid(2, s.as_run_config(), node_configs=gone), s, out, echo=False)
    assert summary["rounds"] == 0 and summary["model"] is None and "min-sites is 2" in summary["stopped"]
    assert "dropped: site 101 (error), site 102 (error)" in summary["stopped"]
    assert not (out / "model.safetensors").exists() and not (out / "final.npz").exists()
    assert _strict((out / "summary.json").read_text())["model"] is None
    assert "no round was trained: no model written" in (out / "events.log").read_text()
    again = run_server(LocalGrid(2, s.as_run_config()), s, out, echo=False)  # resume=true: nothing to resume
    assert again["stopped"] == "completed" and [h["round"] for h in again["history"]] == [1]
    assert again["model"] == "model.safetensors" and (out / "model.safetensors").exists()


def test_scoring_a_run_that_trained_no_round_says_why(settings_for, tmp_path):  # ~3 s
    """The demo, `fed compare` and the benchmarks score a run's model: without one, the reason, not
    a missing-checkpoint error."""
    import click

    from mmdomain_federated.experiment import run_flower

    s = settings_for(num_server_rounds=1, min_sites=2, max_steps=1, data_root=str(tmp_path / "gone"))
    with pytest.raises(click.ClickException, match="trained no round.*min-sites is 2"):
        run_flower("in-process", 2, s.as_run_config(), tmp_path / "run", 0.0, lambda *_: None)


def test_runs_that_could_only_write_nothing_or_an_infinite_epsilon_are_refused_before_they_start():  # < 0.1 s
    with pytest.raises(ConfigError, match="num-server-rounds must be >= 1, got 0"):
        Settings.from_run_config({"num-server-rounds": 0})
    with pytest.raises(ConfigError, match="central-dp needs noise-multiplier > 0"):
        Settings.from_run_config({"central-dp": True, "noise-multiplier": 0.0})


def test_the_site_log_records_each_refusal_with_its_reason(settings_for, tmp_path, caplog):  # < 1 s
    policy = tmp_path / "policy.toml"
    policy.write_text("min-noise-multiplier = 1.0\n")
    s = settings_for(central_dp=True, noise_multiplier=0.5)
    grid = LocalGrid(2, s.as_run_config(), node_configs=[{"policy-file": str(policy)}] * 2)
    content = {MessageType.TRAIN: RecordDict({"config": ConfigRecord({"server-round": 1})}),
               MessageType.QUERY: RecordDict({"config": ConfigRecord({})})}
    with caplog.at_level(logging.WARNING, logger="mmdomain.federated.site"):
        for kind, records in content.items():
            reply = client_app(Message(records, message_type=kind, dst_node_id=101), grid.contexts[101])
            assert "refused" in reply.content["site"]
    lines = [r.getMessage() for r in caplog.records if r.name == "mmdomain.federated.site"]
    assert len(lines) == 2 and all("site 101: refused the" in line for line in lines)
    assert all("noise-multiplier 0.5 < the site's minimum 1" in line for line in lines)
    assert "train message" in lines[0] and "query message" in lines[1]
    assert not any("s0-" in line or str(tmp_path) in line for line in lines)  # no sample ids, no file paths



def test_progress_is_one_short_line_per_round_while_events_log_keeps_the_record(settings_for, tmp_path):  # ~4 s
    from mmdomain_federated.server_log import progress_line

    s = settings_for(num_server_rounds=2, max_steps=1, readiness=False)
    said: list[str] = []
    out = tmp_path / "run"
    run_server(LocalGrid(2, s.as_run_config()), s, out, echo=False, log=said.append)
    rounds = [line for line in said if line.startswith("round ")]
    assert [line.split(":")[0] for line in rounds] == ["round 1/2", "round 2/2"]
    assert all(len(line) < 120 and "{" not in line and "2 sites" in line and "val macro AUROC" in line
               and line.endswith(" s") for line in rounds), rounds
    finished = [line for line in said if line.startswith("finished")]
    assert finished and "{" not in finished[0] and "final test macro AUROC" in finished[0]
    events = (out / "events.log").read_text()
    assert " round 2: {" in events and "final test metrics {" in events  # the full records stay in the file
    assert progress_line({"round": 3, "sites": 1, "dropped": 2, "epsilon": 1.234, "local-epsilon": {"7": 2.5}}) == \
        "round 3: 1 site (2 dropped), epsilon 1.23, local epsilon <= 2.50"
