"""Batch augmentation drawn independently per sample and per modality.

Cross-modal self-supervision (the contrastive task) learns whatever the two views of a row
share. When both views are the same grid of pixels seen by two sensors (S1 and S2 over one
patch) or one image and its report, the cheapest shared thing is often where edges lie, not
what is there; cropping, flipping and rotating each modality of a row on its own removes that
shortcut and leaves the content the labels depend on. This is the view augmentation of SimCLR
and CLIP-style training, applied to whole batches at once:

- image / raster ``[B, C, H, W]``: a random crop of ``crop_scale``..1 of the area (aspect
  3/4..4/3) resampled back to ``H x W`` (bilinear), a horizontal flip with probability 1/2 and,
  when ``rotate90``, a multiple of 90 degrees - one ``affine_grid`` / ``grid_sample`` call;
- text (a list of ``str``): each word dropped with probability ``word_dropout`` (never all);
- volume and any other kind: passed through unchanged.

A plugin bounds what its modality gets (``ModalitySpec.views``: no flips for chest films...).
Absent rows (zero-filled, ``present`` False) stay zeros. Values are resampled, never rescaled,
so a modality's normalisation is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from .sample import Batch

SPATIAL_KINDS = ("image", "raster")


#: what a modality may declare (``ModalitySpec.views``) to bound the augmentation of its data
VIEW_LIMITS = {"crop_scale": float, "flip": bool, "rotate90": bool, "word_dropout": float}


def check_view_limits(name: str, views: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` for a ``ModalitySpec.views`` entry that is unknown or of the wrong type."""
    for key, value in views.items():
        typ = VIEW_LIMITS.get(key)
        if typ is None:
            raise ValueError(f"modality {name!r}: views key {key!r} is not one of {sorted(VIEW_LIMITS)}")
        if not isinstance(value, typ) or (typ is float and not 0.0 <= value <= 1.0):
            raise ValueError(f"modality {name!r}: views[{key!r}] must be "
                             f"{'a bool' if typ is bool else 'a number in [0, 1]'}, got {value!r}")


