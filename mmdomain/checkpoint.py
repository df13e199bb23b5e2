"""Checkpoints: one ``.safetensors`` file whose header carries the JSON config, so a model
is rebuilt from the file alone; a readable ``<name>.json`` sidecar is written beside it.

The header also records which plugin registered each component, so loading with a
plugin missing says which distribution to install.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .config import ModelConfig, parse
from .errors import CheckpointError, UnknownComponentError
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


def read_header(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({exc})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mmdomain checkpoint (format {meta.get('format')!r})")
    return {
        "model": json.loads(meta["model"]),
        "owners": json.loads(meta.get("owners", "{}")),
        "extra": json.loads(meta.get("extra", "{}")),
    }


def load_checkpoint(path: str | Path, registry: Registry) -> tuple[FusionModel, dict[str, Any]]:
    """Rebuild the model from the file alone; returns ``(model, extra)``."""
    header = read_header(path)
    config = parse(ModelConfig, header["model"], f"{path} (model config)")
    try:
        model = FusionModel(config, registry, load_weights=False)  # the state dict below holds them
    except UnknownComponentError as exc:
        owner = header["owners"].get(f"{exc.kind}:{exc.name}", "?")
        raise CheckpointError(f"{path} needs {exc.kind} {exc.name!r} from plugin {owner!r}, which is not "
                              f"installed or failed to load (`mmdomain plugins list`)") from None
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    model.eval()
    return model, header["extra"]


def init_from_checkpoint(model: FusionModel, path: str | Path) -> dict[str, Any]:
    """Load every tensor of checkpoint ``path`` that fits ``model`` (same name and shape); the rest
    of the model keeps its initialisation. Returns a report per module (``encoders.<m>``,
    ``fusion``, ``task``): how many tensors were loaded, and why the others were not.

    A model with low-rank adapters takes the checkpoint's base weights (``x.weight`` into
    ``x.base_layer.weight``). Typical use: fine-tune from a self-supervised (contrastive) run,
    whose encoders fit and whose task head does not.
    """
    path = Path(path)
    read_header(path)  # a clear error for anything that is not an mmdomain checkpoint
    state = load_file(str(path))
    own = model.state_dict()
    take: dict[str, Any] = {}
    report: dict[str, dict[str, Any]] = {}
    for key, tensor in own.items():
        source = key if key in state else key.replace(".base_layer.", ".")
        entry = report.setdefault(_module_of(key), {"loaded": 0, "not_in_checkpoint": 0, "other_shape": 0})
        if source not in state:
            entry["not_in_checkpoint"] += 1
        elif state[source].shape != tensor.shape:
            entry["other_shape"] += 1
        else:
            take[key] = state[source]
            entry["loaded"] += 1
    used = {k if k in state else k.replace(".base_layer.", ".") for k in take}
    for key in state:
        if key not in used:
            report.setdefault(_module_of(key), {"loaded": 0, "not_in_checkpoint": 0, "other_shape": 0})
            report[_module_of(key)]["unused_in_checkpoint"] = report[_module_of(key)].get("unused_in_checkpoint", 0) + 1
    if not take:
        raise CheckpointError(f"{path}: no tensor of this checkpoint fits the model (another architecture?)")
    model.load_state_dict(take, strict=False)
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
