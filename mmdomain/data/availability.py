"""Which modalities each sample has, without decoding it, and the pattern string that names a set.

``availability_pattern`` is the one spelling of a pattern everywhere (metrics, readiness,
reports): the present modalities in sorted order joined by ``+``, or ``none``.

Datasets may implement the availability protocol, ``available(i) -> frozenset[str]``: the
modalities sample ``i`` has, answered from an index (no decoding, resizing or scrubbing).
``present_modalities`` uses it when there and falls back on building the sample.
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Any, Iterable, Protocol, runtime_checkable

from torch.utils.data import ConcatDataset, Subset

NO_MODALITY = "none"


def availability_pattern(modalities: Iterable[str]) -> str:
    """``{"report", "image"}`` -> ``"image+report"``; the empty set -> ``"none"``."""
    return "+".join(sorted(modalities)) or NO_MODALITY


def row_patterns(present: dict[str, Any]) -> list[str]:
    """Each row's availability pattern from a batch's presence masks (``Batch.patterns``)."""
    names = sorted(present)
    n = len(next(iter(present.values()))) if present else 0
    return [availability_pattern(m for m in names if bool(present[m][i])) for i in range(n)]


def scored_rows(present: dict[str, Any], modalities: Iterable[str]) -> Any:
    """``bool[B]``: the rows of a batch's presence masks holding at least one of ``modalities``,
    i.e. the rows a model over them can score (the others are skipped, and counted, by callers)."""
    import torch

    return torch.stack([present[m] for m in modalities]).any(0)


@runtime_checkable
class AvailabilityAware(Protocol):
    """A dataset that knows each sample's modalities without building it."""

    def available(self, i: int) -> frozenset[str]: ...


def present_modalities(dataset: Any, i: int) -> frozenset[str]:
    """The modalities sample ``i`` of ``dataset`` has: from ``dataset.available(i)`` when the
    dataset implements it, else from the built sample (decodes it: slow)."""
    if isinstance(dataset, AvailabilityAware):
        return frozenset(dataset.available(i))
    if isinstance(dataset, Subset):  # torch's Subset: ask the dataset underneath
        return present_modalities(dataset.dataset, int(dataset.indices[i]))
    if isinstance(dataset, ConcatDataset):  # ... and ConcatDataset: the part that holds row i
        part = bisect.bisect_right(dataset.cumulative_sizes, i)
        return present_modalities(dataset.datasets[part], i - (dataset.cumulative_sizes[part - 1] if part else 0))
    return frozenset(m for m, v in dataset[i].inputs.items() if v is not None)


def availability_counts(dataset: Any, modalities: Iterable[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Samples holding each of ``modalities`` (zeros included), and samples per availability pattern
    over those modalities."""
    wanted = sorted(modalities)
    per_modality: Counter = Counter({m: 0 for m in wanted})
    patterns: Counter = Counter()
    for i in range(len(dataset)):
        have = present_modalities(dataset, i) & set(wanted)
        per_modality.update(have)
        patterns[availability_pattern(have)] += 1
    return dict(per_modality), dict(patterns)
