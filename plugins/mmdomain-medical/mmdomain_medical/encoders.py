"""Encoders: MONAI ResNet / DenseNet for DICOM images (2D) and volumes (3D), GroupNorm so the
sub-batches of present rows (even of 1) behave; a BERT-like text encoder from transformers,
loaded from a LOCAL directory (``path=``) or a tiny randomly initialised BertConfig."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from mmdomain import ConfigError

from .errors import MedicalDataError


def _norm(channels_hint: int = 8) -> tuple:
    return ("group", {"num_groups": channels_hint})


class MonaiResNetEncoder(nn.Module):
    def __init__(self, modality, out_dim: int = 128, layers: tuple[int, ...] = (1, 1, 1, 1),
                 widths: tuple[int, ...] = (16, 32, 64, 128), groups: int = 8):
        super().__init__()
        from monai.networks.nets import ResNet

        dims = 3 if modality.kind == "volume" else 2
        self.out_dim = out_dim
        self.net = ResNet("basic", list(layers), list(widths), spatial_dims=dims, n_input_channels=modality.channels or 1,
                          conv1_t_stride=2, num_classes=out_dim, norm=_norm(groups))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MonaiDenseNetEncoder(nn.Module):
    def __init__(self, modality, out_dim: int = 128, init_features: int = 16, growth_rate: int = 8,
                 blocks: tuple[int, ...] = (2, 2, 2, 2), groups: int = 4):
        super().__init__()
        from monai.networks.nets import DenseNet

        dims = 3 if modality.kind == "volume" else 2
        self.out_dim = out_dim
        self.net = DenseNet(dims, modality.channels or 1, out_dim, init_features=init_features,
                            growth_rate=growth_rate, block_config=tuple(blocks), norm=_norm(groups))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BertTextEncoder(nn.Module):
    """Masked mean of a BERT-like model's last hidden states, projected to ``out_dim``."""

    def __init__(self, modality, vocab_size: int, pad_id: int = 0, out_dim: int = 128, path: str | None = None,
                 layers: int = 2, hidden: int = 128, heads: int = 2, max_length: int = 512):
        super().__init__()
        from transformers import AutoModel, BertConfig, BertModel

        self.pad_id, self.out_dim = pad_id, out_dim
        if path:
            p = Path(path)
            if not p.is_dir():
                raise ConfigError(f"bert_text: path {path} is not a local model directory (nothing is downloaded)")
            try:
                self.bert = AutoModel.from_pretrained(str(p), local_files_only=True)
            except Exception as exc:  # noqa: BLE001
                raise ConfigError(f"bert_text: cannot load a model from {path} ({type(exc).__name__})") from None
            if self.bert.get_input_embeddings().num_embeddings < vocab_size:
                self.bert.resize_token_embeddings(vocab_size)
        else:
            cfg = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                             num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=max_length,
                             pad_token_id=pad_id, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
            self.bert = BertModel(cfg, add_pooling_layer=False)
        size = self.bert.config.hidden_size
        self.proj = nn.Identity() if size == out_dim else nn.Linear(size, out_dim)

    def forward(self, ids: Tensor) -> Tensor:
        mask = (ids != self.pad_id).long()
        mask[:, 0] = 1  # an all-padding row still attends somewhere
        h = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.proj((h * m).sum(1) / m.sum(1).clamp(min=1))
