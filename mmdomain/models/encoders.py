"""Small domain-free encoders the core ships: a conv net for images/rasters/volumes and
two text encoders over token ids. Domain plugins bring the real backbones."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..limits import DIM
from ..registry import ModalitySpec


def cells_as_tokens(head: nn.Module, features: Tensor, dense: bool) -> tuple[Tensor, Tensor]:
    """A conv encoder's last feature map ``[B, C, *S]`` as tokens ``[B, prod(S), out_dim]``, all valid:
    its ``head`` (a 1x1 conv when ``dense``, else the linear layer after mean pooling) applied cell by
    cell, so the tokens' mean is the pooled embedding (the head is linear)."""
    if dense:
        seq = head(features).flatten(2).transpose(1, 2)
    else:
        seq = head(features.flatten(2).transpose(1, 2))
    return seq, torch.ones(seq.shape[:2], dtype=torch.bool, device=seq.device)


class ConvEncoder(nn.Module):
    """Strided conv stages with GroupNorm (safe for the small sub-batches of present rows)."""

    def __init__(self, modality: ModalitySpec, out_dim: int = 128, width: int = 32, depth: int = 3,
                 dense: bool = False, in_channels: int | None = None):
        super().__init__()
        if width * 2 ** max(depth - 1, 0) > DIM:  # the last stage has width * 2**(depth-1) channels
            raise ConfigError(f"cnn: width={width} with depth={depth} gives {width * 2 ** (depth - 1):,} channels in "
                              f"the last stage; at most {DIM:,}")
        conv = nn.Conv3d if modality.kind == "volume" else nn.Conv2d
        c_in = in_channels or modality.channels or 1
        layers: list[nn.Module] = []
        c = c_in
        for i in range(depth):
            c_out = width * 2**i
            layers += [conv(c, c_out, 3, stride=2, padding=1), nn.GroupNorm(min(8, c_out), c_out), nn.GELU()]
            c = c_out
        self.body = nn.Sequential(*layers)
        self.dense = dense
        self.out_dim = out_dim
        self.head = conv(c, out_dim, 1) if dense else nn.Linear(c, out_dim)

    def blocks(self) -> list[nn.Module]:
        """The conv stages (conv, norm, activation) and the head, input to output: what ``train = "last:N"`` counts."""
        stages = [nn.Sequential(*self.body[i:i + 3]) for i in range(0, len(self.body), 3)]
        return [*stages, self.head]

    def forward(self, x: Tensor) -> Tensor:
        h = self.body(x)
        if self.dense:
            return self.head(h)
        return self.head(h.flatten(2).mean(-1))

    def tokens(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return cells_as_tokens(self.head, self.body(x), self.dense)


class BagOfWordsEncoder(nn.Module):
    """Mean of token embeddings, ignoring padding.

    A plain ``nn.Embedding`` and a masked mean rather than ``nn.EmbeddingBag``: Opacus'
    per-sample gradients for EmbeddingBag need flat ids with offsets and drop repeated tokens.
    """

    def __init__(self, modality: ModalitySpec, vocab_size: int, pad_id: int = 0, out_dim: int = 128):
        super().__init__()
        self.pad_id, self.out_dim = pad_id, out_dim
        self.embed = nn.Embedding(vocab_size, out_dim, padding_idx=pad_id)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, ids: Tensor) -> Tensor:
        keep = (ids != self.pad_id).unsqueeze(-1)
        h = torch.where(keep, self.embed(ids), 0.0).sum(1) / keep.sum(1).clamp(min=1)
        return self.norm(h)

    def tokens(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Each token's (normalised) embedding ``[B, L, out_dim]``; padding is not valid."""
        return self.norm(self.embed(ids)), ids != self.pad_id


class TinyTransformerEncoder(nn.Module):
    """A small transformer over token ids, masked mean-pooled."""

    def __init__(self, modality: ModalitySpec, vocab_size: int, pad_id: int = 0, out_dim: int = 128,
                 layers: int = 2, heads: int = 4, max_length: int = 512):
        super().__init__()
        self.pad_id, self.out_dim = pad_id, out_dim
        self.embed = nn.Embedding(vocab_size, out_dim, padding_idx=pad_id)
        self.pos = nn.Parameter(torch.randn(max_length, out_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(out_dim, heads, 2 * out_dim, dropout=0.1, batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(out_dim)

    def _contextual(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        ids = ids[:, : self.pos.shape[0]]
        pad = ids == self.pad_id
        return self.body(self.embed(ids) + self.pos[: ids.shape[1]], src_key_padding_mask=pad), pad

    def forward(self, ids: Tensor) -> Tensor:
        h, pad = self._contextual(ids)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        return self.norm((h * keep).sum(1) / keep.sum(1).clamp(min=1))

    def tokens(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """The contextual token states ``[B, L, out_dim]`` (normalised); padding is not valid."""
        h, pad = self._contextual(ids)
        return self.norm(h), ~pad
