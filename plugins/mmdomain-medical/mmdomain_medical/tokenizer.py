"""``wordpiece``: a WordPiece tokenizer (HF ``tokenizers``) fitted on the site's own scrubbed
reports (``fit`` returns the vocabulary as options), or loaded from a local tokenizer
directory / ``tokenizer.json`` (``path=``).

Privacy: ``fit`` keeps only the words seen in the reports of at least ``min_groups`` (default
5) different patients (the dataset's keyed patient pseudonym, ``MedicalDataset.text_group``;
a text given alone counts as its own group), before WordPiece splits them, so every token of
the vocabulary, a piece of such a word, is in 5 patients' reports: a name or an identifier the
scrubber missed in one patient's report never enters a checkpoint.

Federated note: a vocabulary fitted per site gives each site different token ids, so the
medical dataset's default model uses the core ``hashing`` tokenizer (identical at every
site, nothing to share). Use ``wordpiece`` with a vocabulary fixed in the config (fitted
once, or ``path=`` to a shared tokenizer) when the sites must agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Hashable, Iterable, Sequence

import torch
from torch import Tensor

from mmdomain import ConfigError
from mmdomain.tokenizers import MIN_GROUPS, check_min_groups, grouped, tokens_in_groups

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _pipeline(tok):
    from tokenizers import normalizers, pre_tokenizers

    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


class WordPieceTokenizer:
    def __init__(self, vocab: list[str] | None = None, path: str | None = None):
        from tokenizers import Tokenizer
        from tokenizers.models import WordPiece

        self.vocab, self.path = vocab, path
        if path:
            p = Path(path)
            f = p / "tokenizer.json" if p.is_dir() else p
            if f.is_file():
                self.tok = Tokenizer.from_file(str(f))
            elif (p / "vocab.txt").is_file():
                words = [w.rstrip("\n") for w in (p / "vocab.txt").read_text(encoding="utf-8").splitlines()]
                self.tok = _pipeline(Tokenizer(WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]")))
            else:
                raise ConfigError(f"wordpiece: {path} holds no tokenizer.json or vocab.txt (nothing is downloaded)")
        elif vocab:
            self.tok = _pipeline(Tokenizer(WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]")))
        else:
            raise ConfigError("wordpiece: give vocab= (from fit) or path= (a local tokenizer directory)")
        self.pad_id = self.tok.token_to_id("[PAD]") if self.tok.token_to_id("[PAD]") is not None else 0
        self.cls_id = self.tok.token_to_id("[CLS]")
        self.vocab_size = self.tok.get_vocab_size()

    @staticmethod
    def fit(texts: Iterable[str | tuple[str, Hashable]], vocab_size: int = 2000, min_frequency: int = 2,
            min_groups: int = MIN_GROUPS, path: str | None = None, **_: Any) -> dict[str, Any]:
        """Train a vocabulary on ``texts`` (strings, or ``(text, group)`` pairs), on the words of
        ``min_groups`` different groups only; with ``path=`` (a local tokenizer) nothing is trained."""
        if path:
            WordPieceTokenizer(path=path)  # fail now, clearly, if it is not a readable local tokenizer
            return {"path": path}
        check_min_groups(min_groups, "wordpiece")
        from tokenizers import Tokenizer
        from tokenizers.models import WordPiece
        from tokenizers.trainers import WordPieceTrainer

        tok = _pipeline(Tokenizer(WordPiece(unk_token="[UNK]")))
        per_text = [([w for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text))], group)
                    for text, group in grouped(texts) if text]
        common = tokens_in_groups(per_text, min_groups)
        kept = [" ".join(w for w in ws if w in common) for ws, _ in per_text]
        trainer = WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIALS))
        tok.train_from_iterator([t for t in kept if t], trainer=trainer)
        vocab = tok.get_vocab()
        return {"vocab": sorted(vocab, key=vocab.get)}

    def __call__(self, texts: Sequence[str], max_length: int = 128) -> Tensor:
        # a saved tokenizer.json may carry its own [CLS] ... [SEP] template: add ours only, once
        encs = self.tok.encode_batch([t or "" for t in texts], add_special_tokens=False)
        rows = [([self.cls_id] if self.cls_id is not None else []) + e.ids for e in encs]
        width = max(1, min(max_length, max(len(r) for r in rows) if rows else 1))
        out = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            r = r[:width]
            if r:
                out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return out

    def config(self) -> dict[str, Any]:
        return {"path": self.path} if self.path else {"vocab": self.vocab}
