"""Built-in fusion heads."""

from __future__ import annotations

from ..fusion import ConcatFusion, CrossAttentionFusion, GatedFusion, HeMISFusion, LateFusion, TokenAttentionFusion
from ..hookspecs import hookimpl
from ..registry import FusionSpec


@hookimpl
def register_fusions(register):
    register(FusionSpec("concat", ConcatFusion, "early fusion: concatenation with learned missing-modality tokens"))
    register(FusionSpec("late", LateFusion, "masked, renormalised average of per-modality projections"))
    register(FusionSpec("gated", GatedFusion, "softmax gate over present modalities"))
    register(FusionSpec("cross_attention", CrossAttentionFusion,
                        "transformer over modality tokens + CLS with key-padding masks (pattern_tokens: a "
                        "learned token per availability pattern)"))
    register(FusionSpec("hemis", HeMISFusion, "HeMIS: mean and variance of per-modality projections over the "
                        "present modalities (any subset)"))
    register(FusionSpec("token_attention", TokenAttentionFusion, "token-level cross-modal attention over the "
                        "encoders' token sequences (feature-map cells, text tokens), with attention maps"))
