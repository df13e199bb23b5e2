"""Every notebook in notebooks/ runs top to bottom and draws its plots (outputs are not committed)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_notebooks_exist():
    names = [p.name for p in NOTEBOOKS]
    for expected in ("01_medical_data", "02_remote_sensing_data", "03_fusion", "04_federated"):
        assert any(n.startswith(expected) for n in names), f"{expected}.ipynb is missing"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    monkeypatch.chdir(tmp_path)  # anything a notebook writes lands in a temp folder
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert images, f"{path.name} drew no plot"


def _public_api() -> dict[str, set[str] | None]:
    """README's "Python API" table: module -> the names it lists (None: the module's documented
    names, for the plugins' modules)."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Python API", 1)[1].split("\n#", 1)[0]
    api: dict[str, set[str] | None] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        modules_cell, names_cell = line.strip("|").split("|", 1)
        names = set(re.findall(r"`(\w+)`", names_cell)) or None
        for module in re.findall(r"`([\w.]+)`", modules_cell):
            api[module] = names
    return api


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) for every import of the notebook's code cells (name None for ``import m``)."""
    import ast

    found = []
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith("%"))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                found += [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                found += [(node.module, a.name) for a in node.names]
    return found


def test_the_public_api_table_names_what_exists():
    import importlib

    api = _public_api()
    assert {"mmdomain", "mmdomain_federated.analysis", "mmdomain_medical.dataset"} <= set(api)
    for module, names in api.items():
        imported = importlib.import_module(module)
        missing = sorted(n for n in names or () if not hasattr(imported, n))
        assert not missing, f"README's Python API lists {module}.{', '.join(missing)}, which does not exist"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_import_only_the_public_api(path):
    api = _public_api()
    for module, name in _imports(path):
        if not module.split(".")[0].startswith("mmdomain"):
            continue  # the standard library, pandas, matplotlib, torch...
        if name is not None and f"{module}.{name}" in api:  # `from mmdomain_federated import analysis`
            continue
        assert module in api, f"{path.name} imports {module}, which is not in README's Python API"
        assert name is None or api[module] is None or name in api[module], (
            f"{path.name} imports {module}.{name}, which README's Python API does not list")