@dataclass(frozen=True)
class ViewAugment:
    """``ViewAugment(kinds)(batch, generator) -> batch``; ``kinds`` maps modality name to kind.

    ``views`` holds what each modality's plugin declared keeps its meaning (``ModalitySpec.views``):
    a chest film is never mirrored or turned (the heart is on the left, effusions are basal) and
    tolerates only mild crops, an overhead raster any quarter turn. Per modality the augmentation
    is the run's, bounded by them: the larger smallest crop, flips / turns only where both allow
    them, the lower word dropout."""

    kinds: Mapping[str, str]
    crop_scale: float = 0.5
    flip: bool = True
    rotate90: bool = True
    word_dropout: float = 0.1
    views: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self):
        if not 0.0 < self.crop_scale <= 1.0:
            raise ValueError(f"augment: crop_scale must be in (0, 1], got {self.crop_scale}")
        if not 0.0 <= self.word_dropout < 1.0:
            raise ValueError(f"augment: word_dropout must be in [0, 1), got {self.word_dropout}")

    def settings(self, modality: str) -> dict[str, Any]:
        """The augmentation ``modality`` gets: the run's, bounded by the modality's ``views``."""
        limit = self.views.get(modality, {})
        return {"crop_scale": max(self.crop_scale, float(limit.get("crop_scale", 0.0))),
                "flip": self.flip and bool(limit.get("flip", True)),
                "rotate90": self.rotate90 and bool(limit.get("rotate90", True)),
                "word_dropout": min(self.word_dropout, float(limit.get("word_dropout", 1.0)))}

    def describe(self) -> str:
        parts = []
        for m, kind in sorted(self.kinds.items()):
            s = self.settings(m)
            if kind in SPATIAL_KINDS:
                parts.append(f"{m}: crops {s['crop_scale']:g}-1 of the area" + (", flips" if s["flip"] else "")
                             + (", quarter turns" if s["rotate90"] else ""))
            elif kind == "text" and s["word_dropout"] > 0:
                parts.append(f"{m}: word dropout {s['word_dropout']:g}")
        return "; ".join(parts) or "none"

    def __call__(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        inputs = dict(batch.inputs)
        for m, x in batch.inputs.items():
            kind = self.kinds.get(m)
            if x is None or kind is None:
                continue
            s = self.settings(m)
            if kind in SPATIAL_KINDS and isinstance(x, Tensor) and x.dim() == 4 and x.is_floating_point():
                view = self.spatial(x, generator, s["crop_scale"], s["flip"], s["rotate90"])
                inputs[m] = view * batch.present[m].view(-1, 1, 1, 1).to(x.dtype)
            elif kind == "text" and isinstance(x, list) and s["word_dropout"] > 0:
                inputs[m] = [self.words(t, generator, s["word_dropout"]) for t in x]
        return Batch(inputs, batch.present, batch.target, batch.meta)

    @staticmethod
    def spatial(x: Tensor, generator: torch.Generator | None, crop_scale: float = 0.5, flip: bool = True,
                rotate90: bool = True) -> Tensor:
        """A random crop / flip / quarter turn per row, resampled to the input's size."""
        n = x.shape[0]

        def uniform(lo: float, hi: float) -> Tensor:
            return lo + (hi - lo) * torch.rand(n, generator=generator)

        area = uniform(crop_scale, 1.0)
        ratio = uniform(math.log(3 / 4), math.log(4 / 3)).exp()
        sx = (area * ratio).sqrt().clamp(max=1.0)  # half-extent of the crop, in [-1, 1] units
        sy = (area / ratio).sqrt().clamp(max=1.0)
        tx = (1 - sx) * uniform(-1.0, 1.0)
        ty = (1 - sy) * uniform(-1.0, 1.0)
        mirror = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
        turns = torch.randint(0, 4, (n,), generator=generator) if rotate90 else torch.zeros(n, dtype=torch.long)
        return crop_flip_turn(x, sx, sy, tx, ty, mirror, turns)

    @staticmethod
    def words(text: str, generator: torch.Generator | None, rate: float = 0.1) -> str:
        parts = text.split()
        if len(parts) < 2:
            return text
        keep = torch.rand(len(parts), generator=generator) >= rate
        if not bool(keep.any()):
            keep[int(torch.randint(0, len(parts), (1,), generator=generator))] = True
        return " ".join(p for p, k in zip(parts, keep.tolist()) if k)


def view_augment(mode: str, task_needs_target: bool, kinds: Mapping[str, str],
                 views: Mapping[str, Mapping[str, Any]] | None = None, **options) -> ViewAugment | None:
    """The augmentation a training run uses: ``on``, ``off``, or ``auto`` (on exactly when the task
    learns without targets, i.e. self-supervised); ``None`` when off or nothing it could change."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"augment: mode must be auto, on or off, got {mode!r}")
    if mode == "off" or (mode == "auto" and task_needs_target):
        return None
    if not any(k in SPATIAL_KINDS or k == "text" for k in kinds.values()):
        return None
    return ViewAugment(dict(kinds), views=dict(views or {}), **options)


def crop_flip_turn(x: Tensor, sx: Tensor, sy: Tensor, tx: Tensor, ty: Tensor, flip: Tensor, turns: Tensor) -> Tensor:
    """Resample each row ``i`` of ``x`` ``[B, C, H, W]`` from the crop of half-extents ``sx, sy``
    centred at ``tx, ty`` (in ``[-1, 1]`` units), mirrored where ``flip`` is -1 and turned by
    ``turns`` quarter turns; bilinear, reflection at the border, one ``grid_sample`` call."""
    angle = turns.float() * (math.pi / 2)
    cos, sin = angle.cos().round(), angle.sin().round()
    theta = torch.zeros(x.shape[0], 2, 3)
    theta[:, 0, 0] = sx * flip * cos
    theta[:, 0, 1] = -sy * sin
    theta[:, 1, 0] = sx * flip * sin
    theta[:, 1, 1] = sy * cos
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
