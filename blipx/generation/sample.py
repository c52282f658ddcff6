"""Greedy search and multinomial sampling (HF ``GenerationMixin._sample``).

Per step: fp32 logits -> repetition penalty -> EOS ban below ``min_length`` -> argmax, or
:func:`blipx.ops.sample_tokens` (temperature -> top-k -> top-p -> draw, fused). Finished rows
get ``pad_token_id`` (0) and the output stops at the last step any row was still running.
"""

from __future__ import annotations

import torch

from blipx import ops
from blipx.generation.cache import CachedDecoder
from blipx.generation.config import GenerationSettings
from blipx.generation.processors import apply_repetition_penalty, ban_token_


def greedy_or_sample(
    dec: CachedDecoder,
    prompt: torch.Tensor,
    s: GenerationSettings,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """prompt int64 [N, P] (N = B * num_return_sequences rows) -> sequences [N, P + steps]."""
    n, p = prompt.shape
    seqs = torch.full((n, s.max_length), -1, dtype=torch.long, device=prompt.device)
    seqs[:, :p] = prompt
    unfinished = torch.ones(n, dtype=torch.bool, device=prompt.device)
    pad = torch.tensor(s.pad_token_id, device=prompt.device)
    logits = dec.prefill(prompt)
    cur = p
    while True:
        scores = apply_repetition_penalty(logits.float(), seqs, s.repetition_penalty)
        if cur < s.min_length:  # host-side counter, no sync
            ban_token_(scores, s.eos_token_id)
        if s.do_sample:
            nxt = ops.sample_tokens(scores, s.temperature, s.top_k, s.top_p, generator=generator)
        else:
            nxt = scores.argmax(dim=-1)
        nxt = torch.where(unfinished, nxt, pad)
        seqs[:, cur] = nxt
        cur += 1
        unfinished &= nxt != s.eos_token_id
        if cur >= s.max_length:
            break
        # The one host sync of the loop: stop early once every row has produced EOS (HF cuts
        # the output here too). Everything else stays on the device.
        if not bool(unfinished.any()):
            break
        logits = dec.step(nxt)
    return seqs[:, :cur]
