"""Mask-aware fusion heads: concat (early), late, gated, cross-attention, HeMIS (mean + variance) and
token-level cross-modal attention."""

from .base import FusionHead, modality_dropout
from .concat import ConcatFusion
from .cross_attention import CrossAttentionFusion
from .gated import GatedFusion
from .hemis import HeMISFusion
from .late import LateFusion
from .token_attention import TokenAttentionFusion

__all__ = ["ConcatFusion", "CrossAttentionFusion", "FusionHead", "GatedFusion", "HeMISFusion", "LateFusion",
           "TokenAttentionFusion", "modality_dropout"]
