"""`mmdomain demo` end to end (quick, toy domain): prints the report path last, and the report's
numbers are the metrics files' numbers."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


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
    for name in ("metrics.json", "metrics.csv", "summary.md", "comparison.png", "rounds.png"):
        assert (report / name).is_file(), name
    for png in ("comparison.png", "rounds.png"):
        data = (report / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    metrics = json.loads((report / "metrics.json").read_text())["results"]["toy"]
    metric = metrics["metric"]
    summary = (report / "summary.md").read_text()
    fed = metrics["federated"]["overall"][metric]
    assert f"| fusion | {fed:.3f} |" in summary
    for site, m in metrics["local"]["fusion"].items():
        assert f"{m['overall'][metric]:.3f}" in summary
    assert metrics["federated_dp"]["epsilon"] > 0
    v = metrics["versus_local"]  # paired bootstrap of the pooled test set, federated vs best local
    # single-modality models skip test rows without their modality: only the fusion ones are paired here
    assert v["compared"] == ["site-0", "site-1", "site-2"]
    best_local = max(m["overall"][metric] for m in metrics["local"]["fusion"].values())
    assert v["metric"] == metric and v["margin"] == pytest.approx(fed - best_local, abs=1e-6)
    assert f"margin {v['margin']:+.3f}" in summary and f"{v['beats_all_share']:.0%} of resamples" in summary
    assert f"{metrics['federated_dp']['epsilon']:.2f}" in summary
    with (report / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    row = next(r for r in rows if r["model"] == "federated fusion" and r["metric"] == metric)
    assert float(row["value"]) == pytest.approx(fed)
    row = next(r for r in rows if r["metric"] == f"bootstrap margin vs best local {metric}")
    assert float(row["value"]) == pytest.approx(v["margin"])
    assert {r["model"] for r in rows} >= {"local fusion", "local toy_image only", "local toy_note only",
                                          "federated fusion", "federated fusion + DP"}
