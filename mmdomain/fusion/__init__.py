"""Mask-aware fusion heads: concat (early), late, gated and cross-attention."""

from .base import FusionHead, modality_dropout
from .concat import ConcatFusion
from .cross_attention import CrossAttentionFusion
from .gated import GatedFusion
from .late import LateFusion

__all__ = ["ConcatFusion", "CrossAttentionFusion", "FusionHead", "GatedFusion", "LateFusion", "modality_dropout"]
