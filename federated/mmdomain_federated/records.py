"""The wire format both apps share: named numpy arrays <-> Flower ArrayRecord, and the bf16
update compression (``compress = "bf16"``: a site's float32 arrays travel as bf16 bits)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord


def numpy_to_arrays(weights: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in weights.items()})


def arrays_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: record[k].numpy() for k in record.keys()}


def nbytes(record: ArrayRecord) -> int:
    """Bytes of the arrays' data in a record (what a message carries)."""
    return sum(len(a.data) for a in record.values())


def bf16_encode(a: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits (uint16), round to nearest even. Other dtypes pass unchanged."""
    if a.dtype != np.float32:
        return a
    bits = np.ascontiguousarray(a).view(np.uint32)
    rounded = bits + (0x7FFF + ((bits >> 16) & 1))
    return (rounded >> 16).astype(np.uint16)


def bf16_decode(a: np.ndarray) -> np.ndarray:
    if a.dtype != np.uint16:
        return a
    return (a.astype(np.uint32) << 16).view(np.float32)


def compress(weights: dict[str, np.ndarray], how: str) -> dict[str, np.ndarray]:
    """A site's update as it goes on the wire (``how``: ``none`` or ``bf16``)."""
    return {k: bf16_encode(v) for k, v in weights.items()} if how == "bf16" else weights


def decompress(weights: dict[str, np.ndarray], how: str) -> dict[str, np.ndarray]:
    """The server's side of ``compress``."""
    return {k: bf16_decode(v) for k, v in weights.items()} if how == "bf16" else weights
