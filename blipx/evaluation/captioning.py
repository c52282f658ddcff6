"""Captioning metrics BLEU-1..4 and CIDEr(-D) with pycocoevalcap's scorers.

The official evaluation (``salesforce/BLIP data/utils.py`` ``coco_caption_eval``) runs
``pycocoevalcap.COCOEvalCap``, which first tokenizes with Stanford CoreNLP's PTBTokenizer (a
Java subprocess). Java is not assumed here, so :func:`ptb_tokenize` re-implements what that step
does to caption text: lower-case; split off punctuation, the clitics ``'s 're 've 'll 'd 'm``
and ``n't``; keep hyphenated words and decimal numbers as one token; then drop the tokens that
pycocoevalcap removes (its ``PUNCTUATIONS`` list, plus brackets and double quotes, which
CoreNLP first rewrites into bracket and quote tokens of that list). Plain
English captions tokenize identically; exotic Unicode or URLs may differ from CoreNLP.
The BLEU and CIDEr scorers themselves are pycocoevalcap's (pure Python), unmodified.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

# pycocoevalcap's PTBTokenizer.PUNCTUATIONS (its module is not imported so that tokenizing
# does not need the package), plus what CoreNLP rewrites into them: brackets and '"'.
_PUNCTUATIONS = (
    "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"
)  # fmt: skip
_DROP = set(_PUNCTUATIONS) | {"(", ")", "[", "]", "{", "}", '"'}
_NT = re.compile(r"(\w)n't\b")
_CLITIC = re.compile(r"(\w)'(s|re|ve|ll|d|m)\b")
_TOKEN = re.compile(r"n't|'(?:s|re|ve|ll|d|m)\b|\w+(?:[-.]\w+)*|\S")


def ptb_tokenize(caption: str) -> str:
    """PTB-style tokenization without Java (see the module docstring); returns space-joined tokens."""
    text = _CLITIC.sub(r"\1 '\2", _NT.sub(r"\1 n't", caption.lower().replace("\n", " ")))
    return " ".join(t for t in _TOKEN.findall(text) if t not in _DROP)


def _as_dict(results: Mapping[Any, str] | Sequence[Mapping[str, Any]]) -> dict[Any, str]:
    if isinstance(results, Mapping):
        return dict(results)
    out: dict[Any, str] = {}
    for r in results:  # official result json: [{"image_id", "caption"}]; first one per image wins
        out.setdefault(r["image_id"], r["caption"])
    return out


def caption_metrics(
    predictions: Mapping[Any, str] | Sequence[Mapping[str, Any]], references: Mapping[Any, Sequence[str]]
) -> dict[str, float]:
    """``{"Bleu_1".."Bleu_4", "CIDEr"}`` (COCOEvalCap's names and 0-1 / 0-10 scales).

    ``predictions``: {image_id: caption} or the official result list [{"image_id", "caption"}];
    ``references``: {image_id: [captions]}. Every predicted image needs references.
    CIDEr's document frequencies come from the references of the evaluated images (as in
    COCOEvalCap), so it needs several images to be meaningful.
    """
    try:  # imported on use: the scorers are only needed here
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
    except ImportError as e:
        raise ImportError("captioning metrics need 'pycocoevalcap': pip install pycocoevalcap") from e
    preds = _as_dict(predictions)
    missing = [k for k in preds if k not in references]
    if missing:
        raise KeyError(f"no references for image ids {missing[:5]}")
    res = {k: [ptb_tokenize(v)] for k, v in preds.items()}
    gts = {k: [ptb_tokenize(c) for c in references[k]] for k in preds}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {**{f"Bleu_{i + 1}": float(b) for i, b in enumerate(bleu)}, "CIDEr": float(cider)}
