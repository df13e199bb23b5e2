"""Per-band normalisation statistics from a site's own data (never leaves the site: only
means and standard deviations, which reach the encoders as their ``mean``/``std`` options through
``models.model_for(stats=...)``)."""

from __future__ import annotations

from typing import Any

import numpy as np


def band_stats(dataset, max_patches: int = 64, seed: int = 0) -> dict[str, dict[str, list[float]]]:
    """Mean and std per channel of each raster modality over up to ``max_patches`` patches.
    S1 statistics are over valid pixels in dB (log domain: speckle is additive there)."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(dataset))[:max_patches]
    sums: dict[str, Any] = {}
    for i in idx:
        sample = dataset[int(i)]
        for m, x in sample.inputs.items():
            a = x.numpy().reshape(x.shape[0], -1).astype(np.float64)
            s = sums.setdefault(m, [0.0, np.zeros(a.shape[0]), np.zeros(a.shape[0])])
            s[0] += a.shape[1]
            s[1] += a.sum(1)
            s[2] += (a ** 2).sum(1)
    out = {}
    for m, (n, s1, s2) in sums.items():
        mean = s1 / n
        std = np.sqrt(np.maximum(s2 / n - mean ** 2, 1e-12))
        out[m] = {"mean": [round(float(v), 6) for v in mean], "std": [round(float(v), 6) for v in std]}
    return out
