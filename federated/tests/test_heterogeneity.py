"""How different the sites are (issue #16 item 2): the divergences' mathematics, the profile a
site adds to its readiness report (exact without noise, noised and suppressed with it, nothing
but numbers), and a shift the generator or the run config makes, found where it was made."""

import json
import math
import random

import numpy as np
import pytest
import torch

from mmdomain_federated import analysis
from mmdomain_federated.heterogeneity import SUPPRESSED_AS, divergences, hellinger_normal, js_divergence, profile
from mmdomain_federated.readiness import _noisy, readiness
from mmdomain_federated.settings import Settings


def test_js_divergence_and_hellinger_distance_against_their_definitions():
    assert js_divergence([3, 1], [6, 2]) == pytest.approx(0.0)  # the same distribution, other totals
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    p, q = np.array([0.5, 0.3, 0.2]), np.array([0.1, 0.1, 0.8])
    m = (p + q) / 2
    expected = 0.5 * np.sum(p * np.log2(p / m)) + 0.5 * np.sum(q * np.log2(q / m))
    assert js_divergence(list(p * 10), list(q * 7)) == pytest.approx(expected)
    assert js_divergence([0, 0], [1, 1]) is None

    assert hellinger_normal(1.0, 2.0, 1.0, 2.0) == pytest.approx(0.0, abs=1e-7)
    assert hellinger_normal(0.0, 0.1, 50.0, 0.1) == pytest.approx(1.0)
    x = np.linspace(-30, 30, 200_001)

    def pdf(mu, sd):
        return np.exp(-((x - mu) ** 2) / (2 * sd ** 2)) / (sd * math.sqrt(2 * math.pi))
    bc = np.trapezoid(np.sqrt(pdf(0.3, 1.2) * pdf(-1.0, 2.5)), x)  # Bhattacharyya coefficient, numerically
    assert hellinger_normal(0.3, 1.2, -1.0, 2.5) == pytest.approx(math.sqrt(1 - bc), abs=1e-6)


def _report(labels, patterns, mean, n=50):
    return {"splits": {"train": {"n": n, "patterns": patterns,
                                 "profile": {"rows": n, "labels": {"kind": "multi-label", "counts": labels},
                                             "inputs": {"image": {"rows": n, "mean": [mean], "std": [1.0]}}}}}}


def test_the_site_that_differs_is_the_one_that_stands_out():
    report = {
        "1": _report([20, 20, 10], {"image": 10, "image+report": 40}, 0.0),
        "2": _report([21, 19, 10], {"image": 12, "image+report": 38}, 0.1),
        "3": _report([2, 5, 40], {"report": 45, "image+report": "<5"}, 3.0),  # other labels, patterns, scanner
        "4": {"error": "no data"},  # left out, as a site that refused would be
    }
    div = divergences(report)
    assert set(div) == {"1", "2", "3"}
    for kind in ("labels", "patterns", "input image"):
        assert max(div, key=lambda s: div[s][kind]) == "3", kind
        # the others look a little different too: the rest they are held against includes site 3
        assert div["3"][kind] > 1.8 * max(div["1"][kind], div["2"][kind])
    # a suppressed cell counts as the middle of 0..4, not as 0 or as 5
    alone = divergences({"a": _report([1], {"x": "<5", "y": 10}, 0), "b": _report([1], {"x": SUPPRESSED_AS, "y": 10}, 0)})
    assert alone["a"]["patterns"] == pytest.approx(0.0)
    single = divergences({"1": report["1"]})
    assert single["1"] == {"labels": None, "patterns": None, "input image": None}


@pytest.fixture(scope="module")
def regions(tmp_path_factory, registry):
    root = tmp_path_factory.mktemp("het") / "regions"
    registry.synthetic("s2s1_regions").generate(root, num_sites=3, seed=0, scenes_per_site=1, size=128, patch_size=16)
    return root


def test_the_profile_is_exact_without_noise_and_only_numbers_with_it(regions, registry):
    settings = Settings.from_run_config({"dataset": "s2s1_scenes", "data-root": str(regions)})
    data = analysis.site_data(settings, site=0, sites=3)
    exact = profile(data, ["s1", "s2"], rows=10_000, rng=random.Random(0), noise_scale=0.0, noisy=_noisy)
    targets = torch.stack([data[i].target for i in range(len(data))])
    want = [int(c) if c >= 5 else "<5" for c in (targets == 1).sum(0).tolist()]
    assert exact["labels"] == {"kind": "multi-label", "counts": want}
    s2 = torch.cat([data[i].inputs["s2"].double().reshape(12, -1) for i in range(len(data)) if "s2" in data[i].inputs],
                   dim=1)
    assert exact["inputs"]["s2"]["mean"] == pytest.approx(s2.mean(1).tolist(), abs=1e-4)
    assert exact["inputs"]["s2"]["std"] == pytest.approx(s2.std(1, unbiased=False).tolist(), abs=1e-4)

    capped = profile(data, ["s1", "s2"], rows=6, rng=random.Random(0), noise_scale=0.0, noisy=_noisy)
    assert capped["rows"] == 6 and all(5 <= info["rows"] <= 6 for info in capped["inputs"].values())
    held = {m: sum(m in data[i].inputs for i in range(len(data))) for m in ("s1", "s2")}
    assert min(held.values()) < len(data)  # some rows lack a modality, so 6 rows may hold it < 5 times
    few = profile(data, ["s1", "s2"], rows=4, rng=random.Random(0), noise_scale=0.0, noisy=_noisy)
    assert few["inputs"] == {} and few["rows"] == "<5"  # statistics of fewer than 5 rows are never sent

    site_report = readiness(settings, {"partition-id": 0, "num-partitions": 3}, registry, seed=1)
    sent = site_report["splits"]["train"]["profile"]
    noised = sent["inputs"]["s2"]["mean"]
    assert noised != exact["inputs"]["s2"]["mean"]  # noise was added...
    assert noised == pytest.approx(exact["inputs"]["s2"]["mean"], abs=0.05)  # ...about a few records' worth

    def leaves(value):
        if isinstance(value, dict):
            for k, v in value.items():
                yield k
                yield from leaves(v)
        elif isinstance(value, list):
            for v in value:
                yield from leaves(v)
        else:
            yield value
    words = {v for v in leaves(sent) if isinstance(v, str)}
    assert words <= {"rows", "labels", "kind", "multi-label", "counts", "inputs", "s1", "s2", "mean", "std", "<5"}


