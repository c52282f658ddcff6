"""Generation settings with Hugging Face's defaults and length rules (hf-blip.md §2.3)."""

from __future__ import annotations

from dataclasses import dataclass

# GenerationConfig's global fallback: 20 new tokens when neither max_length nor max_new_tokens is given.
DEFAULT_NEW_TOKENS = 20


@dataclass(frozen=True)
class GenerationSettings:
    """Resolved settings. ``max_length`` and ``min_length`` count the prompt (bos included),
    as in HF; ``prompt_len`` is the decoder prompt length."""

    prompt_len: int
    max_length: int
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
    eos_token_id: int = 102
    pad_token_id: int = 0
    compact: float = 0.5

    @property
    def rows_per_input(self) -> int:
        """Decoder rows per image: HF expands by max(num_beams, num_return_sequences)."""
        return max(self.num_beams, self.num_return_sequences)


def resolve(
    prompt_len: int,
    max_position_embeddings: int,
    *,
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
    eos_token_id: int = 102,
    pad_token_id: int = 0,
    compact: float = 0.5,
) -> GenerationSettings:
    """HF's ``_prepare_generated_length`` plus the argument checks HF's GenerationConfig makes.

    ``compact`` (blipx's own): once the images whose captions are all finished leave at most
    this fraction of the running images, drop them from the decoder (their rows stop costing
    compute; the results are unchanged). At compact <= 0.5, shapes shrink at most log2(B)
    times; 0 never compacts.
    """
    if max_new_tokens is not None:
        max_length = max_new_tokens + prompt_len  # max_new_tokens wins over max_length, as in HF
    elif max_length is None:
        max_length = min(DEFAULT_NEW_TOKENS + prompt_len, max_position_embeddings)
    min_length = 0 if min_length is None else int(min_length)
    if min_new_tokens is not None:
        min_length = min_new_tokens + prompt_len
    if max_length <= prompt_len:
        raise ValueError(f"max_length ({max_length}) must exceed the decoder prompt length ({prompt_len})")
    if max_length > max_position_embeddings:
        raise ValueError(f"max_length ({max_length}) exceeds max_position_embeddings ({max_position_embeddings})")
    if num_beams < 1 or num_return_sequences < 1:
        raise ValueError("num_beams and num_return_sequences must be >= 1")
    if num_beams > 1 and do_sample:
        raise ValueError("beam sampling (num_beams > 1 with do_sample=True) is not supported")
    if num_beams > 1 and num_return_sequences > num_beams:
        raise ValueError(f"num_return_sequences ({num_return_sequences}) must be <= num_beams ({num_beams})")
    if num_beams == 1 and not do_sample and num_return_sequences != 1:
        raise ValueError("greedy search returns one sequence per input; use do_sample or num_beams")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    if not 0.0 <= compact <= 1.0:
        raise ValueError(f"compact must be in [0, 1], got {compact}")
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")
    return GenerationSettings(
        prompt_len=prompt_len,
        max_length=int(max_length),
        min_length=min_length,
        num_beams=int(num_beams),
        do_sample=bool(do_sample),
        temperature=float(temperature),
        top_k=0 if top_k is None else int(top_k),  # HF: top_k=None / 0 switches top-k off
        top_p=1.0 if top_p is None else float(top_p),
        repetition_penalty=float(repetition_penalty),
        length_penalty=float(length_penalty),
        num_return_sequences=int(num_return_sequences),
        early_stopping=early_stopping,
        eos_token_id=int(eos_token_id),
        pad_token_id=int(pad_token_id),
        compact=float(compact),
    )
