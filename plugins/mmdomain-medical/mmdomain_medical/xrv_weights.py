"""torchxrayvision's DenseNet-121 weights, read safely from its cache folder: the folder and file
names torchxrayvision uses (``~/.torchxrayvision/models_data/``), and ``read_torch_model_file`` for
its files, which are pickled whole models: every class the pickle names is an inert placeholder
(``weights_only=True`` for the zip format; for the legacy format, which ``weights_only`` cannot read,
an unpickler that resolves nothing but torch's tensor rebuilding), so no code from the file (or from
torchxrayvision) runs and only the tensors are kept. ``convert_xrv_weights`` writes them once as a
plain state dict the core's ``weights=`` reads.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from mmdomain import ConfigError
from mmdomain.models.weights import sha256_of
from safetensors.torch import save_file
from torch import Tensor

# -- torchxrayvision --------------------------------------------------------------------------------
XRV_CACHE = "~/.torchxrayvision/models_data"  # torchxrayvision.utils.get_cache_dir()
XRV_URL = "https://github.com/mlmed/torchxrayvision/releases/download/v1/"
_XRV_SUFFIX = "densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
# torchxrayvision.models.model_urls: weights name -> file name (its DenseNet-121 weights, 224x224)
XRV_DENSENET_FILES = {
    "densenet121-res224-all": f"nih-pc-chex-mimic_ch-google-openi-kaggle-{_XRV_SUFFIX}",
    "densenet121-res224-nih": f"nih-{_XRV_SUFFIX}",
    "densenet121-res224-pc": f"pc-{_XRV_SUFFIX}",
    "densenet121-res224-chex": f"chex-{_XRV_SUFFIX}",
    "densenet121-res224-rsna": f"kaggle-{_XRV_SUFFIX}",
    "densenet121-res224-mimic_nb": f"mimic_nb-{_XRV_SUFFIX}",
    "densenet121-res224-mimic_ch": f"mimic_ch-{_XRV_SUFFIX}",
}
XRV_NUM_CLASSES = 18  # the classifier the files carry (dropped here: a projection replaces it)


def xrv_weights_file(name: str, cache_dir: str | None = None) -> Path:
    """Where torchxrayvision keeps the weights called ``name`` (``densenet121-res224-all``, or
    its short form ``all``); a clear ``ConfigError`` when the file is not there."""
    full = name if name in XRV_DENSENET_FILES else f"densenet121-res224-{name}"
    if full not in XRV_DENSENET_FILES:
        raise ConfigError(f"xrv_densenet121: unknown weights_name {name!r}; torchxrayvision's DenseNet-121 "
                          f"weights are {sorted(XRV_DENSENET_FILES)}")
    folder = Path(cache_dir or XRV_CACHE).expanduser()
    path = folder / XRV_DENSENET_FILES[full]
    if not path.is_file():
        raise ConfigError(
            f"xrv_densenet121: torchxrayvision weights {full!r} not found: expected at {path} (weights are read "
            f"from local files only, nothing is downloaded). To get the file there: on a machine with network "
            f"access, `wget {XRV_URL}{path.name}` (or run `python -c \"import torchxrayvision as xrv; "
            f"xrv.models.DenseNet(weights='{full}')\"`, which saves it under ~/.torchxrayvision/models_data/), then "
            f"copy it to {path} here (or give cache_dir= its folder, or path= the file)")
    return path


class _Inert:
    """Stands in for every class or function a pickled model names: takes the pickled attributes
    as plain data and does nothing else, so unpickling runs no code from the file."""

    dump_patches = False  # torch.load asks pickled modules' classes this (legacy source check)

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Inert":
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update({k: v for k, v in state.items() if isinstance(k, str)})


class _InertOnlyUnpickler(pickle.Unpickler):
    """Resolves torch's tensor-rebuild functions and plain containers (what ``weights_only`` allows),
    and every other name a pickle asks for to ``_Inert``: nothing from the file is imported or run."""

    SAFE = {"collections.OrderedDict": OrderedDict, "builtins.set": set, "builtins.frozenset": frozenset,
            "torch._utils._rebuild_tensor": torch._utils._rebuild_tensor,
            "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
            "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
            "torch._utils._rebuild_parameter_with_state": torch._utils._rebuild_parameter_with_state,
            "torch.Size": torch.Size}

    def find_class(self, module: str, name: str) -> Any:
        return self.SAFE.get(f"{module}.{name}", _Inert)


class _InertOnlyPickle:
    """The ``pickle_module`` torch.load is given for a legacy (pre-1.6, non-zip) file: torch's
    ``weights_only`` unpickler cannot read that format's records of pickled modules, so torch
    unpickles it with ``_InertOnlyUnpickler`` instead (storages still through torch's own reader)."""

    Unpickler = _InertOnlyUnpickler

    @staticmethod
    def load(f: Any, **kwargs: Any) -> Any:
        return _InertOnlyUnpickler(f, **kwargs).load()


def _module_tensors(node: Any, prefix: str = "", depth: int = 0) -> dict[str, Tensor]:
    """A pickled ``nn.Module`` tree (as inert placeholders) -> its state dict: parameters and
    persistent buffers of every submodule, as ``nn.Module.state_dict`` names them."""
    d = getattr(node, "__dict__", None)
    if not isinstance(d, dict) or depth > 64:
        return {}
    out: dict[str, Tensor] = {}
    skip = d.get("_non_persistent_buffers_set")
    skip = skip if isinstance(skip, (set, frozenset)) else set()
    for group in ("_parameters", "_buffers"):
        for name, t in (d.get(group) or {}).items() if isinstance(d.get(group), dict) else ():
            if isinstance(t, Tensor) and not (group == "_buffers" and name in skip):
                out[prefix + name] = t.detach()
    modules = d.get("_modules")
    for name, child in (modules.items() if isinstance(modules, dict) else ()):
        if child is not None:
            out.update(_module_tensors(child, f"{prefix}{name}.", depth + 1))
    return out


_ADVICE = ("Weights only load failed", "In PyTorch 2.6", "Re-running", "Check the documentation", "Please file",
           "(1)", "(2)", "You can use", "Alternatively")


def _reason(exc: BaseException) -> str:
    """torch's reason for refusing a file, without its advice to load it unsafely."""
    for line in str(exc).splitlines():
        line = line.strip().removeprefix("WeightsUnpickler error:").strip()
        if line and not line.startswith(_ADVICE):
            return line[:300]
    return type(exc).__name__


def read_torch_model_file(path: str | Path, what: str) -> dict[str, Tensor]:
    """The tensors of a torch file holding a state dict or a whole pickled model (torchxrayvision's
    ``.pt`` files are the latter), no code of the file run and no library imported.

    A state dict is read with ``weights_only=True``. A pickled model in the zip format too, with
    every class it names (listed statically by torch) allowed as an inert placeholder
    (``_Inert``). The legacy (pre-1.6) format, which ``weights_only`` cannot read, goes through
    ``_InertOnlyUnpickler``: it resolves torch's tensor-rebuild functions and plain containers,
    every other name to ``_Inert``. The placeholders' ``_parameters`` / ``_buffers`` /
    ``_modules`` then give the state dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what}: weights file {path} not found (weights are read from local files only)")

    def load(**how: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "source code of class ... has changed"
            return torch.load(path, map_location="cpu", **how)

    try:
        try:
            obj = load(weights_only=True)  # a state dict, or anything torch reads safely by itself
        except pickle.UnpicklingError:  # a pickled model: its classes are read as inert placeholders
            if zipfile.is_zipfile(path):
                names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
                with torch.serialization.safe_globals([(_Inert, n) for n in sorted(names)]):
                    obj = load(weights_only=True)
            else:  # legacy format: weights_only cannot read it; our unpickler resolves no class at all
                obj = load(weights_only=False, pickle_module=_InertOnlyPickle)
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError, AttributeError, TypeError,
            KeyError, IndexError) as exc:
        raise ConfigError(f"{what}: {path} is not a readable torch weights file ({_reason(exc)}); "
                          "nothing in it was run") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), (dict, _Inert)):
            obj = obj[key]
    if isinstance(obj, _Inert):
        state = _module_tensors(obj)
    elif isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        state = dict(obj)
    else:
        state = {}
    if not state:
        raise ConfigError(f"{what}: {path} holds neither a state dict nor a pickled model with tensors")
    return {k.removeprefix("module.").removeprefix("_module."): v for k, v in state.items()}



def convert_xrv_weights(src: str | Path, dst: str | Path) -> str:
    """Write torchxrayvision's weight file ``src`` (a pickled model) as a plain safetensors state
    dict ``dst`` (torchxrayvision's key names, which ``xrv_densenet121`` reads through the core's
    ``weights = "dst"``, digest recorded in the model config). Returns ``dst``'s SHA-256."""
    state = read_torch_model_file(src, "convert_xrv_weights")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(dst))
    return sha256_of(dst)


__all__ = ["XRV_CACHE", "XRV_DENSENET_FILES", "convert_xrv_weights", "read_torch_model_file", "xrv_weights_file"]
