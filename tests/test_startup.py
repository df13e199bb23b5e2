"""Starting the command line (``--help``, ``plugins list``) imports no heavy library.

Many tests spawn ``mmdomain``; each start paid for torchmetrics (-> torchvision -> torch._dynamo),
rasterio and pydicom until registration stopped importing them. This is a structural check (which
modules were imported), not a timing one: torch itself stays (the spec classes' modules need it).
"""

import inspect
import json
import os
import pickle
import subprocess
import sys

from mmdomain.registry import LazyCallable, lazy

# Imported where they are used (a task's metrics, an encoder's construction, a dataset read, a command run).
HEAVY = ("torchmetrics", "torchvision", "monai", "transformers", "torchgeo", "rasterio", "opacus", "flwr",
         "pydicom", "timm", "pandas", "pyarrow", "mlflow")

_PROBE = f"""
import json, sys
import mmdomain.cli
from mmdomain import get_plugin_manager, get_registry
get_registry()
mmdomain.cli._add_plugin_commands()  # what `mmdomain ...` does before parsing its arguments
heavy = {set(HEAVY)!r}
print(json.dumps({{
    "heavy": sorted({{m.split(".")[0] for m in sys.modules}} & heavy),
    "plugins": {{i.name: i.status for i in get_plugin_manager().plugins()}},
    "commands": sorted(mmdomain.cli.cli.commands),
}}))
"""


def test_cli_start_and_registration_import_no_heavy_library():
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MMDOMAIN_STRICT_PLUGINS": "1"})
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.splitlines()[-1])
    # every installed plugin registered (a plugin that failed to load would import nothing, trivially)
    assert {"medical", "remote_sensing", "federated", "example"} <= set(found["plugins"])
    assert set(found["plugins"].values()) == {"ok"}, found["plugins"]
    assert {"medical", "rs", "fed", "demo", "local-demo", "train"} <= set(found["commands"])
    assert found["heavy"] == [], f"imported at start-up: {found['heavy']}"


def test_lazy_callable_imports_on_call_and_keeps_the_signature():
    import json as target_module

    build = lazy("json:dumps")
    assert isinstance(build, LazyCallable) and callable(build)
    assert inspect.signature(build) == inspect.signature(target_module.dumps)
    assert build({"a": 1}, sort_keys=True) == '{"a": 1}'
    assert pickle.loads(pickle.dumps(build)) == build
    nested = lazy("collections:OrderedDict.fromkeys")
    assert list(nested("ab")) == ["a", "b"]
    assert "task" in inspect.signature(lazy("mmdomain_remote_sensing.dataset:SceneFolderDataset")).parameters
