"""BERT uncased WordPiece tokenizers for ALBEF and BLIP, built offline from the shipped vocab.

Needs ``transformers`` (fast tokenizer). BLIP adds ``[DEC]`` (bos, id 30522) and ``[ENC]``
(id 30523) to the 30522-token BERT vocab, as ``salesforce/BLIP`` ``init_tokenizer`` does.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

BERT_VOCAB_SIZE = 30522
DEC_TOKEN, ENC_TOKEN = "[DEC]", "[ENC]"
DEC_TOKEN_ID, ENC_TOKEN_ID = 30522, 30523


def vocab_path() -> Path:
    """The bert-base-uncased ``vocab.txt`` shipped in ``blipx/assets``."""
    return Path(str(resources.files("blipx") / "assets" / "bert-base-uncased-vocab.txt"))


def bert_tokenizer(vocab_file: str | os.PathLike | None = None):
    """ALBEF's tokenizer: bert-base-uncased (lower-casing, 30522 ids)."""
    from transformers import BertTokenizerFast

    path = str(vocab_file or vocab_path())
    # ``vocab=`` (not ``vocab_file=``): transformers 5.2x ignores ``vocab_file`` for the fast
    # class and silently builds a 5-token vocab.
    tok = BertTokenizerFast(vocab=path, do_lower_case=True)
    if len(tok) != BERT_VOCAB_SIZE:
        raise RuntimeError(f"tokenizer built from {path} has {len(tok)} tokens, expected {BERT_VOCAB_SIZE}")
    return tok


def blip_tokenizer(vocab_file: str | os.PathLike | None = None):
    """BLIP's tokenizer: bert-base-uncased + ``[DEC]`` as bos (30522) + ``[ENC]`` (30523)."""
    from transformers import AddedToken

    tok = bert_tokenizer(vocab_file)
    tok.add_special_tokens({"bos_token": DEC_TOKEN})
    tok.add_tokens([AddedToken(ENC_TOKEN, special=True, normalized=False)], special_tokens=True)
    got = (tok.convert_tokens_to_ids(DEC_TOKEN), tok.convert_tokens_to_ids(ENC_TOKEN))
    if got != (DEC_TOKEN_ID, ENC_TOKEN_ID):
        raise RuntimeError(f"[DEC]/[ENC] got ids {got}, expected {(DEC_TOKEN_ID, ENC_TOKEN_ID)}")
    return tok
