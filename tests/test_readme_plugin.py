"""The README's "Write your own plugin" example is this test's code, and it passes the contract."""

import re
import types
from pathlib import Path

import pytest

from mmdomain.testing import run_contract

README = Path(__file__).resolve().parents[1] / "README.md"


def _example_source() -> str:
    section = README.read_text().split("## Write your own plugin", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def readme_plugin(tmp_path):
    module = types.ModuleType("my_thermal_plugin")
    exec(compile(_example_source(), str(README), "exec"), module.__dict__)
    return module


def test_readme_plugin_passes_the_contract(register_plugin, readme_plugin, tmp_path):
    manager = register_plugin(readme_plugin, name="thermal")
    results = run_contract(manager, "thermal", tmp_path)
    failed = [f"{r.check}: {r.detail}" for r in results if not r.ok]
    assert not failed, failed
    assert manager.registry.owner("dataset", "thermal_logs") == "thermal"
    assert len(results) == 5
