"""mmdomain.plugins: built-ins through hooks, failing plugins isolated, entry points, environment, commands."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from mmdomain import DatasetSpec, FusionSpec, ModalitySpec, PluginLoadError, SyntheticSpec, TaskSpec, TokenizerSpec, hookimpl
from mmdomain.fusion import LateFusion


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
    assert reg.names("fusion") == ["concat", "cross_attention", "gated", "hemis", "late", "token_attention"]
    assert {"multiclass", "multilabel", "segmentation", "contrastive"} <= set(reg.names("task"))
    assert reg.owner("fusion", "late") == "mmdomain.builtins.fusions"


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


def test_misspelled_hook_is_caught(mm_bare_manager):
    class Typo:
        @hookimpl
        def register_modalitys(self, register):
            pass

    mm_bare_manager.pm.register(Typo(), name="typo")
    with pytest.raises(PluginLoadError, match="register_modalitys"):
        mm_bare_manager.check_pending()


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


def _command(name):
    import click

    @click.command(name)
    def cmd():
        click.echo(f"this is {name}")
    return cmd


class CommandsOnly:
    @hookimpl
    def register_commands(self, cli):
        cli.add_command(_command("hello"))

        @cli.group("tools")  # the decorator forms go through the same check
        def tools():
            """Some tools."""


class TakesLocalDemo:
    @hookimpl
    def register_commands(self, cli):
        cli.add_command(_command("fresh"))
        cli.add_command(_command("local-demo"))  # the core's


def test_a_plugin_that_only_adds_commands_passes_the_contract(register_plugin):
    from mmdomain.testing import run_contract

    manager = register_plugin(CommandsOnly(), name="cmds")
    results = {r.check: r for r in run_contract(manager, "cmds")}
    assert results["loaded"].ok, results["loaded"].detail
    assert "2 command" in results["loaded"].detail
    assert {i.name: i for i in manager.plugins()}["cmds"].commands == ["hello", "tools"]


def test_a_command_name_taken_fails_the_second_plugin_not_the_cli(register_plugin):
    import click

    manager = register_plugin(TakesLocalDemo(), name="taker")
    group = click.Group("probe")
    manager.add_commands(group)
    assert group.commands["local-demo"].help.startswith("Train fusion vs single-modality")  # still the core's
    assert "fresh" not in group.commands  # nothing of the failing plugin is added
    info = {i.name: i for i in manager.plugins()}["taker"]
    assert info.status == "failed" and "'local-demo' is already added by plugin 'mmdomain.builtins.commands'" in info.error


def test_command_clash_is_fatal_in_strict_mode(register_plugin, monkeypatch):
    import click

    manager = register_plugin(TakesLocalDemo(), name="taker")
    monkeypatch.setenv("MMDOMAIN_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match="local-demo"):
        manager.add_commands(click.Group("probe"))


def test_installed_commands_are_listed_per_plugin(tmp_path):
    proc = _cli(["plugins", "list", "--json"], tmp_path)
    infos = {i["name"]: i for i in json.loads(proc.stdout)}
    assert infos["mmdomain.builtins.commands"]["registered"]["command"] == ["local-demo"]
    if "federated" in infos:
        assert infos["federated"]["registered"]["command"] == ["demo", "fed"]


def test_adding_the_commands_to_the_same_group_twice_keeps_every_plugin(mm_manager):
    """Test modules that each import the CLI call mmdomain.cli._add_plugin_commands(); the second call
    once failed every installed plugin with commands ('already added') and dropped its datasets."""
    import click

    group = click.Group("cli")
    before = {i.name: i.status for i in mm_manager.plugins()}
    datasets = set(mm_manager.registry._entries["dataset"])
    mm_manager.add_commands(group)
    commands = dict(group.commands)
    mm_manager.add_commands(group)
    assert {i.name: i.status for i in mm_manager.plugins()} == before
    assert dict(group.commands) == commands and "local-demo" in commands
    mm_manager._registry = None  # collected again from the plugins still registered
    assert set(mm_manager.registry._entries["dataset"]) == datasets
    other = click.Group("other")
    mm_manager.add_commands(other)  # another group gets them all
    assert set(other.commands) == set(commands)


class EveryKind:
    """A third-party plugin contributing through each remaining ``register_*`` hook."""

    @hookimpl
    def register_tokenizers(self, register):
        from mmdomain.tokenizers import HashingTokenizer

        register(TokenizerSpec("small_hash", lambda **o: HashingTokenizer(buckets=64, **o)))

    @hookimpl
    def register_tasks(self, register):
        from mmdomain.tasks import MulticlassTask

        register(TaskSpec("three_way", "classification", lambda d, dims, **o: MulticlassTask(d, dims, num_classes=3)))

    @hookimpl
    def register_datasets(self, register):
        register(DatasetSpec("lines", ("line",), _LinesDataset))

    @hookimpl
    def register_synthetic(self, register):
        register(SyntheticSpec("lines", "lines", _write_lines))


class _LinesDataset:
    def __init__(self, root, split="train"):
        self.lines = (root / "lines.txt").read_text().splitlines()

    def __len__(self):
        return len(self.lines)

    def __getitem__(self, i):
        from mmdomain import Sample

        return Sample({"line": self.lines[i]})


def _write_lines(root, *, num_sites=1, seed=0):
    sites = []
    for s in range(num_sites):
        site = root / f"site-{s}"
        site.mkdir(parents=True)
        (site / "lines.txt").write_text("\n".join(f"line {seed} {s} {i}" for i in range(5)))
        sites.append(site)
    return sites


def test_every_register_hook_reaches_the_registry(register_plugin, tmp_path):
    import torch

    registry = register_plugin(EveryKind(), name="every").registry
    assert registry.owner("tokenizer", "small_hash") == registry.owner("task", "three_way") == "every"
    ids = registry.tokenizer("small_hash").build()(["a b c"], 8)
    assert ids.shape == (1, 3) and 0 < int(ids.min()) and int(ids.max()) < 65  # 3 words, 64 buckets (0 pads)
    task = registry.task("three_way").build(4, {})
    assert task(torch.randn(2, 4), {}, {}).shape == (2, 3)
    site = registry.synthetic_for("lines").generate(tmp_path, num_sites=2, seed=7)[1]
    ds = registry.dataset("lines").build(site, split="train")
    assert len(ds) == 5 and ds[2].inputs == {"line": "line 7 1 2"}
