"""Built-in fusion heads."""

from __future__ import annotations

from ..fusion import ConcatFusion, CrossAttentionFusion, GatedFusion, LateFusion
from ..hookspecs import hookimpl
from ..registry import FusionSpec


@hookimpl
def register_fusions(register):
    register(FusionSpec("concat", ConcatFusion, "early fusion: concatenation with learned missing-modality tokens"))
    register(FusionSpec("late", LateFusion, "masked, renormalised average of per-modality projections"))
    register(FusionSpec("gated", GatedFusion, "softmax gate over present modalities"))
    register(FusionSpec("cross_attention", CrossAttentionFusion,
                        "transformer over modality tokens + CLS with key-padding masks"))
