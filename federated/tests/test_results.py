"""Where a run writes on a coordinator (MMDOMAIN_RESULTS_DIR) and `mmdomain fed results` reading it
back (< 1 s; the real run read back is in test_consortium)."""

import json

from click.testing import CliRunner

from mmdomain_federated.plugin import fed
from mmdomain_federated.results import ENV, run_folder


def test_runs_go_to_the_results_folder_when_one_is_set(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert run_folder("", 7).name == "run-7" and run_folder("/abs/x", 7).as_posix() == "/abs/x"
    monkeypatch.setenv(ENV, str(tmp_path))
    assert run_folder("", 7) == tmp_path / "run-7"
    assert run_folder("first", 7) == tmp_path / "first"  # relative: inside the results folder
    assert run_folder("/abs/x", 7).as_posix() == "/abs/x"


def test_results_lists_shows_and_copies_a_run(tmp_path, monkeypatch):
    run = tmp_path / "results" / "first"
    run.mkdir(parents=True)
    (run / "events.log").write_text("")
    (run / "summary.json").write_text(json.dumps({
        "stopped": "completed", "rounds": 2, "refused": {"hospital-c": "site policy refuses this job: x"},
        "final": {"overall": {"macro_auroc": 0.8123, "n": 48.0}, "per_site": {"hospital-a": {"macro_auroc": 0.7, "n": 24}}},
        "history": [{"round": 2, "dropped-sites": {"hospital-b": "no answer"}}]}))
    (tmp_path / "results" / "second").mkdir()
    (tmp_path / "results" / "second" / "events.log").write_text("round 1")
    (tmp_path / "results" / "not-a-run").mkdir()
    monkeypatch.setenv(ENV, str(tmp_path / "results"))
    runner = CliRunner()
    listed = runner.invoke(fed, ["results"])
    assert listed.exit_code == 0, listed.output
    assert "first: completed, 2 round(s), macro AUROC 0.812" in listed.output
    assert "second: running or interrupted" in listed.output and "not-a-run" not in listed.output
    shown = runner.invoke(fed, ["results", "first", "--copy-to", str(tmp_path / "mine")])
    assert shown.exit_code == 0, shown.output
    for text in ("site hospital-a: macro_auroc 0.700, n 24", "refused by hospital-c: site policy refuses",
                 "round 2: dropped hospital-b (no answer)", f"copied to {tmp_path / 'mine' / 'first'}"):
        assert text in shown.output, (text, shown.output)
    assert (tmp_path / "mine" / "first" / "summary.json").exists()
    again = runner.invoke(fed, ["results", "first", "--copy-to", str(tmp_path / "mine")])
    assert again.exit_code == 1 and "exists" in again.output and "Traceback" not in again.output
    missing = runner.invoke(fed, ["results", "second"])
    assert missing.exit_code == 1 and "no readable summary.json" in missing.output
