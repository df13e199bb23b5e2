"""Built-in encoders: ``cnn`` (image/raster/volume), ``bag_of_words`` and ``tiny_transformer`` (text)."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..models.encoders import BagOfWordsEncoder, ConvEncoder, TinyTransformerEncoder
from ..registry import EncoderSpec


@hookimpl
def register_encoders(register):
    register(EncoderSpec("cnn", ("image", "raster", "volume"), ConvEncoder, out_dim=128, supports_dense=True,
                         supports_tokens=True,
                         description="small strided conv net with GroupNorm; any channel count; 2D or 3D"))
    register(EncoderSpec("bag_of_words", ("text",), BagOfWordsEncoder, out_dim=128, supports_tokens=True,
                         description="mean of token embeddings"))
    register(EncoderSpec("tiny_transformer", ("text",), TinyTransformerEncoder, out_dim=128,
                         supports_tokens=True, description="2-layer transformer over token ids, masked mean pool"))
