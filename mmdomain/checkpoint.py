"""Checkpoints: one ``.safetensors`` file whose header carries the JSON config, so a model
is rebuilt from the file alone; a readable ``<name>.json`` sidecar is written beside it.

The header also records which plugin registered each component, so loading with a
plugin missing says which distribution to install. A file that is damaged or hostile (not
safetensors, a header that is not JSON, sizes of 10**9, tensors that do not fit the model) is a
``CheckpointError`` naming it, found before the model or its tensors are allocated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from . import limits
from .config import ModelConfig, parse
from .errors import CheckpointError, ConfigError, MMDomainError, UnknownComponentError
from .fusion.base import upgrade_token_names
from .models.compose import FusionModel
from .registry import Registry

FORMAT = "mmdomain-checkpoint/1"


def _components(config: ModelConfig) -> list[tuple[str, str]]:
    comps = [("modality", m) for m in config.modalities]
    comps += [("encoder", c.name) for c in config.encoders.values()]
    comps += [("tokenizer", c.name) for c in config.tokenizers.values()]
    comps += [("fusion", config.fusion.name), ("task", config.task.name)]
    return comps


def save_checkpoint(model: FusionModel, path: str | Path, registry: Registry, extra: dict[str, Any] | None = None) -> Path:
    """Write atomically (temp file + rename): a crash never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    owners = {f"{k}:{n}": registry.owner(k, n) for k, n in _components(model.config)}
    meta = {
        "format": FORMAT,
        "model": model.config.model_dump_json(),
        "owners": json.dumps(owners),
        "extra": json.dumps(extra or {}),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)
    sidecar = {"format": FORMAT, "model": model.config.model_dump(mode="json"), "owners": owners, "extra": extra or {}}
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2))
    return path


_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
           "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn",
           "F8_E5M2": "float8_e5m2", "U16": "uint16", "U32": "uint32", "U64": "uint64"}


def _json_entry(meta: dict[str, str], key: str, path: Path, default: str | None = None) -> dict[str, Any]:
    text = meta.get(key, default)
    if text is None:
        raise CheckpointError(f"{path}: its header has no {key!r} entry (not saved by mmdomain, or edited)")
    try:
        value = json.loads(text)
        if isinstance(value, dict):
            limits.extent(value, limits.data_children, max_nodes=limits.CHECKPOINT_CONFIG_NODES)
    except limits.LimitError as exc:
        raise CheckpointError(f"{path}: the header's {key!r} entry {exc}") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{path}: the header's {key!r} entry is not JSON ({str(exc)[:200]})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: the header's {key!r} entry must be a JSON object, not {type(value).__name__}")
    return value


def _open(path: str | Path) -> tuple[dict[str, Any], dict[str, tuple[str, tuple[int, ...]]]]:
    """The header (``model``, ``owners``, ``extra``) and each tensor's ``(dtype, shape)``, read
    without loading any tensor data; every way the file can be wrong is a ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with path.open("rb") as f:
        head = f.read(8)
    if len(head) == 8 and int.from_bytes(head, "little") > limits.CHECKPOINT_HEADER_BYTES:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint (its header claims "
                              f"{int.from_bytes(head, 'little'):,} bytes)")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {}
            for key in f.keys():
                sl = f.get_slice(key)
                tensors[key] = (_DTYPES.get(sl.get_dtype(), sl.get_dtype()), tuple(sl.get_shape()))
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, whatever a broken file makes it raise
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({str(exc)[:300]})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mmdomain checkpoint (format {str(meta.get('format'))[:80]!r})")
    header = {"model": _json_entry(meta, "model", path), "owners": _json_entry(meta, "owners", path, "{}"),
              "extra": _json_entry(meta, "extra", path, "{}")}
    return header, tensors


def read_header(path: str | Path) -> dict[str, Any]:
    """The checkpoint's ``model`` config, ``owners`` and ``extra`` (each a dict), read without its tensors."""
    return _open(path)[0]


def _dtype_name(t: Any) -> str:
    return str(t.dtype).removeprefix("torch.")


def _mismatch(path: Path, own: dict[str, Any], stored: dict[str, tuple[str, tuple[int, ...]]]) -> str | None:
    """What keeps the file's tensors from loading into ``own`` (a state dict) as they are, judged
    from the header alone; None when every tensor has its counterpart with the same dtype and shape.
    Tensors stored under a name that ``_load_from_state_dict`` renames (a missing-modality token
    saved as ``fusion.missing.<m>``) are matched under their new name."""
    renamed = upgrade_token_names({k: k for k in stored if k not in own})
    names = {new: old for new, old in renamed.items() if new in own}
    names.update({k: k for k in stored if k in own})
    matched = set(names.values())
    missing = [k for k in own if k not in names]
    unexpected = [k for k in stored if k not in matched]
    wrong = []
    for key, old in names.items():
        dtype, shape = stored[old]
        if shape != tuple(own[key].shape) or dtype != _dtype_name(own[key]):
            ours = f"{_dtype_name(own[key])}{list(own[key].shape)}"
            wrong.append(f"{old}: {dtype}{list(shape)} where the model has {ours}")
    if not (missing or unexpected or wrong):
        return None
    parts = [f"{len(wrong)} of another dtype or shape ({'; '.join(wrong[:3])})" if wrong else "",
             f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else ""]
    return f"{path}: weights do not fit the model its header describes: " + ", ".join(p for p in parts if p)


