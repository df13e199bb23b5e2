"""The analysts' API (issue #16 item 9): one call trains a federation with the real apps, a run
folder reads back as tables that agree with the files the run wrote, and bad input is a clear
error. The simulation engine is exercised by notebook 04 (tests/test_notebooks.py)."""

import json
import os
import time

import pytest

from mmdomain.errors import CheckpointError, ConfigError, DataError, MMDomainError
from mmdomain_federated import analysis
from mmdomain_federated.analysis import Run, _fresh_run

SITES, ROUNDS = 3, 2


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory, fast_config):
    """A small in-process federation with central DP and a best-model checkpoint."""
    out = tmp_path_factory.mktemp("analysis") / "fed"
    lines = []
    config = {**fast_config, "readiness": True, "num-server-rounds": ROUNDS, "central-dp": True, "noise-multiplier": 0.5,
              "clip-norm": 1.0, "checkpoint-metric": "eval-loss", "checkpoint-mode": "min"}
    run = analysis.federate(config, sites=SITES, out_dir=out, progress=lines.append)
    return run, config, lines


def test_federate_runs_the_apps_and_the_tables_agree_with_the_files(dp_run):
    run, config, lines = dp_run
    summary = json.loads((run.folder / "summary.json").read_text())
    assert run.stopped == "completed" and run.summary == summary
    assert [line.split(":")[0] for line in lines if line.startswith("round ")] == ["round 1/2", "round 2/2"]
    assert lines[-1].startswith("finished (completed)")

    history = run.history
    assert list(history.index) == [1, 2] and list(history["sites"]) == [SITES, SITES]
    assert history["epsilon"].is_monotonic_increasing and history["epsilon"].iloc[-1] == pytest.approx(run.epsilon)
    assert "per-site" not in history and "groups" not in history  # nested entries live in per_site

    names = [f"site-{i}" for i in range(SITES)]  # in-process sites are named by partition, as in cross_site
    assert set(summary["site-names"].values()) == set(names)
    per_site = run.per_site
    assert len(per_site) == ROUNDS * SITES and set(per_site["round"]) == {1, 2}
    assert per_site["site"].tolist()[:SITES] == names
    first = summary["history"][0]["per-site"]
    for site, metrics in first.items():
        row = per_site[(per_site["round"] == 1) & (per_site["site"] == site)].iloc[0]
        assert row["train-loss"] == pytest.approx(metrics["train-loss"])

    final = run.final
    assert list(final.index) == [*names, "pooled"] and set(first) == set(names)
    assert final.loc[[s for s in final.index if s != "pooled"], "n"].sum() == final.loc["pooled", "n"]

    ledger = run.ledger
    assert len(ledger) == ROUNDS * SITES and set(ledger["mechanism"]) == {"gaussian-central-site-level"}
    assert set(ledger["site"]) == set(names)  # the file keeps node ids; the table names them
    assert ledger.groupby("round")["epsilon"].first().tolist() == pytest.approx(history["epsilon"].tolist())

    readiness = run.readiness
    assert readiness["site"].tolist() == [n for n in names for _ in range(3)]
    assert set(readiness["split"]) == {"train", "val", "test"}

    matrix = run.cross_site()
    metric = "macro_auroc" if "macro_auroc" in summary["final"]["overall"] else "accuracy"
    assert list(matrix.index) == ["global"] and list(matrix.columns) == [*names, "pooled"]
    assert matrix.loc["global", "pooled"] == pytest.approx(summary["final"]["overall"][metric])


