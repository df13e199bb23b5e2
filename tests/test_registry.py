"""mmdomain.registry: spec validation, duplicate names, the front doors to the firstresult hooks."""

import pytest

from mmdomain import (
    DatasetSpec,
    DuplicateNameError,
    FusionSpec,
    InvalidSpecError,
    ModalitySpec,
    UnknownComponentError,
    hookimpl,
)
from mmdomain.fusion import LateFusion
from mmdomain.registry import Registry


class GoodPlugin:
    @hookimpl
    def register_modalities(self, register):
        register(ModalitySpec("thermal", "image", channels=1, extensions=(".thm",)))


def test_duplicate_name_names_both_plugins():
    reg = Registry()
    reg.add("fusion", FusionSpec("late", LateFusion), "first")
    with pytest.raises(DuplicateNameError, match="'first'.*'second'"):
        reg.add("fusion", FusionSpec("late", LateFusion), "second")


def test_unknown_name_lists_available(mm_bare_manager):
    with pytest.raises(UnknownComponentError, match="available: concat, cross_attention, gated, hemis, late, token_attention"):
        mm_bare_manager.registry.fusion("early")


def test_spec_validation():
    with pytest.raises(InvalidSpecError):
        ModalitySpec("x", "image", channels=0).validate()
    with pytest.raises(InvalidSpecError):
        ModalitySpec("bad name!", "text").validate()


def test_a_declared_task_option_reaches_the_builder_and_nothing_else_does():
    """``DatasetSpec.task_option``: the run's task reaches the builder when the dataset names it,
    never when it does not (a builder without that option would fail), and never over the data
    options' own ``task``."""
    calls = []
    spec = DatasetSpec("scenes", ("a", "b"), lambda root, split, **kw: calls.append(kw),
                       task_option=("multilabel", "contrastive"))
    spec.validate()
    spec.build_for("r", "train", task="contrastive")
    spec.build_for("r", "train", task="multiclass")
    spec.build_for("r", "train", "contrastive", {"task": "multilabel", "patch_size": 8})
    DatasetSpec("plain", ("a",), lambda root, split, **kw: calls.append(kw)).build_for("r", "val", task="contrastive")
    assert calls == [{"task": "contrastive"}, {}, {"task": "multilabel", "patch_size": 8}, {}]
    with pytest.raises(InvalidSpecError, match="task_option"):
        DatasetSpec("bad", ("a",), print, task_option="contrastive").validate()


def test_detect_modality_fallback_uses_extensions(register_plugin, tmp_path):
    manager = register_plugin(GoodPlugin(), name="good")
    f = tmp_path / "x.thm"
    f.write_bytes(b"")
    assert manager.registry.detect_modality(f) == "thermal"
    assert manager.registry.detect_modality(tmp_path / "x.unknown") is None


def test_detect_modality_asks_plugins_before_extensions(register_plugin, tmp_path):
    class Claims:
        @hookimpl
        def detect_modality(self, path):
            return "claimed" if path.name.startswith("claim") else None

    manager = register_plugin(GoodPlugin(), name="good")
    manager.register(Claims(), name="claims")
    assert manager.registry.detect_modality(tmp_path / "claim.thm") == "claimed"  # the plugin wins
    assert manager.registry.detect_modality(tmp_path / "other.thm") == "thermal"  # then the suffix


class _Metaset:
    def __init__(self, sites):
        self.sites = sites

    def __len__(self):
        return len(self.sites)

    def sample_meta(self, i):
        return {"site": self.sites[i]}


def test_partition_fallbacks(mm_bare_manager):
    from mmdomain import ConfigError, DataError

    registry = mm_bare_manager.registry

    def hook(*, dataset, num_sites, site, scheme):
        return registry.partition(dataset, num_sites, site, scheme)

    ds = _Metaset(["b", "a", "c", "a", "b", "c", "a"])
    shares = [hook(dataset=ds, num_sites=3, site=s, scheme="iid") for s in range(3)]
    assert sorted(i for share in shares for i in share) == list(range(7))  # disjoint, complete
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert hook(dataset=ds, num_sites=3, site=0, scheme="iid") == shares[0]  # deterministic
    by_site = [hook(dataset=ds, num_sites=3, site=s, scheme="by-meta:site") for s in range(3)]
    assert by_site == [[1, 3, 6], [0, 4], [2, 5]]
    with pytest.raises(ConfigError, match="'by-region' is not known"):  # unknown: nobody answers
        hook(dataset=ds, num_sites=3, site=0, scheme="by-region")
    with pytest.raises(DataError, match="3 distinct 'site' values"):
        hook(dataset=ds, num_sites=2, site=0, scheme="by-meta:site")
