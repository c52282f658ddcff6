"""Generation settings with Hugging Face's defaults and length rules (transformers
``GenerationConfig`` and ``generation/utils.py``).

:func:`resolve` is the one place where every decoding setting is checked: a value that would
crash deep inside the loop, or silently mean something else (``repetition_penalty=nan`` turns
every score into NaN; ``min_length > max_length`` was ignored), is refused up front with a
message naming the setting.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

# GenerationConfig's global fallback: 20 new tokens when neither max_length nor max_new_tokens is given.
DEFAULT_NEW_TOKENS = 20


@dataclass(frozen=True)
class GenerationSettings:
    """Resolved settings. ``max_length`` and ``min_length`` count the prompt (bos included),
    as in HF; ``prompt_len`` is the decoder prompt length. ``eos_token_id`` / ``pad_token_id``
    come from the decoder's text config ([SEP] / [PAD]; see :func:`blipx.generation.generate`).
    ``bad_words_ids``: the token sequences never to generate, EOS-only entries dropped (HF)."""

    prompt_len: int
    max_length: int
    eos_token_id: int
    pad_token_id: int
    min_length: int = 0
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    num_return_sequences: int = 1
    early_stopping: bool | str = False
    no_repeat_ngram_size: int = 0
    bad_words_ids: tuple[tuple[int, ...], ...] = ()
    return_dict: bool = False
    output_scores: bool = False
    compact: float = 0.5
    cuda_graph: bool | None = None
    check_every: int | None = None

    @property
    def rows_per_input(self) -> int:
        """Decoder rows per image: HF expands by max(num_beams, num_return_sequences)."""
        return max(self.num_beams, self.num_return_sequences)

    @property
    def has_ngram_or_bad_words(self) -> bool:
        """Processors beyond the repetition penalty and the min-length ban (the fused beam step
        has only those two)."""
        return self.no_repeat_ngram_size > 0 or bool(self.bad_words_ids)


def _int(name: str, value, minimum: int) -> int:
    """``value`` as an int >= minimum (bools and floats refused: ``top_k=0.5`` is a typo)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v}")
    return v


