"""Every hook a plugin can implement, typed, one docstring each.

Plugins implement them with ``@mmdomain.hookimpl``. The ``register_*`` hooks are
*collect* hooks: the core calls each plugin's implementation with a ``register``
callback it owns; calling ``register(spec)`` adds ``spec`` to the registry under
the plugin's name (a duplicate name is rejected, naming both plugins). The other
hooks are *firstresult*: the first non-None answer wins and the core's built-in
implementation (``trylast``) answers when no plugin does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import pluggy

if TYPE_CHECKING:  # pragma: no cover - typing only
    import click

    from .registry import (
        DatasetSpec,
        EncoderSpec,
        FusionSpec,
        ModalitySpec,
        SyntheticSpec,
        TaskSpec,
        TokenizerSpec,
    )

PROJECT = "mmdomain"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_modalities(register: Callable[[ModalitySpec], None]) -> None:
    """Register the modalities this plugin reads: ``register(ModalitySpec(...))``."""


@hookspec
def register_encoders(register: Callable[[EncoderSpec], None]) -> None:
    """Register encoders mapping one modality's tensor to an embedding: ``register(EncoderSpec(...))``."""


@hookspec
def register_tokenizers(register: Callable[[TokenizerSpec], None]) -> None:
    """Register tokenizers that turn a text modality's strings into token ids: ``register(TokenizerSpec(...))``."""


@hookspec
def register_fusions(register: Callable[[FusionSpec], None]) -> None:
    """Register fusion heads over ``(embeddings, present)``: ``register(FusionSpec(...))``."""


@hookspec
def register_tasks(register: Callable[[TaskSpec], None]) -> None:
    """Register tasks (head + loss + metrics): ``register(TaskSpec(...))``."""


@hookspec
def register_datasets(register: Callable[[DatasetSpec], None]) -> None:
    """Register paired multimodal datasets: ``register(DatasetSpec(...))``."""


@hookspec
def register_synthetic(register: Callable[[SyntheticSpec], None]) -> None:
    """Register seeded generators that write realistic files for a dataset: ``register(SyntheticSpec(...))``."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add sub-commands to the ``mmdomain`` command line (a click group): ``cli.add_command(...)``."""


@hookspec(firstresult=True)
def detect_modality(path: Path) -> str | None:
    """Name the modality that reads ``path``, or None if this plugin does not read it.

    The core's fallback (trylast) matches the file suffix against each
    ``ModalitySpec.extensions``.
    """


@hookspec(firstresult=True)
def partition(dataset: Any, num_sites: int, site: int, scheme: str) -> Sequence[int] | None:
    """Indices of ``dataset`` that belong to ``site`` (0-based) of ``num_sites`` under ``scheme``.

    Return None for a scheme this plugin does not know. The core's fallback (trylast)
    answers ``"iid"`` (seeded shuffle, near-equal shares) and ``"by-meta:KEY"`` (group
    by ``sample_meta(i)[KEY]``, one group per site).
    """
