"""The one deterministic train/val/test split of the toolkit, by a group key (a patient, a place).

Every sample of one group lands in the same split (no patient in both train and test), and the
split of a key never depends on what else is in the dataset.
"""

from __future__ import annotations

import hashlib

SPLIT_NAMES = ("train", "val", "test")


def split_of(key: str, fractions: tuple[float, float] = (0.7, 0.15)) -> str:
    """``"train"``, ``"val"`` or ``"test"`` for a group ``key``, from a SHA-256 of it.

    ``fractions`` are the train and val shares; test takes the rest.
    """
    u = int(hashlib.sha256(str(key).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    train, val = fractions
    return "train" if u < train else "val" if u < train + val else "test"
