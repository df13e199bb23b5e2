"""`mmdomain demo` end to end (quick, toy domain): prints the report path last, the report's
numbers are the metrics files' numbers (the cross-site matrix among them), and the private arm is
local DP-SGD within its target epsilon on encoders that stayed as pretrained."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from mmdomain_federated.demo import demo


@pytest.mark.slow
def test_demo_quick_writes_a_consistent_report(tmp_path):
    env = {**os.environ, "MPLBACKEND": "Agg"}  # the Flower variables: conftest.py
    mmdomain = Path(sys.executable).with_name("mmdomain")
    proc = subprocess.run([str(mmdomain), "demo", "--quick", "--dataset", "toy", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    report = tmp_path / "report"
    assert last == f"report: {report}"
    for name in ("metrics.json", "metrics.csv", "summary.md", "comparison.png", "rounds.png", "cross_site.png"):
        assert (report / name).is_file(), name
    for png in ("comparison.png", "rounds.png", "cross_site.png"):
        data = (report / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    metrics = json.loads((report / "metrics.json").read_text())["results"]["toy"]
    metric = metrics["metric"]
    summary = (report / "summary.md").read_text()
    fed = metrics["federated"]["overall"][metric]
    assert f"| fusion | {fed:.3f} |" in summary
    for site, m in metrics["local"]["fusion"].items():
        assert f"{m['overall'][metric]:.3f}" in summary
    v = metrics["versus_local"]  # paired bootstrap of the pooled test set, federated vs best local
    # single-modality models skip test rows without their modality: only the fusion ones are paired here
    assert v["compared"] == ["site-0", "site-1", "site-2"]
    best_local = max(m["overall"][metric] for m in metrics["local"]["fusion"].values())
    assert v["metric"] == metric and v["margin"] == pytest.approx(fed - best_local, abs=1e-6)
    assert f"margin {v['margin']:+.3f}" in summary and f"{v['beats_all_share']:.0%} of resamples" in summary
    # each site's fusion model against its best single-modality model, on the same full-availability rows
    fvs = metrics["fusion_vs_single"]
    assert sorted(fvs) == ["site-0", "site-1", "site-2"]
    for site, m in fvs.items():
        assert m["metric"] == metric and set(m["others"]) == {"toy_image only", "toy_note only"}
        assert m["margin"] == pytest.approx(m["reference"] - max(m["others"].values()), abs=1e-6)
        assert m["interval"][0] <= m["margin"] <= m["interval"][1] and 0 < m["rows"] <= metrics["test_samples"]
        assert (f"- {site}: fusion {m['reference']:.3f}, {m['best_single']} {m['others'][m['best_single']]:.3f}: "
                f"margin {m['margin']:+.3f}") in summary

    # cross-site: each site's local fusion model and the federated one on every site's own test set and pooled
    cross, sites = metrics["cross_site"], ["site-0", "site-1", "site-2"]
    assert cross["metric"] == metric and cross["columns"] == [*sites, "pooled"]
    assert list(cross["models"]) == [f"local {s}" for s in sites] + ["global", "global + local DP"]
    for s in sites:  # the pooled column is the pooled score the report gives the same model
        assert cross["models"][f"local {s}"]["scores"]["pooled"] == metrics["local"]["fusion"][s]["overall"][metric]
    assert cross["models"]["global"]["scores"]["pooled"] == fed
    assert cross["models"]["global + local DP"]["scores"]["pooled"] == metrics["private"]["overall"][metric]
    for name, m in cross["models"].items():
        on_sites = [m["scores"][s] for s in sites]
        assert None not in on_sites and m["n"]["pooled"] == sum(m["n"][s] for s in sites)
        assert m["worst"] == min(on_sites) == m["scores"][m["worst_site"]] and all(m["worst"] <= v for v in on_sites)
        assert m["spread"] == pytest.approx(max(on_sites) - min(on_sites))
        assert (f"| {name} | " + " | ".join(f"{m['scores'][c]:.3f}" for c in cross["columns"])
                + f" | {m['worst_site']} {m['worst']:.3f} | {m['spread']:.3f} |") in summary
        assert m["by_pattern"] and all(n >= 5 for pm in m["by_pattern"].values() for n in pm["n"].values())
    g = cross["models"]["global"]
    assert f"toy cross-site {metric}: global worst {g['worst_site']} {g['worst']:.3f}, spread" in proc.stdout
    # the server's final evaluation (summary.json's final.per_site, by node id; in-process site i is node 101 + i)
    # already scores the global model on each site's own test set: the same numbers
    final = json.loads((tmp_path / "runs" / "toy" / "federated" / "summary.json").read_text())["final"]["per_site"]
    assert [final[str(101 + i)][metric] for i in range(3)] == pytest.approx([g["scores"][s] for s in sites], abs=1e-6)

    # heterogeneity: each site against the others, from the readiness reports the sites would send
    het = metrics["heterogeneity"]
    assert list(het) == sites and all(set(h) == {"labels", "patterns", "input toy_image", "input toy_note"}
                                      for h in het.values())
    assert all(0 <= v <= 1 for h in het.values() for v in h.values() if v is not None)
    assert all(h["labels"] is not None and h["input toy_image"] is not None for h in het.values())
    assert "Heterogeneity: each site against the others pooled" in summary
    for s in sites:
        assert (f"| {s} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in het[s].values()) + " |") in summary
    assert "heterogeneity: site site-0: labels JS" in proc.stdout
    assert (tmp_path / "runs" / "toy" / "federated" / "heterogeneity.json").is_file()  # the server measured it too

    # the private arm: local DP-SGD at every site, within the target, on the pretrained encoders, frozen
    p = metrics["private"]
    assert p["mode"] == "local" and p["epsilon_target"] == 8.0 and p["delta"] == 1e-5
    run = tmp_path / "runs" / "toy" / "private"
    fed_summary = json.loads((run / "summary.json").read_text())
    spent = fed_summary["local-epsilon"]  # what each site's own accountant reported
    assert len(spent) == 3 and p["epsilon_per_site"] == spent
    assert 0 < p["epsilon"] == max(spent.values()) <= 8.0
    ledger = [json.loads(line) for line in (run / "privacy-ledger.jsonl").read_text().splitlines()]
    assert ledger and {r["mechanism"] for r in ledger} == {"dp-sgd-local-record-level"}
    assert not fed_summary.get("epsilon")  # no central release
    pretrained = load_file(p["pretrain"]["checkpoint"])
    final = load_file(str(run / "model.safetensors"))
    encoders = [k for k in final if k.startswith(("encoders.toy_image.", "encoders.toy_note."))]
    assert encoders and all(final[k].equal(pretrained[k]) for k in encoders)  # frozen: exactly as pretrained
    fusion = [k for k in final if k.startswith("fusion.") and k in pretrained]
    assert any(not final[k].equal(pretrained[k]) for k in fusion)  # ... while the fusion head was trained
    assert p["frozen"]["encoders"] == ["toy_image", "toy_note"] and p["frozen"]["unchanged"] is True
    assert p["frozen"]["tensors"] == len(encoders)
    value = p["overall"][metric]
    assert p["minus_federated"] == pytest.approx(value - fed)
    assert p["versus_federated"]["margin"] == pytest.approx(value - fed, abs=1e-6)
    eps_words = f"epsilon {p['epsilon']:.1f} at delta 1e-05, frozen pretrained encoders"
    line = f"toy: federated {metric} {fed:.3f}; private (local DP-SGD, {eps_words}) {value:.3f}"
    assert line in proc.stdout and line in summary  # printed, and in the report
    assert (f"| fusion, local DP-SGD, frozen pretrained encoders | {value:.3f} | {value - fed:+.3f} | "
            f"{p['epsilon']:.2f} (8) at delta 1e-05 |") in summary
    assert "local DP-SGD (record-level" in summary and "unchanged in the final model" in summary
    assert "each site on its own accountant" in summary
    pre = p["pretrain"]  # supervised on the public site (the default): its model alone is scored and reported
    assert pre["kind"] == "supervised" and pre["samples"] >= pre["pairs"] > 0
    public = pre["public_only"][metric]
    assert (f"| the public model alone (pretrained on the public site's labels, no site's data) | {public:.3f} | "
            f"{public - fed:+.3f} |") in summary
    assert f"toy: the public model alone (pretrained on the public site's labels, no site's data) {metric} " \
           f"{public:.3f}" in proc.stdout
    assert "pretrained on a public site with the whole model on its labels (supervised)" in summary
    sent = [metrics[k]["history"][0]["bytes-down"] for k in ("federated", "private")]
    assert 0 < sent[1] < sent[0]  # the frozen encoders do not travel
    assert f"A round sends the sites {sent[1] / 1e3:,.0f} kB of weights in all" in summary

    with (report / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    row = next(r for r in rows if r["model"] == "federated fusion" and r["metric"] == metric)
    assert float(row["value"]) == pytest.approx(fed)
    cells = {(r["model"], r["site"]): float(r["value"]) for r in rows if r["metric"] == metric}
    assert cells["cross-site global", "pooled"] == pytest.approx(fed)
    assert [cells["cross-site local site-1", s] for s in sites] == pytest.approx(
        [cross["models"]["local site-1"]["scores"][s] for s in sites])
    row = next(r for r in rows if r["metric"] == f"bootstrap margin vs best local {metric}")
    assert float(row["value"]) == pytest.approx(v["margin"])
    private = {(r["site"], r["metric"]): float(r["value"]) for r in rows if r["model"] == "federated fusion + local DP"}
    assert private["all", metric] == pytest.approx(value) and private["all", "epsilon"] == pytest.approx(p["epsilon"])
    assert private["all", "delta"] == pytest.approx(1e-5)
    assert private["all", f"minus federated {metric}"] == pytest.approx(value - fed)
    assert cells["public model", "all"] == pytest.approx(public)
    assert [private[f"node {site}", "epsilon"] for site in spent] == pytest.approx(list(spent.values()))
    het_rows = {(r["site"], r["metric"]): float(r["value"]) for r in rows if r["model"] == "data"}
    assert het_rows["site-1", "heterogeneity labels"] == pytest.approx(het["site-1"]["labels"])
    assert {r["model"] for r in rows} >= {"local fusion", "local toy_image only", "local toy_note only",
                                          "federated fusion", "federated fusion + local DP", "public model"}

    # MLflow (on by default): one run for the demo, a nested one per model, read through MLflow's own API
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads its file store only with this
    os.environ.update({"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"})
    import mlflow

    assert "tracked: MLflow run" in proc.stdout
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    runs = mlflow.search_runs(experiment_names=["mmdomain-demo"])
    [parent] = runs[runs["tags.mmdomain.kind"] == "demo"]["run_id"]
    children = runs[runs["tags.mlflow.parentRunId"] == parent].set_index("tags.mlflow.runName")
    models = {r["model"] for r in rows if r["model"] != "data" and not r["model"].startswith("cross-site ")}
    assert set(children.index) == {f"toy: {m}" for m in models}
    assert children.loc["toy: federated fusion", f"metrics.{metric}"] == pytest.approx(fed)
    assert children.loc["toy: federated fusion + local DP", "metrics.epsilon"] == pytest.approx(p["epsilon"])
    assert children.loc["toy: local fusion", f"metrics.site-1/{metric}"] == pytest.approx(
        metrics["local"]["fusion"]["site-1"]["overall"][metric])
    fed_run = mlflow.MlflowClient().list_artifacts(children.loc["toy: federated fusion", "run_id"])
    assert {"summary.json", "model.safetensors"} <= {a.path for a in fed_run}  # its run folder, as fed run logs it


@pytest.mark.parametrize("args, named", [(["--privacy", "shuffle"], "--privacy"),
                                         (["--target-epsilon", "0"], "--target-epsilon"),
                                         (["--target-delta", "1"], "--target-delta"),
                                         (["--clip", "-1"], "--clip")])
def test_demo_refuses_a_bad_privacy_option_naming_it(args, named):
    result = CliRunner().invoke(demo, ["--dataset", "toy", *args])
    assert result.exit_code == 2 and named in result.output  # click's usage error, before anything runs


def test_report_shows_a_central_private_arm_with_its_mode_budget_and_difference(tmp_path):
    from mmdomain_federated.report import write_report

    score = {"macro_auroc": 0.8, "loss": 0.5}
    local = {"fusion": {f"site-{i}": {"overall": score, "by_pattern": {}} for i in range(2)}}
    fed = {"overall": {"macro_auroc": 0.85}, "history": [{"round": 1, "eval-macro_auroc": 0.7}], "rounds": 1,
           "stopped": "completed", "epsilon": None}
    private = {"mode": "central", "overall": {"macro_auroc": 0.61}, "history": [{"round": 1, "epsilon": 5.25}],
               "rounds": 1, "stopped": "completed", "epsilon": 5.25, "epsilon_target": 6.0, "delta": 1e-6,
               "epsilon_per_site": {}, "noise_multiplier": {"server": 2.5}, "clip_norm": 1.0, "batch_size": 64,
               "lr": 0.03, "minus_federated": 0.61 - 0.85, "versus_federated": None, "pretrain": None,
               "frozen": {"encoders": [], "tensors": 0, "unchanged": None}}
    results = {"toy": {"metric": "macro_auroc", "test_samples": 10, "local": local, "federated": fed,
                       "private": private, "versus_local": None,
                       "readiness": {"site-0": {"samples": 5, "patterns": {"a+b": 5}}}}}
    plan = {"sites": 2, "rounds": 1, "engine": "in-process", "fusion": None, "privacy": "central",
            "target_epsilon": 6.0, "target_delta": 1e-6, "clip": 1.0, "pretrain_epochs": 1}
    summary = write_report(results, plan, tmp_path, 0.0).read_text()
    assert "central DP (site-level" in summary and "target epsilon of 6 at delta 1e-06" in summary
    assert "| fusion, central DP | 0.610 | -0.240 | 5.25 (6) at delta 1e-06 | 1 | completed |" in summary
    assert ("toy: federated macro_auroc 0.850; private (central DP, epsilon 5.2 at delta 1e-06, every parameter "
            "from scratch) 0.610, -0.240 against the non-private federated model.") in summary
    assert "Server noise multiplier 2.50" in summary and "each site on its own accountant" not in summary
    rows = (tmp_path / "metrics.csv").read_text()
    assert "toy,federated fusion + central DP,all,epsilon,5.25" in rows
    assert (tmp_path / "rounds.png").stat().st_size > 10_000


def test_the_public_site_is_larger_than_a_demo_site_and_contrastive_pretraining_scores_no_public_model(tmp_path):
    """``--pretrain contrastive`` (the end-to-end test runs the supervised default): the encoders are
    pretrained on the public site's pairs, and there is no public model to score alone."""
    from mmdomain.checkpoint import load_checkpoint
    from mmdomain.plugins import get_registry
    from mmdomain_federated.demo import _pretrain, public_site_options
    from mmdomain_federated.experiment import Clock, pooled_test, site_options, synthetic_sites

    registry = get_registry()
    gen = registry.synthetic_for("medical")
    assert public_site_options(gen, False) == {**gen.demo_options, **gen.demo_public_options}
    assert public_site_options(gen, False)["studies_per_site"] > gen.demo_options["studies_per_site"]
    assert public_site_options(gen, True) == site_options(gen, True)  # --quick: as small as a site

    lines: list[str] = []
    clock = Clock(lines.append)
    settings = synthetic_sites(registry, "toy", tmp_path / "data" / "toy", sites=2, seed=0, quick=True, clock=clock,
                               config={"num-server-rounds": 1})
    test = pooled_test(settings, registry, 2)
    plan = {"pretrain": "contrastive", "seed": 0, "pretrain_epochs": 1, "quick": True}
    pre = _pretrain(registry, "toy", settings, tmp_path, plan, test, clock, lines.append)
    assert pre["kind"] == "contrastive" and pre["public_only"] is None and 0 < pre["pairs"] <= pre["samples"]
    model, _ = load_checkpoint(pre["checkpoint"], registry)
    assert model.config.task.name == "contrastive"
    assert any("contrastively, labels unused" in line for line in lines)
