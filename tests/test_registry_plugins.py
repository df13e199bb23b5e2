"""Registry, plugin manager, isolation of broken plugins, strict mode, restriction by env."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from mmdomain import (DuplicateNameError, FusionSpec, InvalidSpecError, ModalitySpec, PluginLoadError,
                      UnknownComponentError, hookimpl)
from mmdomain.fusion import LateFusion
from mmdomain.plugins import PluginManager
from mmdomain.registry import Registry


class GoodPlugin:
    @hookimpl
    def register_modalities(self, register):
        register(ModalitySpec("thermal", "image", channels=1, extensions=(".thm",)))


class ClashingPlugin:
    @hookimpl
    def register_fusions(self, register):
        register(FusionSpec("late", LateFusion))


class InvalidPlugin:
    @hookimpl
    def register_modalities(self, register):
        register(ModalitySpec("ok_one", "image", channels=1))
        register(ModalitySpec("bad", "hologram", channels=1))


def test_builtins_register_through_hooks(mm_bare_manager):
    reg = mm_bare_manager.registry
    assert reg.names("fusion") == ["concat", "cross_attention", "gated", "late"]
    assert {"multiclass", "multilabel", "segmentation", "contrastive"} <= set(reg.names("task"))
    assert reg.owner("fusion", "late") == "mmdomain.builtins.fusions"


def test_duplicate_name_names_both_plugins():
    reg = Registry()
    reg.add("fusion", FusionSpec("late", LateFusion), "first")
    with pytest.raises(DuplicateNameError, match="'first'.*'second'"):
        reg.add("fusion", FusionSpec("late", LateFusion), "second")


def test_clashing_plugin_is_reported_and_skipped(register_plugin):
    manager = register_plugin(ClashingPlugin(), name="clash")
    assert manager.registry.owner("fusion", "late") == "mmdomain.builtins.fusions"
    info = {i.name: i for i in manager.plugins()}["clash"]
    assert info.status == "failed" and "mmdomain.builtins.fusions" in info.error


def test_invalid_spec_discards_everything_the_plugin_registered(register_plugin):
    manager = register_plugin(InvalidPlugin(), name="invalid")
    assert "ok_one" not in manager.registry.names("modality")
    assert "hologram" in {i.name: i for i in manager.plugins()}["invalid"].error


def test_strict_mode_makes_failures_fatal(monkeypatch, mm_bare_manager):
    monkeypatch.setenv("MMDOMAIN_STRICT_PLUGINS", "1")
    mm_bare_manager.register(ClashingPlugin(), name="clash")
    with pytest.raises(PluginLoadError, match="clash"):
        mm_bare_manager.registry


def test_unknown_name_lists_available(mm_bare_manager):
    with pytest.raises(UnknownComponentError, match="available: concat, cross_attention, gated, late"):
        mm_bare_manager.registry.fusion("early")


def test_misspelled_hook_is_caught(mm_bare_manager):
    class Typo:
        @hookimpl
        def register_modalitys(self, register):
            pass

    mm_bare_manager.pm.register(Typo(), name="typo")
    with pytest.raises(PluginLoadError, match="register_modalitys"):
        mm_bare_manager.check_pending()


def test_spec_validation():
    with pytest.raises(InvalidSpecError):
        ModalitySpec("x", "image", channels=0).validate()
    with pytest.raises(InvalidSpecError):
        ModalitySpec("bad name!", "text").validate()


def test_detect_modality_fallback_uses_extensions(register_plugin, tmp_path, monkeypatch):
    manager = register_plugin(GoodPlugin(), name="good")
    monkeypatch.setattr("mmdomain.plugins._default", manager)
    f = tmp_path / "x.thm"
    f.write_bytes(b"")
    assert manager.hook.detect_modality(path=f) == "thermal"
    assert manager.hook.detect_modality(path=tmp_path / "x.unknown") is None


def _write_dist(root, name, module_source, ep_name):
    (root / f"{name}.py").write_text(textwrap.dedent(module_source))
    dist = root / f"{name}-0.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.3\n")
    (dist / "entry_points.txt").write_text(f"[mmdomain]\n{ep_name} = {name}\n")


def _cli(args, tmp_path, **env):
    full = {**os.environ, "PYTHONPATH": str(tmp_path), **env}
    return subprocess.run([sys.executable, "-m", "mmdomain.cli", *args], capture_output=True, text=True, env=full,
                          timeout=120)


@pytest.fixture
def broken_dist(tmp_path):
    """A real installed distribution (dist-info + entry point) whose module fails to import."""
    _write_dist(tmp_path, "mmdomain_broken", "raise ImportError('needs libfoo >= 9')\n", "broken")
    return tmp_path


def test_broken_installed_plugin_is_reported_and_skipped(broken_dist):
    proc = _cli(["plugins", "list", "--json"], broken_dist)
    assert proc.returncode == 0, proc.stderr
    infos = {i["name"]: i for i in json.loads(proc.stdout)}
    assert infos["broken"]["status"] == "failed"
    assert infos["broken"]["distribution"] == "mmdomain_broken" and infos["broken"]["version"] == "0.3"
    assert "needs libfoo >= 9" in infos["broken"]["error"]
    assert infos["example"]["status"] == "ok"  # the others keep working
    assert "toy" in infos["example"]["registered"]["dataset"]
    table = _cli(["plugins", "list"], broken_dist)
    assert "broken" in table.stdout and "failed" in table.stdout and "example" in table.stdout


def test_broken_plugin_is_fatal_in_strict_mode(broken_dist):
    proc = _cli(["plugins", "list"], broken_dist, MMDOMAIN_STRICT_PLUGINS="1")
    assert proc.returncode == 2
    assert "broken" in proc.stderr and "needs libfoo" in proc.stderr and "Traceback" not in proc.stderr


def test_env_blocks_and_restricts_plugins(broken_dist):
    blocked = json.loads(_cli(["plugins", "list", "--json"], broken_dist, MMDOMAIN_BLOCK_PLUGINS="broken").stdout)
    assert {i["name"]: i["status"] for i in blocked}["broken"] == "blocked"
    only = json.loads(_cli(["plugins", "list", "--json"], broken_dist, MMDOMAIN_PLUGINS="example").stdout)
    statuses = {i["name"]: i["status"] for i in only}
    assert statuses["example"] == "ok" and statuses["broken"] == "blocked"


class _Metaset:
    def __init__(self, sites):
        self.sites = sites

    def __len__(self):
        return len(self.sites)

    def sample_meta(self, i):
        return {"site": self.sites[i]}


def test_partition_fallbacks(mm_bare_manager):
    from mmdomain import DataError

    hook = mm_bare_manager.hook.partition
    ds = _Metaset(["b", "a", "c", "a", "b", "c", "a"])
    shares = [hook(dataset=ds, num_sites=3, site=s, scheme="iid") for s in range(3)]
    assert sorted(i for share in shares for i in share) == list(range(7))  # disjoint, complete
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert hook(dataset=ds, num_sites=3, site=0, scheme="iid") == shares[0]  # deterministic
    by_site = [hook(dataset=ds, num_sites=3, site=s, scheme="by-meta:site") for s in range(3)]
    assert by_site == [[1, 3, 6], [0, 4], [2, 5]]
    assert hook(dataset=ds, num_sites=3, site=0, scheme="by-region") is None  # unknown: nobody answers
    with pytest.raises(DataError, match="3 distinct 'site' values"):
        hook(dataset=ds, num_sites=2, site=0, scheme="by-meta:site")
