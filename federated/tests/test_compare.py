"""``mmdomain fed compare``: federated vs each site's local-only model over seeds (toy, quick)."""

import json

import pytest
from click.testing import CliRunner

from mmdomain.cli import _add_plugin_commands, cli

_add_plugin_commands()  # what `mmdomain` does before parsing: the plugins' commands, `fed compare` among them


@pytest.mark.slow
def test_compare_over_two_seeds_reports_consistent_margins(tmp_path):
    result = CliRunner().invoke(cli, ["fed", "compare", "--dataset", "toy", "--seeds", "3,4", "--rounds", "2",
                                      "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == f"report: {tmp_path / 'compare.md'}"
    report = json.loads((tmp_path / "compare.json").read_text())
    assert [r["seed"] for r in report["runs"]] == [3, 4]
    for r in report["runs"]:
        assert set(r["local"]) == {"site-0", "site-1", "site-2"}
        assert r["margin"] == pytest.approx(r["federated"] - max(r["local"].values()))
        b = r["bootstrap"]
        assert b["margin"] == pytest.approx(r["margin"], abs=1e-6)  # same predictions, same metric
        assert b["interval"][0] <= b["interval"][1] and 0 <= b["beats_all_share"] <= 1
        assert b["resamples"] + b["undefined_resamples"] == 1000
        cross = r["cross_site"]  # every model on every site's own test set; pooled = the scores above
        assert list(cross["models"]) == ["local site-0", "local site-1", "local site-2", "global"]
        assert cross["models"]["global"]["scores"]["pooled"] == r["federated"]
        assert {s: cross["models"][f"local {s}"]["scores"]["pooled"] for s in r["local"]} == r["local"]
        on_sites = {n: [m["scores"][s] for s in cross["sites"]] for n, m in cross["models"].items()}
        for name, m in cross["models"].items():
            assert m["worst"] == min(on_sites[name]) and m["spread"] == pytest.approx(max(on_sites[name]) - m["worst"])
        summary = r["cross_site_summary"]
        assert summary["global"]["worst"] == cross["models"]["global"]["worst"]
        assert summary["local_spread_mean"] == pytest.approx(
            sum(max(on_sites[f"local {s}"]) - min(on_sites[f"local {s}"]) for s in r["local"]) / 3)
        assert (f"seed {r['seed']}: cross-site {r['metric']}: global worst {summary['global']['worst_site']} "
                f"{summary['global']['worst']:.3f}") in result.output
    assert report["wins"] == sum(r["margin"] > 0 for r in report["runs"])
    md = (tmp_path / "compare.md").read_text()
    assert f"in {report['wins']} of 2 seeds" in md
    assert f"{report['runs'][0]['federated']:.3f}" in md
    g = report["runs"][1]["cross_site_summary"]["global"]
    assert f"| 4 | {g['worst_site']} {g['worst']:.3f} | {g['spread']:.3f} |" in md
    assert (tmp_path / "seed-4" / "federated" / "model.safetensors").is_file()


@pytest.mark.parametrize("seeds", ["a,b", "1,1", ""])
def test_compare_rejects_bad_seeds_before_any_work(tmp_path, seeds):
    result = CliRunner().invoke(cli, ["fed", "compare", "--dataset", "toy", "--seeds", seeds, "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--seeds" in result.output and "0,1,2" in result.output
    assert not any(tmp_path.iterdir())


def test_compare_names_a_dataset_without_generator(tmp_path):
    result = CliRunner().invoke(cli, ["fed", "compare", "--dataset", "nope", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "nope" in result.output and "Traceback" not in result.output


def test_compare_with_personalisation_adds_each_sites_own_model_to_the_matrix(tmp_path):
    result = CliRunner().invoke(cli, ["fed", "compare", "--dataset", "toy", "--seeds", "5", "--rounds", "2", "--quick",
                                      "--personalise", "finetune", "--no-track", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "compare.json").read_text())["runs"][0]
    models, metric = run["cross_site"]["models"], run["metric"]
    mine = models["personalised (finetune)"]
    sites = run["cross_site"]["sites"]
    assert mine["scores"]["pooled"] is None and all(mine["scores"][s] is not None for s in sites)
    p = run["personalised"]
    assert p["margins"] == pytest.approx({s: mine["scores"][s] - models["global"]["scores"][s] for s in sites})
    # the orchestrator's score of each site's file is what that site reported for its own model
    summary = json.loads((tmp_path / "seed-5" / "federated" / "summary.json").read_text())
    reported = summary["personalised"]["per_site"]
    assert [reported[str(101 + i)][metric] for i in range(3)] == pytest.approx([mine["scores"][s] for s in sites])
    assert len(list((tmp_path / "seed-5" / "federated" / "sites").glob("site-*/personal-*.safetensors"))) == 3
    md = (tmp_path / "compare.md").read_text()
    assert "Personalised (finetune) minus global, each site's own test set" in md
    assert f"| 5 | {p['margins']['site-0']:+.3f} |" in md
    assert "better than global at" in result.output


def test_compare_refuses_personalisation_in_the_simulation_before_any_work(tmp_path):
    result = CliRunner().invoke(cli, ["fed", "compare", "--dataset", "toy", "--personalise", "fedbn", "--engine",
                                      "simulation", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--personalise needs --engine in-process" in result.output
    assert not any(tmp_path.iterdir())
