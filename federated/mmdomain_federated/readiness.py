"""The readiness report (a QUERY message before round 1): what a site says about its data.

Per split: samples per modality and per availability pattern, counted from the datasets'
availability (no sample is decoded), Laplace-noised with small cells suppressed, and the
dataset's own ``describe`` statistics (integers noised the same way). The train split also
carries a ``profile`` of up to ``readiness-rows`` rows (noised label counts, per-modality input
moments; ``heterogeneity``), from which the server measures how different the sites are. ``held_modalities``
reads back, on the server, which modalities each site reported. No flwr here: the messages
are the apps' (``client_app.query``, ``rounds.readiness_round``).
"""

from __future__ import annotations

import math
import random
from typing import Any

from mmdomain.data import availability_counts
from mmdomain.errors import DataError
from mmdomain.registry import Registry

from .groups import held
from .heterogeneity import profile
from .settings import Settings
from .task import SUPPRESS_BELOW, HideModalities, load_site, model_config

SPLITS = ("train", "val", "test")


def _noisy(count: int, rng: random.Random, scale: float) -> int | str:
    """Laplace-noised count; small cells (which could single someone out) are suppressed."""
    u = rng.random() - 0.5
    noisy = count - scale * math.copysign(1.0, u) * math.log(1 - 2 * abs(u)) if scale > 0 else count
    value = max(0, round(noisy))
    return f"<{SUPPRESS_BELOW}" if value < SUPPRESS_BELOW else value


def readiness(settings: Settings, node_config: dict[str, Any], registry: Registry, *, noise_scale: float = 2.0,
              seed: int | None = None) -> dict[str, Any]:
    """This site's report: per split, noised counts per modality and pattern, and ``describe``."""
    rng = random.Random(seed)
    spec = registry.dataset(settings.dataset)
    modalities = model_config(settings, registry).modalities
    report: dict[str, Any] = {"dataset": spec.name, "splits": {}}
    for split in SPLITS:
        try:
            ds = load_site(settings, node_config, registry, split)
        except DataError as exc:
            report["splits"][split] = {"error": str(exc).split("\n")[0]}
            continue
        per_mod, patterns = availability_counts(ds, modalities)
        entry: dict[str, Any] = {"n": _noisy(len(ds), rng, noise_scale),
                                 "modalities": {m: _noisy(c, rng, noise_scale) for m, c in per_mod.items()},
                                 "patterns": {p: _noisy(c, rng, noise_scale) for p, c in sorted(patterns.items())}}
        if spec.describe is not None:
            base = ds.base if isinstance(ds, HideModalities) else ds
            try:
                entry["describe"] = _noise_tree(spec.describe(base), rng, noise_scale)
            except Exception as exc:  # a plugin's describe failing must not block training
                entry["describe"] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
        if split == "train" and settings.readiness_rows > 0:
            try:
                entry["profile"] = profile(ds, modalities, rows=settings.readiness_rows, rng=rng,
                                           noise_scale=noise_scale, noisy=_noisy)
            except DataError as exc:  # a row that cannot be read: the report goes out without statistics
                entry["profile"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"[:200]}
            except Exception as exc:  # anything else says its type only (a library's message may hold a path)
                entry["profile"] = {"error": type(exc).__name__}
        report["splits"][split] = entry
    return report


def _noise_tree(value: Any, rng: random.Random, scale: float) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return _noisy(value, rng, scale)
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {str(k): _noise_tree(v, rng, scale) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_noise_tree(v, rng, scale) for v in value]
    return value if isinstance(value, str) and len(value) <= 64 else None


def train_entry(site_report: dict[str, Any]) -> dict[str, Any]:
    """A site's train split in the server's readiness record (the record itself for a site that
    answered with an error or a refusal)."""
    return site_report.get("splits", {}).get("train", site_report)


def held_modalities(report: dict[str, dict[str, Any]]) -> list[set[str]]:
    """The modalities each reporting site holds in its train split, from the server's readiness
    record (``{site: report}``; sites that failed or refused are left out). A suppressed cell
    (``"<5"``) is a modality the site holds."""
    out = []
    for rep in report.values():
        if not isinstance(rep, dict) or "error" in rep or "refused" in rep:
            continue
        cells = train_entry(rep).get("modalities") or {}
        out.append(held({m: 1 if isinstance(c, str) else int(c) for m, c in cells.items()}))
    return out
