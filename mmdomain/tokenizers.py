"""Domain-free tokenizers: ``hashing`` (no vocabulary, nothing to fit, identical at every
site) and ``word_vocab`` (a vocabulary fitted on a site's own texts)."""

from __future__ import annotations

import re
import zlib
from collections import Counter
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _pack(rows: list[list[int]], max_length: int, pad_id: int) -> Tensor:
    width = max(1, min(max_length, max((len(r) for r in rows), default=1)))
    out = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        r = r[:width]
        if r:
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


class HashingTokenizer:
    """Words hashed (crc32) into ``buckets`` ids; 0 is padding. Stateless and shareable
    across sites, so federated text encoders agree on ids without sharing a vocabulary."""

    pad_id = 0

    def __init__(self, buckets: int = 8192):
        if buckets < 2:
            raise ValueError("hashing tokenizer: buckets must be >= 2")
        self.buckets = buckets
        self.vocab_size = buckets + 1

    def __call__(self, texts: Sequence[str], max_length: int = 128) -> Tensor:
        rows = [[1 + zlib.crc32(w.encode()) % self.buckets for w in words(t)] for t in texts]
        return _pack(rows, max_length, self.pad_id)

    def config(self) -> dict[str, Any]:
        return {"buckets": self.buckets}


class WordVocabTokenizer:
    """Words looked up in a fitted vocabulary; 0 padding, 1 unknown."""

    pad_id, unk_id = 0, 1

    def __init__(self, vocab: list[str] | None = None):
        self.vocab = list(vocab or [])
        self.index = {w: i + 2 for i, w in enumerate(self.vocab)}
        self.vocab_size = len(self.vocab) + 2

    @staticmethod
    def fit(texts: Iterable[str], max_size: int = 5000, min_count: int = 2) -> dict[str, Any]:
        counts = Counter(w for t in texts for w in words(t))
        vocab = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))[:max_size]
        return {"vocab": vocab}

    def __call__(self, texts: Sequence[str], max_length: int = 128) -> Tensor:
        rows = [[self.index.get(w, self.unk_id) for w in words(t)] for t in texts]
        return _pack(rows, max_length, self.pad_id)

    def config(self) -> dict[str, Any]:
        return {"vocab": self.vocab}
