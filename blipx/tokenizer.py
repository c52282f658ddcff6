"""WordPiece tokenizers of ALBEF and BLIP, built offline from the shipped bert-base-uncased vocab.

Needs ``transformers`` (fast tokenizer). The special token ids are those of
:class:`blipx.layers.configs.TextConfig` (defined there once); these builders check that the
vocab gives the same ids.

- BLIP (``blip_tokenizer``): ``[CLS] tokens [SEP]``, plus ``[DEC]`` (bos) and ``[ENC]`` added
  after the 30522 BERT ids, as ``salesforce/BLIP`` ``init_tokenizer`` does.
- ALBEF (``albef_tokenizer``): ``[CLS] tokens`` with **no trailing [SEP]**: ALBEF ships its own
  ``models/tokenization_bert.py`` whose ``build_inputs_with_special_tokens`` returns
  ``[cls] + token_ids_0``. With official ALBEF weights an added [SEP] moves ITC similarities by
  about 1e-2, so every ALBEF path (training, evaluation, ``encode_for_retrieval``) uses this one.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from blipx.layers.configs import TextConfig

BERT_VOCAB_SIZE = 30522  # lines of the shipped vocab.txt
DEC_TOKEN, ENC_TOKEN = "[DEC]", "[ENC]"
_IDS = TextConfig()  # the one definition of the special token ids


def vocab_path() -> Path:
    """The bert-base-uncased ``vocab.txt`` shipped in ``blipx/assets``."""
    return Path(str(resources.files("blipx") / "assets" / "bert-base-uncased-vocab.txt"))


def bert_tokenizer(vocab_file: str | os.PathLike | None = None):
    """Plain bert-base-uncased (lower-casing, 30522 ids, ``[CLS] ... [SEP]``): BLIP's base."""
    from transformers import BertTokenizerFast

    path = str(vocab_file or vocab_path())
    # ``vocab=`` (not ``vocab_file=``): transformers 5.2x ignores ``vocab_file`` for the fast
    # class and silently builds a 5-token vocab.
    tok = BertTokenizerFast(vocab=path, do_lower_case=True)
    if len(tok) != BERT_VOCAB_SIZE:
        raise RuntimeError(f"tokenizer built from {path} has {len(tok)} tokens, expected {BERT_VOCAB_SIZE}")
    got = (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id)
    want = (_IDS.pad_token_id, _IDS.cls_token_id, _IDS.sep_token_id, _IDS.mask_token_id)
    if got != want:
        raise RuntimeError(f"[PAD]/[CLS]/[SEP]/[MASK] got ids {got} from {path}, expected {want}")
    return tok


def albef_tokenizer(vocab_file: str | os.PathLike | None = None):
    """ALBEF's tokenizer: bert-base-uncased writing ``[CLS] tokens`` (no [SEP]; see the module doc)."""
    from tokenizers.processors import TemplateProcessing

    tok = bert_tokenizer(vocab_file)
    # A text pair keeps ALBEF's rule too: [CLS] A B (its tokenizer concatenates with no [SEP]).
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A", pair="[CLS] $A $B:1", special_tokens=[("[CLS]", _IDS.cls_token_id)])
    return tok


def blip_tokenizer(vocab_file: str | os.PathLike | None = None):
    """BLIP's tokenizer: bert-base-uncased + ``[DEC]`` as bos + ``[ENC]``."""
    from transformers import AddedToken

    tok = bert_tokenizer(vocab_file)
    tok.add_special_tokens({"bos_token": DEC_TOKEN})
    tok.add_tokens([AddedToken(ENC_TOKEN, special=True, normalized=False)], special_tokens=True)
    got = (tok.convert_tokens_to_ids(DEC_TOKEN), tok.convert_tokens_to_ids(ENC_TOKEN))
    if got != (_IDS.bos_token_id, _IDS.enc_token_id):
        raise RuntimeError(f"[DEC]/[ENC] got ids {got}, expected {(_IDS.bos_token_id, _IDS.enc_token_id)}")
    return tok


def tokenizer_for(family: str, vocab_file: str | os.PathLike | None = None):
    """The tokenizer of a model family: "blip" or "albef"."""
    if family == "blip":
        return blip_tokenizer(vocab_file)
    if family == "albef":
        return albef_tokenizer(vocab_file)
    raise ValueError(f"family must be 'blip' or 'albef', got {family!r}")


def decode_ids(tokenizer, ids) -> list[str]:
    """Rows of token ids (a [N, L] tensor or a list of id lists) as N strings, special tokens
    dropped: ``batch_decode`` except that no rows give ``[]`` (transformers 5.17's
    ``batch_decode([])`` reads the empty list as one empty sequence and returns ``['']``).
    A tensor is copied to the host once here: call it on finished ids, not inside a decode loop."""
    rows = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    return tokenizer.batch_decode(rows, skip_special_tokens=True) if rows else []
