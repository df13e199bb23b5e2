"""Domain-free tokenizers: ``hashing`` (no vocabulary, nothing to fit, identical at every
site) and ``word_vocab`` (a vocabulary fitted on a site's own texts).

A fitted vocabulary travels in every checkpoint, so a word that only one person's texts hold
(a name, an MRN the scrubber missed) must not enter it: fitters keep only the tokens seen in
at least ``min_groups`` different groups (default ``MIN_GROUPS``). The texts they are given are
plain strings, each its own group, or ``(text, group)`` pairs, the group a key the dataset names
for the text (``training.texts_for_fitting``; the medical dataset's is the keyed patient
pseudonym), so "groups" is "patients" there. ``grouped`` and ``tokens_in_groups`` are the shared
rule, for plugin fitters too.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from typing import Any, Hashable, Iterable, Iterator, Sequence

import torch
from torch import Tensor

from .errors import ConfigError

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
MIN_GROUPS = 5  # a fitted token must appear in the texts of at least this many groups (patients)


def check_min_groups(value: Any, where: str) -> int:
    """``min_groups`` as an int >= 1, or ``ConfigError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: min_groups must be an integer >= 1 (the number of different groups, e.g. "
                          f"patients, whose texts must hold a token), got {value!r}")
    return value


def grouped(texts: Iterable[str | tuple[str, Hashable]]) -> Iterator[tuple[str, Hashable]]:
    """``(text, group)`` for each item: a ``(text, group)`` pair as it is, a bare text as its own
    group (so ``min_groups`` then counts texts)."""
    for i, item in enumerate(texts):
        if isinstance(item, tuple):
            if len(item) != 2:
                raise ConfigError(f"texts to fit on: item {i} is a tuple of {len(item)}, expected (text, group)")
            text, group = item
            yield ("" if text is None else str(text)), ("group", group)
        else:
            yield ("" if item is None else str(item)), ("text", i)


def tokens_in_groups(tokens: Iterable[tuple[Iterable[str], Hashable]], min_groups: int) -> set[str]:
    """The tokens that occur in the token lists of at least ``min_groups`` different groups;
    ``tokens`` yields ``(token list, group)``. Memory: fewer than ``min_groups`` groups per token."""
    seen: dict[str, set[Hashable]] = {}
    kept: set[str] = set()
    for toks, group in tokens:
        for tok in set(toks):
            if tok in kept:
                continue
            groups = seen.setdefault(tok, set())
            groups.add(group)
            if len(groups) >= min_groups:
                kept.add(tok)
                del seen[tok]
    return kept


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
    def fit(texts: Iterable[str | tuple[str, Hashable]], max_size: int = 5000, min_count: int = 2,
            min_groups: int = MIN_GROUPS) -> dict[str, Any]:
        """The ``max_size`` most frequent words seen ``min_count`` times in all and in the texts of
        ``min_groups`` different groups (``grouped``: a bare text is its own group)."""
        check_min_groups(min_groups, "word_vocab")
        counts: Counter[str] = Counter()
        per_text = []
        for text, group in grouped(texts):
            ws = words(text)
            counts.update(ws)
            per_text.append((ws, group))
        common = tokens_in_groups(per_text, min_groups)
        vocab = sorted((w for w, c in counts.items() if c >= min_count and w in common),
                       key=lambda w: (-counts[w], w))[:max_size]
        return {"vocab": vocab}

    def __call__(self, texts: Sequence[str], max_length: int = 128) -> Tensor:
        rows = [[self.index.get(w, self.unk_id) for w in words(t)] for t in texts]
        return _pack(rows, max_length, self.pad_id)

    def config(self) -> dict[str, Any]:
        return {"vocab": self.vocab}
