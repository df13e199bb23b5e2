"""The BERT-like text encoder (``bert_text``): a transformers model from a LOCAL Hugging Face folder
(``path=``, never downloaded; with ``hf_tokenizer`` for its own vocabulary) or a tiny randomly
initialised BertConfig; pooled (``mean`` or ``cls``) and projected to ``out_dim``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmdomain import ConfigError
from mmdomain.models.weights import check_digest, check_fits, sha256_of

from .encoders import _with_params
from .pretrained import compare_keys, describe_mismatch, folder_digest

# -- text ---------------------------------------------------------------------------------------------
POOLINGS = ("mean", "cls")
_HF_HEADS = ("cls.", "lm_head.", "classifier.", "qa_outputs.", "pooler.", "score.")


class BertTextEncoder(nn.Module):
    """A BERT-like model's last hidden states, pooled (``pooling = "mean"``: masked mean over the
    tokens, default; ``"cls"``: the first token's state, BERT's [CLS] with a tokenizer that puts it
    first, e.g. ``hf_tokenizer``), projected to ``out_dim`` (no projection when the hidden size is
    ``out_dim``).

    ``path`` = a local Hugging Face model folder (``config.json`` + weights, e.g. a clinical BERT;
    read with ``local_files_only``, nothing downloaded), else a tiny random BertConfig (``layers``,
    ``hidden``, ``heads``). Its pooler, unused here, is dropped (an unused trainable layer would
    have no per-sample gradient under DP-SGD). Use the folder's own vocabulary with the
    ``hf_tokenizer`` tokenizer (``path`` = the same folder). ``max_length`` caps the tokens the
    model sees (and at most the model's ``max_position_embeddings``); for the random model it is
    also its number of positions. The folder's digest (``pretrained.folder_digest``) is
    ``weights_sha256``; ``path_sha256`` refuses a folder with another digest. ``weights = "file"``
    (the core's loader) also reads a Hugging Face state dict (``model.safetensors`` /
    ``pytorch_model.bin``; ``bert.`` prefix and task heads ignored) into this architecture."""

    def __init__(self, modality, vocab_size: int, pad_id: int = 0, out_dim: int = 128, path: str | None = None,
                 layers: int = 2, hidden: int = 128, heads: int = 2, max_length: int = 512, pooling: str = "mean",
                 path_sha256: str | None = None):
        super().__init__()
        from transformers import AutoModel, BertConfig, BertModel

        if pooling not in POOLINGS:
            raise ConfigError(f"bert_text: pooling={pooling!r}; use one of {POOLINGS}")
        if max_length < 1:
            raise ConfigError("bert_text: max_length must be >= 1")
        self.pad_id, self.out_dim, self.pooling = pad_id, out_dim, pooling
        self.weights_source: str | None = None
        self.weights_sha256: str | None = None
        if path:

            p = Path(path).expanduser()
            if not p.is_dir():
                raise ConfigError(f"bert_text: path {path} is not a local model directory (nothing is downloaded; "
                                  "copy the model folder, with its config.json and weights, there)")
            try:
                self.bert = AutoModel.from_pretrained(str(p), local_files_only=True)
            except Exception as exc:  # noqa: BLE001
                first = str(exc).splitlines()[0] if str(exc) else ""
                raise ConfigError(f"bert_text: cannot load a model from {path} ({type(exc).__name__}: {first[:200]})") from None
            if getattr(self.bert, "pooler", None) is not None:
                self.bert.pooler = None
            if self.bert.get_input_embeddings().num_embeddings < vocab_size:
                self.bert.resize_token_embeddings(vocab_size)
            self.weights_source, self.weights_sha256 = str(p), folder_digest(p)
            check_digest(self.weights_sha256, path_sha256, "bert_text", p, what="folder")
        else:
            cfg = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                             num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=max_length,
                             pad_token_id=pad_id, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
            self.bert = BertModel(cfg, add_pooling_layer=False)
        positions = getattr(self.bert.config, "max_position_embeddings", None) or max_length
        self.max_length = min(max_length, positions)
        size = self.bert.config.hidden_size
        self.proj = nn.Identity() if size == out_dim else nn.Linear(size, out_dim)

    def _layers(self) -> list[nn.Module]:
        for dotted in ("encoder.layer", "transformer.layer", "encoder.layers", "layers", "layer"):
            obj: Any = self.bert
            for part in dotted.split("."):
                obj = getattr(obj, part, None)
            if isinstance(obj, nn.ModuleList):
                return list(obj)
        return []

    def blocks(self) -> list[nn.Module]:
        """The embeddings, each transformer layer, the projection (when it has parameters)."""
        layers = self._layers()
        emb = getattr(self.bert, "embeddings", None)
        if not layers or emb is None:
            return _with_params([self.bert, self.proj])
        return _with_params([emb, *layers, self.proj])

    def load_pretrained(self, state: dict[str, Tensor], path: str | Path) -> None:
        """``weights = "file"``: this encoder's own state dict, or a Hugging Face one of its model."""
        path = Path(path)
        if set(state) == set(self.state_dict()):
            check_fits(self, state, path, "bert_text")
            self.load_state_dict(state)
        else:
            prefix = f"{getattr(self.bert, 'base_model_prefix', 'bert')}."
            own = self.bert.state_dict()
            hf = {k.removeprefix(prefix): v for k, v in state.items()}
            hf = {k: v for k, v in hf.items() if not k.startswith(_HF_HEADS)
                  and not (k.endswith("position_ids") and k not in own)}
            missing, unexpected, shapes = compare_keys(own, hf)
            if missing or unexpected or shapes:
                c = self.bert.config
                raise ConfigError(f"bert_text: {path} does not fit this encoder's {type(self.bert).__name__} "
                                  f"({c.num_hidden_layers} layers, hidden {c.hidden_size}, vocabulary "
                                  f"{self.bert.get_input_embeddings().num_embeddings}): "
                                  + describe_mismatch(missing, unexpected, shapes))
            self.bert.load_state_dict(hf)
        self.weights_source, self.weights_sha256 = str(path), sha256_of(path)

    def _states(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        ids = ids[:, : self.max_length]
        mask = (ids != self.pad_id).long()
        mask[:, 0] = 1  # an all-padding row still attends somewhere
        # the 4-D additive mask is used as given: transformers' own mask building branches on the
        # mask's values, which per-sample gradients by torch.func (local DP) cannot trace
        dtype = self.bert.get_input_embeddings().weight.dtype
        bias = (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
        return self.bert(input_ids=ids, attention_mask=bias).last_hidden_state, mask

    def tokens(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Each token's last hidden state through the projection ``[B, L, out_dim]``; padding is not
        valid (the first position always is). With ``pooling = "mean"`` their mean is ``forward``'s."""
        h, mask = self._states(ids)
        return self.proj(h), mask.bool()

    def forward(self, ids: Tensor) -> Tensor:
        h, mask = self._states(ids)
        if self.pooling == "cls":
            return self.proj(h[:, 0])
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.proj((h * m).sum(1) / m.sum(1).clamp(min=1))
