"""Collate samples into a Batch: zero-fill absent modalities and build presence masks."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from ..errors import DataError
from .sample import Batch, Sample


class Collate:
    """``Collate(modalities)(samples) -> Batch``.

    ``modalities`` fixes the batch's keys, so a batch in which no sample has a
    modality still carries it (all absent). Tensor modalities must agree in shape
    across the samples that have them; text stays a list of ``str``. ``augment`` (a
    ``ViewAugment``) is applied to each batch it builds, with torch's global generator (seeded by
    ``seed_everything``; DataLoader workers get their own seeds).
    """

    def __init__(self, modalities: Sequence[str], augment: Callable[[Batch], Batch] | None = None):
        if not modalities:
            raise ValueError("Collate needs at least one modality name")
        self.modalities = sorted(modalities)
        self.augment = augment

    def __call__(self, samples: Sequence[Sample]) -> Batch:
        if not samples:
            raise DataError("cannot collate an empty list of samples")
        inputs: dict[str, object] = {}
        present: dict[str, Tensor] = {}
        for m in self.modalities:
            values = [s.inputs.get(m) for s in samples]
            mask = torch.tensor([v is not None for v in values], dtype=torch.bool)
            present[m] = mask
            inputs[m] = _stack(m, values)
        batch = Batch(inputs=inputs, present=present, target=_stack_targets(samples), meta=[s.meta for s in samples])
        return self.augment(batch) if self.augment is not None else batch


def _stack(name: str, values: list[object]) -> object:
    given = [v for v in values if v is not None]
    if not given:
        return None  # filled once the model knows the shape; see FusionModel.encode
    if isinstance(given[0], str):
        return [v if isinstance(v, str) else "" for v in values]
    first = given[0]
    assert isinstance(first, Tensor)
    for v in given:
        if not isinstance(v, Tensor) or v.shape != first.shape:
            shapes = sorted({tuple(getattr(x, "shape", ())) for x in given})
            raise DataError(
                f"modality {name!r}: samples in one batch must share a shape, got {shapes}; "
                "resize in the dataset's transform"
            )
    out = first.new_zeros((len(values), *first.shape))
    for i, v in enumerate(values):
        if v is not None:
            out[i] = v
    return out


def _stack_targets(samples: Sequence[Sample]) -> Tensor | None:
    targets = [s.target for s in samples]
    if all(t is None for t in targets):
        return None
    if any(t is None for t in targets):
        raise DataError("some samples in the batch have a target and some do not")
    return torch.stack([torch.as_tensor(t) for t in targets])
