"""``DatasetSpec.task_option``: a contrastive model's run reads a scene folder without label
rasters (its pairs are enough) through the core's ``build_dataset``, as ``fed run`` does; a
supervised one still asks for them. The declared values are the ones the builders accept."""

import json
import shutil

import pytest

from mmdomain import DataError, get_registry
from mmdomain.config import DataConfig, ModelConfig, RunConfig, parse
from mmdomain.training import build_dataset
from mmdomain_remote_sensing.dataset import TASKS
from mmdomain_remote_sensing.layouts import sen12ms


@pytest.fixture(scope="module")
def registry():
    return get_registry()


def test_a_contrastive_run_reads_a_site_without_labels(registry, tmp_path):
    gen = registry.synthetic_for("s2s1_scenes")
    site = gen.generate(tmp_path, num_sites=1, seed=0, **gen.quick_options)[0]
    for labels in [p for p in site.rglob("labels") if p.is_dir()]:
        shutil.rmtree(labels)
    model = json.loads(json.dumps(registry.dataset("s2s1_scenes").default_model))
    model["task"] = {"name": "contrastive", "options": {}}
    ds = build_dataset(RunConfig(data=DataConfig(dataset="s2s1_scenes", root=site),
                                 model=parse(ModelConfig, model)), registry, "train")
    assert ds.task == "contrastive" and len(ds) > 0
    with pytest.raises(DataError, match="needs land-cover rasters"):
        build_dataset(RunConfig(data=DataConfig(dataset="s2s1_scenes", root=site)), registry, "train")


def test_the_declared_task_options_are_the_builders_own(registry):
    assert registry.dataset("s2s1_scenes").task_option == TASKS
    assert "contrastive" in registry.dataset("sen12ms").task_option
    with pytest.raises(DataError, match="task must be"):
        sen12ms.SEN12MS("/nonexistent", task="multilabel")
    assert registry.dataset("bigearthnet_v2").task_option == ()
