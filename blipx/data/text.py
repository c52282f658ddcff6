"""Caption cleaning exactly as the official repositories do it.

BLIP (``salesforce/BLIP data/utils.py``) and ALBEF (``salesforce/ALBEF dataset/utils.py``) ship
two different ``pre_caption`` functions; both are kept so each model family sees the text
distribution its checkpoints were trained on.
"""

from __future__ import annotations

import re

# BLIP replaces these characters with a space (commas, apostrophes and '?' survive).
_BLIP_PUNCT = re.compile(r"([.!\"()*#:;~])")
# ALBEF deletes these characters (no space), then maps '-' and '/' to spaces.
_ALBEF_PUNCT = re.compile(r"([,.'!?\"()*#:;~])")
_MULTI_SPACE = re.compile(r"\s{2,}")


def _finish(caption: str, max_words: int | None) -> str:
    caption = _MULTI_SPACE.sub(" ", caption)
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    if max_words is not None and len(words) > max_words:
        caption = " ".join(words[:max_words])
    return caption


def pre_caption(caption: str, max_words: int | None = 50, style: str = "blip") -> str:
    """Lower-case, strip punctuation, squeeze whitespace and keep at most ``max_words`` words.

    ``style="blip"`` (default, official default ``max_words=50``; pretraining uses 30) or
    ``"albef"``. Like the originals, a single trailing/leading newline or tab that survives the
    whitespace squeeze is kept as is (``rstrip('\\n')`` runs before the space strip).
    """
    if style == "blip":
        caption = _BLIP_PUNCT.sub(" ", caption.lower())
    elif style == "albef":
        caption = _ALBEF_PUNCT.sub("", caption.lower())
        caption = caption.replace("-", " ").replace("/", " ").replace("<person>", "person")
    else:
        raise ValueError(f"style must be 'blip' or 'albef', got {style!r}")
    return _finish(caption, max_words)
