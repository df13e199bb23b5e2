"""The README's hooks reference matches the hook specs; every hook has a test."""

import ast
import re
from pathlib import Path

from mmdomain.plugins import PluginManager

ROOT = Path(__file__).resolve().parents[1]
TEST_DIRS = [ROOT / "tests", *sorted(ROOT.glob("plugins/*/tests")), ROOT / "federated" / "tests"]


def _hooks() -> dict[str, tuple[str, ...]]:
    """Every hook and its argument names, as pluggy sees them."""
    pm = PluginManager(load_entry_points=False, builtins=False).pm
    return {name: tuple(caller.spec.argnames) for name, caller in vars(pm.hook).items()
            if getattr(caller, "spec", None) is not None}


def _reference_section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("## Plugin hooks reference", 1)[1].split("\n## ", 1)[0]


def test_every_hook_is_in_the_readme_with_its_full_signature():
    hooks = _hooks()
    assert len(hooks) >= 10
    documented = {m.group(1): tuple(a.strip() for a in m.group(2).split(",") if a.strip())
                  for m in re.finditer(r"^\| `(\w+)\(([^)]*)\)`", _reference_section(), re.M)}
    missing = sorted(set(hooks) - set(documented))
    assert not missing, f"hooks missing from README's hooks reference: {missing}"
    wrong = {h: (documented[h], args) for h, args in hooks.items() if documented[h] != args}
    assert not wrong, f"README signature (documented, actual) differs: {wrong}"
    unknown = sorted(set(documented) - set(hooks))
    assert not unknown, f"README documents hooks that do not exist: {unknown}"


def _test_sources() -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text()) for d in TEST_DIRS for p in sorted(d.glob("test_*.py"))}


def _exercised(tree: ast.Module) -> set[str]:
    """Hook names a test module implements (a method or function of that name) or calls
    (``x.partition(...)``, ``registry.detect_modality(...)``)."""
    names = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    calls = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    return names | calls


def test_every_hook_has_a_test():
    covered: dict[str, list[str]] = {}
    for path, tree in _test_sources().items():
        if path.name == Path(__file__).name:
            continue
        for name in _exercised(tree):
            covered.setdefault(name, []).append(path.name)
    untested = sorted(h for h in _hooks() if h not in covered)
    assert not untested, f"hooks that no test implements or calls: {untested}"


def test_no_test_module_imports_a_conftest():
    """Each test folder has its own conftest.py and pytest imports them all under the one name
    ``conftest``: importing from it names whichever came first when the whole suite is collected
    (it passes when one folder runs alone and fails in CI). Shared values are fixtures instead."""
    offenders = [str(p.relative_to(ROOT)) for p in ROOT.glob("**/test_*.py")
                 if ".git" not in p.parts and re.search(r"^\s*(from|import) conftest\b", p.read_text(), re.M)]
    assert offenders == []
