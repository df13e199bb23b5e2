"""The sample model: a missing modality is data, marked by a presence mask."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .availability import availability_pattern, row_patterns


@dataclass
class Sample:
    """One example as a loader produces it.

    ``inputs`` holds only the modalities this sample has (tensor, or raw ``str`` for
    text until a tokenizer turns it into ids); a modality that is absent is simply
    not a key. ``meta`` carries ids, site, spatial reference and acquisition time,
    never anything identifying a patient.
    """

    inputs: dict[str, Tensor | str]
    target: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def pattern(self) -> str:
        return availability_pattern(self.inputs)


@dataclass
class Batch:
    """``inputs[m]`` is ``[B, ...]`` zero-filled where absent (text: a list of str,
    "" where absent, until tokenized); ``present[m]`` is ``bool[B]``."""

    inputs: dict[str, Any]
    present: dict[str, Tensor]
    target: Tensor | None = None
    meta: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(next(iter(self.present.values()))) if self.present else 0

    @property
    def modalities(self) -> list[str]:
        return sorted(self.present)

    def patterns(self) -> list[str]:
        """The availability pattern of each sample, e.g. ``"image+report"``."""
        return row_patterns(self.present)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        def move(x: Any) -> Any:
            return x.to(device, non_blocking=non_blocking) if isinstance(x, Tensor) else x

        return Batch(
            inputs={k: move(v) for k, v in self.inputs.items()},
            present={k: move(v) for k, v in self.present.items()},
            target=move(self.target),
            meta=self.meta,
        )

    def pin_memory(self) -> "Batch":  # DataLoader(pin_memory=True) calls this
        def pin(x: Any) -> Any:
            return x.pin_memory() if isinstance(x, Tensor) else x

        return Batch(
            {k: pin(v) for k, v in self.inputs.items()},
            {k: pin(v) for k, v in self.present.items()},
            pin(self.target),
            self.meta,
        )

