"""Built-in tokenizers: ``hashing`` and ``word_vocab``."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..registry import TokenizerSpec
from ..tokenizers import HashingTokenizer, WordVocabTokenizer


@hookimpl
def register_tokenizers(register):
    register(TokenizerSpec("hashing", HashingTokenizer, description="hashed words; no vocabulary to fit or share"))
    register(TokenizerSpec("word_vocab", WordVocabTokenizer, fit=WordVocabTokenizer.fit,
                           description="word vocabulary fitted on the site's own texts; keeps words seen in "
                                       "min_groups (5) groups' texts (patients, where the dataset names them)"))
