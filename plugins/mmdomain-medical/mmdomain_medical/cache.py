"""A cache of decoded, normalised tensors (memory or local disk), keyed by file identity
(path, size, mtime) and the decoding options, so an epoch after the first skips decoding.

Disk entries are named by a hash, hold only pixels (no header), and live wherever
``cache_dir`` says (keep it on the site's own disk: the pixels are patient data)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch


class TensorCache:
    def __init__(self, kind: str | None = "memory", cache_dir: str | Path | None = None, max_items: int = 100_000):
        if kind not in (None, "none", "memory", "disk"):
            raise ValueError(f"cache must be 'memory', 'disk' or None, got {kind!r}")
        self.kind = None if kind in (None, "none") else kind
        self.max_items = max_items
        self.mem: dict[str, torch.Tensor] = {}
        self.dir = Path(cache_dir) if cache_dir else None
        if self.kind == "disk":
            if self.dir is None:
                raise ValueError("cache='disk' needs cache_dir")
            self.dir.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0

    @staticmethod
    def key(path: Path, options: str) -> str:
        st = os.stat(path)
        return hashlib.sha256(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{options}".encode()).hexdigest()[:32]

    def get(self, path: Path, options: str, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        if self.kind is None:
            return make()
        try:
            k = self.key(path, options)
        except OSError:  # gone, or not reachable: ``make`` names the failure (the plugin's error, not OSError)
            return make()
        if self.kind == "memory":
            hit = self.mem.get(k)
            if hit is not None:
                self.hits += 1
                return hit
            value = make()
            if len(self.mem) < self.max_items:
                self.mem[k] = value
            self.misses += 1
            return value
        f = self.dir / f"{k}.npy"
        if f.is_file():
            try:
                self.hits += 1
                return torch.from_numpy(np.load(f, allow_pickle=False))
            except (OSError, ValueError):
                pass  # a broken entry: rebuild it
        value = make()
        tmp = f.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, value.numpy())
        os.replace(tmp, f)
        self.misses += 1
        return value
