"""Encoder weights from a local file, never a download, with the file's SHA-256 on record.

``encoders.<m>.weights = "path/to/file"`` in a model config loads a state dict into the built
encoder: ``.safetensors``, or a torch pickle (``.pt``, ``.pth``, ``.bin``, ``.ckpt``) read with
``weights_only=True`` (no code runs). A state dict nested under ``state_dict`` / ``model`` is
unwrapped; the ``module.`` prefix of DataParallel/Opacus checkpoints is dropped. An encoder that
knows its library's layout (torchgeo, torchvision, torchxrayvision...) defines
``load_pretrained(state_dict, path)`` and maps the keys itself; others must match exactly.

The digest is written into the model config (``weights_sha256``), so every site of a federation
can check that it starts from the same file, and a checkpoint says what it started from. An
encoder that loads weights itself, from its own options (a Hugging Face folder, the torch hub
cache, torchxrayvision's cache), reports them as ``weights_source`` and ``weights_sha256``
attributes: the core records that digest the same way (``started_from``), and a rebuild from a
config that records another digest is refused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import ConfigError

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_state_dict(path: str | Path, where: str = "weights") -> dict[str, torch.Tensor]:
    """The tensors of a weights file; a clear ``ConfigError`` naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{where}: weights file {path} not found (weights are read from local files only; "
                          "copy the file there or fix the path)")
    try:
        if path.suffix == ".safetensors":
            state: Any = load_file(str(path))
        elif path.suffix in PICKLE_SUFFIXES:
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise ConfigError(f"{where}: {path}: unknown weights format {path.suffix!r}; "
                              f"expected .safetensors or one of {PICKLE_SUFFIXES}")
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - a hostile or broken file: any decoder failure is the file's
        if isinstance(exc, (MemoryError, KeyboardInterrupt)):
            raise
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{where}: {path} is not a readable weights file ({first})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{where}: {path} holds no state dict of tensors")
    return {k.removeprefix("module.").removeprefix("_module."): v for k, v in state.items()}


def state_mismatch(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], key=None
                   ) -> tuple[list[str], list[str], list[tuple[str, tuple, tuple]]]:
    """What keeps ``state`` from loading into a module whose state dict is ``own``: its missing keys,
    its unexpected keys and ``(key, file shape, module shape)`` of those of another shape (sorted by ``key``)."""
    missing = sorted(set(own) - set(state), key=key)
    unexpected = sorted(set(state) - set(own), key=key)
    shapes = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in sorted(set(own) & set(state), key=key)
              if state[k].shape != own[k].shape]
    return missing, unexpected, shapes


def describe_mismatch(missing: list[str], unexpected: list[str], shapes: list[tuple], *, own: str = "encoder") -> str:
    """``state_mismatch`` in words: counts and a few examples of each kind."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    if shapes:
        k, got, want = shapes[0]
        parts.append(f"{len(shapes)} of another shape (e.g. {k}: file {got}, {own} {want})")
    return "; ".join(parts)


def check_fits(module: nn.Module, state: dict[str, torch.Tensor], path: Path, where: str) -> None:
    """Refuse a state dict of another architecture, naming the file, the keys and the shapes."""
    mismatch = state_mismatch(module.state_dict(), state)
    if any(mismatch):
        raise ConfigError(f"{where}: {path} does not fit this encoder ({type(module).__name__}): "
                          + describe_mismatch(*mismatch))


def check_digest(digest: str, expected: str | None, where: str, source: str | Path, what: str = "file") -> None:
    """Refuse weights whose SHA-256 ``digest`` is not the ``expected`` one (when one is expected)."""
    if expected and digest != expected:
        raise ConfigError(f"{where}: {source} has SHA-256 {digest[:16]}..., the model config expects "
                          f"{expected[:16]}... (another {what} than the one this model started from)")


def load_encoder_weights(module: nn.Module, path: str | Path, *, expected_sha256: str | None = None,
                         where: str = "weights") -> str:
    """Load ``path`` into ``module``; returns the file's SHA-256 (checked against ``expected_sha256``)."""
    path = Path(path)
    state = read_state_dict(path, where)
    digest = sha256_of(path)
    check_digest(digest, expected_sha256, where, path)
    loader = getattr(module, "load_pretrained", None)
    if callable(loader):
        loader(state, path)
    else:
        check_fits(module, state, path, where)
        module.load_state_dict(state)
    return digest


def started_from(module: nn.Module, recorded: str | None, *, where: str) -> str | None:
    """The SHA-256 of the weights ``module`` loaded itself (its ``weights_sha256``, or None), checked
    against the digest a config ``recorded`` (another digest: a ``ConfigError``). Returns the digest to
    record: the module's, else what was recorded."""
    digest = getattr(module, "weights_sha256", None)
    if not isinstance(digest, str) or not digest:
        return recorded
    source = getattr(module, "weights_source", None) or "its weights"
    check_digest(digest, recorded, where, source, what="set of weights")
    return digest
