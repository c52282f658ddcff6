"""Logits processors of greedy search and sampling (beam search fuses them in
:func:`blipx.ops.beam_search_step`). Static shapes: they read the whole sequence buffer,
whose unfilled slots hold -1, instead of slicing it to the current length."""

from __future__ import annotations

import torch


def apply_repetition_penalty(scores: torch.Tensor, sequences: torch.Tensor, penalty: float) -> torch.Tensor:
    """HF's RepetitionPenaltyLogitsProcessor: every distinct token of ``sequences`` (prompt and
    bos included; ids outside [0, V) ignored) has its score multiplied by ``penalty`` if negative,
    divided by it otherwise. scores fp32 [N, V]; sequences int64 [N, T]."""
    if penalty == 1.0:
        return scores
    n, v = scores.shape
    ok = (sequences >= 0) & (sequences < v)
    # Marking a [N, V+1] table with out-of-range ids sent to column V applies the penalty once
    # per distinct token, as HF's gather/scatter does, without a data-dependent shape.
    seen = torch.zeros(n, v + 1, dtype=torch.bool, device=scores.device)
    seen.scatter_(1, torch.where(ok, sequences, v), True)
    penalized = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen[:, :v], penalized, scores)


def ban_token_(scores: torch.Tensor, token_id: int) -> torch.Tensor:
    """MinLengthLogitsProcessor's action: the token gets -inf (in place)."""
    scores[:, token_id] = float("-inf")
    return scores