def _check_finite(path: Path, state: dict[str, Any]) -> None:
    import torch

    bad = [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} tensor(s) hold NaN or infinite values ({bad[:3]}); "
                              f"the file is corrupted or the run diverged")


def _tensors(path: Path, keys: list[str] | None = None) -> dict[str, Any]:
    try:
        if keys is None:
            state = load_file(str(path))
        else:
            with safe_open(str(path), "pt") as f:
                state = {k: f.get_tensor(k) for k in keys}
    except Exception as exc:  # noqa: BLE001 - the header read fine; the data did not
        raise CheckpointError(f"{path}: its tensors cannot be read ({str(exc)[:300]})") from None
    _check_finite(path, state)
    return state


def load_checkpoint(path: str | Path, registry: Registry) -> tuple[FusionModel, dict[str, Any]]:
    """Rebuild the model from the file alone; returns ``(model, extra)``.

    Every malformed file is a ``CheckpointError`` naming it: unreadable or not safetensors, a header
    that is not JSON or lacks its keys, a model config that does not parse or build (sizes beyond
    ``mmdomain.limits`` are refused before anything is allocated), a component no installed plugin
    provides, tensors of another dtype or shape than the model the config builds (found from the
    header, before any tensor data is read), NaN or infinite weights."""
    path = Path(path)
    header, stored = _open(path)
    try:
        config = parse(ModelConfig, header["model"], f"{path} (model config)")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    try:
        model = FusionModel(config, registry, load_weights=False)  # the state dict below holds them
    except UnknownComponentError as exc:
        owner = str(header["owners"].get(f"{exc.kind}:{exc.name}", "?"))[:100]
        raise CheckpointError(f"{path} needs {exc.kind} {exc.name!r} from plugin {owner!r}, which is not "
                              f"installed or failed to load (`mmdomain plugins list`)") from None
    except MMDomainError as exc:
        raise CheckpointError(f"{path}: the model config in its header does not build: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a builder's own check (ValueError, RuntimeError, ...)
        first = (str(exc).splitlines() or [""])[0][:300]
        raise CheckpointError(f"{path}: the model config in its header does not build "
                              f"({type(exc).__name__}: {first})") from exc
    problem = _mismatch(path, model.state_dict(), stored)
    if problem:
        raise CheckpointError(problem)
    state = _tensors(path)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the model ({str(exc)[:300]})") from None
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    model.eval()
    return model, header["extra"]


def init_from_checkpoint(model: FusionModel, path: str | Path) -> dict[str, Any]:
    """Load every tensor of checkpoint ``path`` that fits ``model`` (same name, shape and dtype); the
    rest of the model keeps its initialisation. Returns a report per module (``encoders.<m>``,
    ``fusion``, ``task``): how many tensors were loaded, and why the others were not (a tensor of
    another dtype counts as ``other_shape``).

    A model with low-rank adapters takes the checkpoint's base weights (``x.weight`` into
    ``x.base_layer.weight``). Typical use: fine-tune from a self-supervised (contrastive) run,
    whose encoders fit and whose task head does not. Only the tensors that fit are read.
    """
    path = Path(path)
    _, stored = _open(path)  # a clear error for anything that is not a readable mmdomain checkpoint
    own = model.state_dict()
    take: dict[str, str] = {}
    report: dict[str, dict[str, Any]] = {}
    for key, tensor in own.items():
        source = key if key in stored else key.replace(".base_layer.", ".")
        entry = report.setdefault(_module_of(key), {"loaded": 0, "not_in_checkpoint": 0, "other_shape": 0})
        if source not in stored:
            entry["not_in_checkpoint"] += 1
        elif stored[source] != (_dtype_name(tensor), tuple(tensor.shape)):
            entry["other_shape"] += 1
        else:
            take[key] = source
            entry["loaded"] += 1
    used = set(take.values())
    for key in stored:
        if key not in used:
            report.setdefault(_module_of(key), {"loaded": 0, "not_in_checkpoint": 0, "other_shape": 0})
            report[_module_of(key)]["unused_in_checkpoint"] = report[_module_of(key)].get("unused_in_checkpoint", 0) + 1
    if not take:
        raise CheckpointError(f"{path}: no tensor of this checkpoint fits the model (another architecture?)")
    state = _tensors(path, sorted(used))
    model.load_state_dict({key: state[source] for key, source in take.items()}, strict=False)
    return {"checkpoint": str(path), "modules": report}


def _module_of(key: str) -> str:
    parts = key.split(".")
    return ".".join(parts[:2]) if parts[0] == "encoders" else parts[0]


def describe_init(report: dict[str, Any]) -> str:
    """One line per module: ``encoders.s2: 12/12 loaded`` or ``task: 0/2 loaded (2 of another shape)``."""
    lines = []
    for module, e in sorted(report["modules"].items()):
        total = e["loaded"] + e["not_in_checkpoint"] + e["other_shape"]
        why = [f"{e[k]} {k.replace('_', ' ')}" for k in ("not_in_checkpoint", "other_shape", "unused_in_checkpoint")
               if e.get(k)]
        lines.append(f"{module}: {e['loaded']}/{total} loaded" + (f" ({', '.join(why)})" if why else ""))
    return "\n".join(lines)
