"""Cross-site evaluation (``cross_site``): every model on every site's own test set and on the
pooled one, against ``task.evaluate_site`` called directly on the same data (toy sites)."""

import math

import pytest
import torch

from mmdomain.config import single_modality
from mmdomain.errors import ConfigError
from mmdomain.models import build_model
from mmdomain_federated import task
from mmdomain_federated.cross_site import POOLED, CrossSite, cross_site, describe, local_vs_global
from mmdomain_federated.experiment import pooled_test, site_tests
from mmdomain_federated.report import cross_site_lines, cross_site_rows


@pytest.fixture(scope="module")
def toy(registry):
    """Three toy sites (the image hidden at site 0) and two models: the default fusion model after
    a few steps at site 1, and an untrained image-only model (which site 0 cannot score)."""
    from mmdomain_federated.settings import Settings

    root = task.synthetic_root(registry, "toy", 3, 0, True)
    settings = Settings.from_run_config({"dataset": "toy", "data-root": str(root), "max-steps": 3,
                                         "batch-size": 16, "readiness": False, "device": "cpu",
                                         "site-modalities": "0=toy_note"})
    cfg = task.model_config(settings, registry)
    torch.manual_seed(0)
    fusion = build_model(cfg, registry)
    task.train_site(fusion, task.load_site(settings, {"partition-id": 1, "num-partitions": 3}, registry, "train"),
                    settings, seed=0)
    torch.manual_seed(1)
    image = build_model(single_modality(cfg, "toy_image"), registry)
    # the names are the rows the summaries read (``local site-<i>``, ``global``); any name would do here
    return settings, site_tests(settings, registry, 3), {"local site-1": fusion, "global": image}


def test_the_matrix_is_evaluate_site_on_each_sites_test_set_and_the_pooled_one(toy, registry):
    settings, tests, models = toy
    matrix = cross_site(models, tests, settings)
    metric = matrix["metric"]
    assert metric == "macro_auroc" and matrix["sites"] == ["site-0", "site-1", "site-2"]
    assert matrix["columns"] == ["site-0", "site-1", "site-2", POOLED] and set(matrix["models"]) == set(models)
    pooled = pooled_test(settings, registry, 3)
    for name, model in models.items():
        row = matrix["models"][name]
        unscored = {"site-0"} if name == "global" else set()  # the image-only model, where no image is
        direct = {c: task.evaluate_site(model, data, settings) for c, data in tests.items() if c not in unscored}
        direct[POOLED] = task.evaluate_site(model, pooled, settings)
        for column, result in direct.items():
            assert row["scores"][column] == result["overall"][metric] and row["n"][column] == result["n"]
            for pattern, values in result["by_pattern"].items():
                cell = row["by_pattern"].get(pattern, {"scores": {}})["scores"]
                if values["n"] >= task.SUPPRESS_BELOW:
                    assert cell[column] == values.get(metric)
                else:  # too few rows for a score to be shown
                    assert column not in cell
        scored = {s: row["scores"][s] for s in matrix["sites"] if row["scores"][s] is not None}
        assert row["worst"] == min(scored.values()) and row["scores"][row["worst_site"]] == row["worst"]
        assert row["spread"] == pytest.approx(max(scored.values()) - min(scored.values()))
        assert row["mean"] == pytest.approx(sum(scored.values()) / len(scored))
        assert all(row["worst"] <= v for v in scored.values())
    # the image-only model at the site without images: no score, a note without any path, no crash
    image = matrix["models"]["global"]
    assert image["scores"]["site-0"] is None and image["n"]["site-0"] == 0 and image["sites_scored"] == 2
    assert image["notes"] == {"site-0": "not scored (DataError)"}
    assert matrix["models"]["local site-1"]["sites_scored"] == 3 and "notes" not in matrix["models"]["local site-1"]


def test_a_given_pooled_result_is_used_and_the_summaries_read_the_matrix(toy, registry):
    settings, tests, models = toy
    pooled = pooled_test(settings, registry, 3, tests)
    cross = CrossSite(tests, settings)
    given = task.evaluate_site(models["local site-1"], pooled, settings)
    cross.add("local site-1", models["local site-1"], pooled=given)
    cross.add("global", models["global"])
    matrix = cross.matrix("macro_auroc")
    assert matrix == cross_site(models, tests, settings, "macro_auroc")  # the same cells either way
    local, glob = matrix["models"]["local site-1"], matrix["models"]["global"]
    assert local["scores"][POOLED] == given["overall"]["macro_auroc"]
    s = local_vs_global(matrix)
    assert s["local_models"] == 1 and s["local_worst_mean"] == local["worst"] and s["global"]["worst"] == glob["worst"]
    assert s["local_lowest"] == {"model": "local site-1", "site": local["worst_site"], "score": local["worst"]}
    line = describe(matrix)
    assert line.startswith(f"global worst {glob['worst_site']} {glob['worst']:.3f}, spread {glob['spread']:.3f}; "
                           f"1 local-only models: worst {local['worst']:.3f}")
    # the demo report's table and CSV rows carry the same numbers
    table = "\n".join(cross_site_lines(matrix))
    assert ("| local site-1 | " + " | ".join(f"{local['scores'][c]:.3f}" for c in matrix["columns"])
            + f" | {local['worst_site']} {local['worst']:.3f} | {local['spread']:.3f} | {local['mean']:.3f} |") in table
    assert f"| global | - | {glob['scores']['site-1']:.3f} |" in table
    rows = {(r["model"], r["site"], r["metric"]): r["value"] for r in cross_site_rows("toy", matrix)}
    assert rows["cross-site global", POOLED, "macro_auroc"] == glob["scores"][POOLED]
    assert ("cross-site global", "site-0", "macro_auroc") not in rows  # no score, no row
    assert rows["cross-site local site-1", local["worst_site"], "worst site macro_auroc"] == local["worst"]
    assert rows["cross-site local site-1", "sites", "spread macro_auroc"] == local["spread"]
    assert all(math.isfinite(v) for v in rows.values())


def test_a_site_named_like_the_pooled_column_is_refused(toy):
    settings, tests, _ = toy
    with pytest.raises(ConfigError, match="pooled"):
        CrossSite({"pooled": tests["site-0"]}, settings)