def test_a_federation_measures_the_shift_it_was_given(regions, tmp_path, fast_config):
    """Site 2 made S1-only by the run config: its availability patterns are the farthest from the
    others' in the run's heterogeneity.json, the events log and the analysis table."""
    config = {**fast_config, "readiness": True, "dataset": "s2s1_scenes", "data-root": str(regions),
              "num-server-rounds": 1, "site-modalities": "2=s1"}
    run = analysis.federate(config, sites=3, out_dir=tmp_path / "run", progress=None)
    table = run.heterogeneity
    assert list(table.index) == ["site-0", "site-1", "site-2"]
    assert {"labels", "patterns", "input s1", "input s2"} <= set(table.columns)
    assert table["patterns"].idxmax() == "site-2" and table.loc["site-2", "patterns"] > 0.3
    assert math.isnan(table.loc["site-2", "input s2"])  # it sent no S2 statistics: it holds none
    assert ((table.fillna(0) >= 0) & (table.fillna(0) <= 1)).all().all()
    log = (run.folder / "events.log").read_text()
    assert "heterogeneity, each site against the others" in log and "site site-2 (node 103): labels JS" in log
    stored = json.loads((run.folder / "heterogeneity.json").read_text())
    assert set(stored) == {"101", "102", "103"}  # node ids in the file, as in readiness.json


def test_readiness_rows_zero_sends_no_profile_and_a_negative_is_refused(regions, registry):
    settings = Settings.from_run_config({"dataset": "s2s1_scenes", "data-root": str(regions), "readiness-rows": 0})
    report = readiness(settings, {"partition-id": 0, "num-partitions": 3}, registry, seed=0)
    assert "profile" not in report["splits"]["train"]
    from mmdomain.errors import ConfigError
    with pytest.raises(ConfigError, match="readiness-rows must be >= 0"):
        Settings.from_run_config({"readiness-rows": -1})


SIZES = {"medical": {"studies_per_site": 80, "image_size": 32},
         "s2s1_scenes": {"size": 192, "patch_size": 16, "scenes_per_site": 1}}
ALIKE = {"label_skew": 1000.0}  # the same class mix at every site (the plain regions differ in theirs)


def _mean_divergences(registry, dataset, root, sites=4, seed=0, **options):
    """Each kind's divergence averaged over the sites of a freshly generated federation."""
    gen = registry.synthetic_for(dataset)
    gen.generate(root, num_sites=sites, seed=seed, **SIZES[dataset], **options)
    settings = Settings.from_run_config({"dataset": dataset, "data-root": str(root)})
    reports = {f"site-{i}": readiness(settings, {"partition-id": i, "num-partitions": sites}, registry, seed=i)
               for i in range(sites)}
    div = divergences(reports)
    return {k: float(np.mean([row[k] for row in div.values() if row[k] is not None])) for k in next(iter(div.values()))}


@pytest.mark.parametrize("dataset, base, options, kind", [
    ("medical", {}, {"label_skew": 0.3}, "labels"),
    ("medical", {}, {"intensity_shift": 1.0}, "input dicom_image"),
    ("s2s1_scenes", ALIKE, {"label_skew": 0.3}, "labels"),
    ("s2s1_scenes", ALIKE, {"season_shift": 1.0}, "input s2"),
    ("s2s1_scenes", ALIKE, {"cloud_climate": 1.0}, "patterns"),
])
def test_a_generators_site_shift_shows_in_the_divergence_it_should(registry, tmp_path, dataset, base, options, kind):
    """The heterogeneous generators' options (issue #16 item 5) against the same federation without
    them, measured by what the sites' readiness reports say (4 small sites)."""
    plain = _mean_divergences(registry, dataset, tmp_path / "plain", **base)
    shifted = _mean_divergences(registry, dataset, tmp_path / "shifted", **{**base, **options})
    assert shifted[kind] > plain[kind] + 0.04 and shifted[kind] > 1.4 * plain[kind], (plain, shifted)