def _float(name: str, value, *, low: float | None = None, high: float | None = None, open_low: bool = False) -> float:
    """``value`` as a finite float in [low, high] ((low, high] with ``open_low``); NaN and inf
    fail every comparison HF makes, so they are refused here by name."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    ok = math.isfinite(v) and (low is None or (v > low if open_low else v >= low)) and (high is None or v <= high)
    if not ok:
        lo = "" if low is None else (f"> {low}" if open_low else f">= {low}")
        hi = "" if high is None else f"<= {high}"
        rule = " and ".join(r for r in (lo, hi) if r) or "finite"
        raise ValueError(f"{name} must be finite and {rule}, got {value!r}")
    return v


def _bad_words(bad_words_ids, eos_token_id: int, vocab_size: int | None) -> tuple[tuple[int, ...], ...]:
    """HF's NoBadWordsLogitsProcessor checks: a non-empty list of non-empty lists of token ids
    in [0, vocab_size); the sequence [eos] alone is dropped (HF never bans EOS this way)."""
    if bad_words_ids is None:
        return ()
    if not isinstance(bad_words_ids, (list, tuple)) or not bad_words_ids:
        raise ValueError(f"bad_words_ids must be a non-empty list of lists of token ids, got {bad_words_ids!r}")
    out = []
    for seq in bad_words_ids:
        if not isinstance(seq, (list, tuple)) or not seq:
            raise ValueError(f"bad_words_ids must be a list of non-empty lists of token ids, got entry {seq!r}")
        ids = tuple(_int("bad_words_ids token", t, 0) for t in seq)
        if vocab_size is not None and max(ids) >= vocab_size:
            raise ValueError(f"bad_words_ids: token {max(ids)} is outside the vocabulary (size {vocab_size})")
        if ids != (eos_token_id,):
            out.append(ids)
    return tuple(out)


def resolve(
    prompt_len: int,
    max_position_embeddings: int,
    *,
    eos_token_id: int,
    pad_token_id: int,
    vocab_size: int | None = None,
    max_length: int | None = None,
    max_new_tokens: int | None = None,
    min_length: int | None = 0,
    min_new_tokens: int | None = None,
    num_beams: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = 50,
    top_p: float | None = 1.0,
    repetition_penalty: float = 1.0,
    length_penalty: float = 1.0,
    num_return_sequences: int = 1,
    early_stopping: bool | str = False,
    no_repeat_ngram_size: int | None = 0,
    bad_words_ids: list[list[int]] | None = None,
    return_dict: bool = False,
    output_scores: bool = False,
    compact: float = 0.5,
    cuda_graph: bool | None = None,
    check_every: int | None = None,
) -> GenerationSettings:
    """HF's ``_prepare_generated_length`` plus the argument checks HF's GenerationConfig and
    logits processors make, and a few HF lacks (NaN / inf are refused everywhere,
    ``min_length`` may not exceed ``max_length``).

    ``temperature`` / ``top_k`` / ``top_p`` are checked even when they are unused (greedy or beam
    search), as HF's warpers would check them: a bad value is a mistake either way.
    ``output_scores`` needs ``return_dict`` (HF ignores it silently otherwise) and keeps every
    row in the decoder to the end (``compact`` = 0): the scores of finished rows are part of
    HF's output.

    ``compact`` (blipx's own): once the images whose captions are all finished leave at most
    this fraction of the running images, drop them from the decoder (their rows stop costing
    compute; the results are unchanged). At compact <= 0.5, shapes shrink at most log2(B)
    times; 0 never compacts.

    ``cuda_graph`` (blipx's own): capture the decode iteration in a CUDA graph and replay it
    (None: on for CUDA, off on the CPU, decided by :func:`blipx.generation.generate`).
    ``check_every`` (blipx's own): read "all finished" (one host sync) every this many steps
    (None: 1 on the CPU, 4 on CUDA). The ids never depend on it: iterations after every row
    finished change nothing, and compaction happens at these checks.
    """
    if max_new_tokens is not None:
        # max_new_tokens wins over max_length, as in HF
        max_length = _int("max_new_tokens", max_new_tokens, 1) + prompt_len
    elif max_length is None:
        max_length = min(DEFAULT_NEW_TOKENS + prompt_len, max_position_embeddings)
    else:
        max_length = _int("max_length", max_length, 1)
    min_length = 0 if min_length is None else _int("min_length", min_length, 0)
    min_desc = f"min_length ({min_length})"
    if min_new_tokens is not None:
        min_length = _int("min_new_tokens", min_new_tokens, 0) + prompt_len
        min_desc = f"min_new_tokens ({min_new_tokens}) + prompt length ({prompt_len}) = {min_length}"
    max_desc = f"max_length ({max_length})"
    if max_new_tokens is not None:
        max_desc = f"max_new_tokens ({max_new_tokens}) + prompt length ({prompt_len}) = {max_length}"
    if max_length <= prompt_len:
        raise ValueError(f"max_length ({max_length}) must exceed the decoder prompt length ({prompt_len})")
    if max_length > max_position_embeddings:
        raise ValueError(f"max_length ({max_length}) exceeds max_position_embeddings ({max_position_embeddings})")
    if min_length > max_length:
        raise ValueError(f"{min_desc} must be <= {max_desc}")
    num_beams = _int("num_beams", num_beams, 1)
    num_return_sequences = _int("num_return_sequences", num_return_sequences, 1)
    if not isinstance(do_sample, bool):
        raise ValueError(f"do_sample must be True or False, got {do_sample!r}")
    if num_beams > 1 and do_sample:
        raise ValueError("beam sampling (num_beams > 1 with do_sample=True) is not supported")
    if num_beams > 1 and num_return_sequences > num_beams:
        raise ValueError(f"num_return_sequences ({num_return_sequences}) must be <= num_beams ({num_beams})")
    if num_beams == 1 and not do_sample and num_return_sequences != 1:
        raise ValueError("greedy search returns one sequence per input; use do_sample or num_beams")
    # temperature 0 is accepted outside sampling (a common spelling of "greedy"); sampling needs > 0.
    temperature = _float("temperature", temperature, low=0.0, open_low=do_sample)
    top_k = 0 if top_k is None else _int("top_k", top_k, 0)  # HF: top_k=None / 0 switches top-k off
    top_p = 1.0 if top_p is None else _float("top_p", top_p, low=0.0, high=1.0)
    repetition_penalty = _float("repetition_penalty", repetition_penalty, low=0.0, open_low=True)
    length_penalty = _float("length_penalty", length_penalty)
    if not (isinstance(early_stopping, bool) or early_stopping == "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    no_repeat_ngram_size = 0 if no_repeat_ngram_size is None else _int("no_repeat_ngram_size", no_repeat_ngram_size, 0)
    if not isinstance(return_dict, bool) or not isinstance(output_scores, bool):
        raise ValueError(f"return_dict and output_scores must be True or False, got {return_dict!r}, {output_scores!r}")
    if output_scores and not return_dict:
        raise ValueError("output_scores=True needs return_dict=True (the scores come back in the returned dict)")
    compact = _float("compact", compact, low=0.0, high=1.0)
    if cuda_graph is not None and not isinstance(cuda_graph, bool):
        raise ValueError(f"cuda_graph must be True, False or None, got {cuda_graph!r}")
    check_every = None if check_every is None else _int("check_every", check_every, 1)
    return GenerationSettings(
        prompt_len=prompt_len,
        max_length=int(max_length),
        min_length=min_length,
        num_beams=num_beams,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        length_penalty=length_penalty,
        num_return_sequences=num_return_sequences,
        early_stopping=early_stopping,
        no_repeat_ngram_size=no_repeat_ngram_size,
        bad_words_ids=_bad_words(bad_words_ids, int(eos_token_id), vocab_size),
        return_dict=return_dict,
        output_scores=output_scores,
        eos_token_id=int(eos_token_id),
        pad_token_id=int(pad_token_id),
        compact=0.0 if output_scores else compact,
        cuda_graph=cuda_graph,
        check_every=check_every,
    )
