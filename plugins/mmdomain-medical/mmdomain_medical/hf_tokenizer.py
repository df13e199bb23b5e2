"""``hf_tokenizer``: the tokenizer of a local Hugging Face model folder (``AutoTokenizer``,
``local_files_only``: nothing is downloaded), so a BERT-like model (``bert_text`` with the same
``path``) reads the ids of its own vocabulary, with its own special tokens ([CLS] first, [SEP]
last for BERT) and lower-casing.

Nothing is fitted: every site that holds the same folder gets the same ids (federated-safe).
``digest`` is ``pretrained.folder_digest`` of the folder's tokenizer files (``tokenizer.json``,
``vocab.txt``, ``tokenizer_config.json``...; ``pretrained.TOKENIZER_FILES``); ``path_sha256``
refuses a tokenizer with another digest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from torch import Tensor

from mmdomain import ConfigError
from mmdomain.models.weights import check_digest

from .pretrained import TOKENIZER_FILES, folder_digest


class HFTokenizer:
    def __init__(self, path: str | None = None, path_sha256: str | None = None):

        if not path:
            raise ConfigError("hf_tokenizer: give path= a local Hugging Face model or tokenizer folder")
        p = Path(path).expanduser()
        if not p.is_dir():
            raise ConfigError(f"hf_tokenizer: {path} is not a local folder (nothing is downloaded; copy the model "
                              "folder with its tokenizer files, e.g. tokenizer.json or vocab.txt and "
                              "tokenizer_config.json, there)")
        try:
            from transformers import AutoTokenizer

            self.tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure is the folder's
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise ConfigError(f"hf_tokenizer: cannot load a tokenizer from {path} ({type(exc).__name__}: "
                              f"{first[:200]})") from None
        if self.tok.pad_token_id is None:  # e.g. GPT-style vocabularies: pad with the end token
            if self.tok.eos_token is None:
                raise ConfigError(f"hf_tokenizer: the tokenizer in {path} has neither a pad nor an end token")
            self.tok.pad_token = self.tok.eos_token
        self.path, self.path_sha256 = path, path_sha256
        self.pad_id = int(self.tok.pad_token_id)
        self.vocab_size = len(self.tok)
        self.digest = folder_digest(p, only=TOKENIZER_FILES)
        check_digest(self.digest, path_sha256, "hf_tokenizer", p, what="folder")

    def __call__(self, texts: Sequence[str], max_length: int = 128) -> Tensor:
        enc = self.tok([t or "" for t in texts], padding="longest", truncation=True, max_length=max_length,
                       return_tensors="pt")
        return enc["input_ids"]

    def config(self) -> dict[str, Any]:
        return {"path": self.path, **({"path_sha256": self.path_sha256} if self.path_sha256 else {})}