def test_models_scores_and_a_saved_cross_site_matrix(dp_run):
    run, config, _ = dp_run
    model, best = run.model(), run.model(best=True)
    assert type(model).__name__ == "FusionModel" and type(best).__name__ == "FusionModel"
    test = analysis.pooled_data(config, sites=SITES)
    assert len(test) == sum(len(analysis.site_data(config, site=i, sites=SITES, split="test")) for i in range(SITES))
    scored = analysis.score(model, test, config)
    metric = "macro_auroc" if "macro_auroc" in scored["overall"] else "accuracy"
    assert 0.0 <= scored["overall"][metric] <= 1.0

    local = analysis.train_local(config, analysis.site_data(config, site=0, sites=SITES), epochs=1, seed=0)
    table = analysis.cross_site({"global": model, "local site-0": local}, config, sites=SITES, save_to=run.folder)
    assert list(table.index) == ["global", "local site-0"]
    assert list(table.columns[:SITES + 1]) == [f"site-{i}" for i in range(SITES)] + ["pooled"]
    row = table.loc["local site-0"]
    sites = row[[f"site-{i}" for i in range(SITES)]].astype(float)
    assert row["worst"] == pytest.approx(sites.min()) and row["spread"] == pytest.approx(sites.max() - sites.min())
    assert table.loc["global", "pooled"] == pytest.approx(scored["overall"][metric])
    # the folder now shows the saved rows next to the sites' own scoring of the global model
    shown = run.cross_site(metric)
    assert {"global", "global (scored here)", "local site-0"} <= set(shown.index)
    assert shown.loc["global (scored here)", "pooled"] == pytest.approx(scored["overall"][metric])


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="engine must be one of in-process, simulation"):
        analysis.federate({}, sites=2, out_dir=tmp_path, engine="ray")
    with pytest.raises(ConfigError, match="sites must be a positive integer"):
        analysis.federate({}, sites=0, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="fewer than the run's min-sites=3"):
        analysis.federate({"min-sites": 3}, sites=2, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="no-such-key"):
        analysis.federate({"no-such-key": 1}, sites=2, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="site must be in 0..2"):
        analysis.site_data({}, site=3, sites=3)
    with pytest.raises(DataError, match="not a run folder: summary.json is missing \\(no such folder\\)"):
        analysis.load_run(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "events.log").write_text("round 1: {}\n")
    with pytest.raises(DataError, match="an unfinished run"):
        analysis.load_run(tmp_path / "half")
    (tmp_path / "half" / "summary.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot be read as JSON"):
        analysis.load_run(tmp_path / "half")
    (tmp_path / "half" / "summary.json").write_text('{"history": [], "model": null, "stopped": "no sites"}')
    with pytest.raises(CheckpointError, match="has no model; it ended: no sites"):
        analysis.load_run(tmp_path / "half").model()
    with pytest.raises(CheckpointError, match="set checkpoint-metric"):
        analysis.load_run(tmp_path / "half").model(best=True)


def test_a_summary_older_than_the_call_is_not_its_run(tmp_path):
    """A crashed run leaves the folder's older summary.json in place: it must not be read as this run's."""
    (tmp_path / "summary.json").write_text('{"history": [], "stopped": "completed"}')
    old = time.time() - 3600
    os.utime(tmp_path / "summary.json", (old, old))
    with pytest.raises(MMDomainError, match="wrote no summary .*: the simulation exited with 1"):
        _fresh_run(tmp_path, time.time(), "the simulation exited with 1")
    assert isinstance(_fresh_run(tmp_path, old, None), Run)


def test_bench_results_are_found_above_the_working_folder(tmp_path):
    results = tmp_path / "bench" / "results"
    results.mkdir(parents=True)
    (results / "mine.json").write_text(json.dumps({"measured": "2026-12-02", "argv": [["--quick"], ["--seeds", 1]],
                                                   "rows": [{"arm": "no-dp", "value": 0.9}]}))
    found = analysis.bench_results("mine.json", search_from=tmp_path / "sub" / "dir")
    assert found.path == results / "mine.json" and found.measured == "2026-12-02"
    assert found.rows["value"].tolist() == [0.9]
    assert found.commands("x") == "`./dev bench x --quick` and `./dev bench x --seeds 1`"
    assert analysis.bench_results("never-written.json", search_from=tmp_path) is None
