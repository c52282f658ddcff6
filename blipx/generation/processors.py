"""HF's logits processors as tensor ops (no host sync, static shapes).

:class:`LogitsProcessors` applies, in HF's order, RepetitionPenalty -> NoRepeatNGram ->
NoBadWords -> MinLength: to the fp32 logits in greedy search and sampling, to the log-probs in
beam search (as HF). The sampling warpers (temperature, top-k, top-p) come after, fused in
:func:`blipx.ops.sample_tokens` (or as scores in :func:`blipx.ops.reference.sample_tokens_scores_ref`).

Every processor reads the whole preallocated sequence buffer [N, T_max] and the current length
``cur`` (an int64 [1] tensor on the device -- the decode loop passes the static KV cache's
position -- or a Python int): the slots of the last tokens are gathered at ``cur - k +
arange(k)``, windows are masked against ``cur`` and the min-length ban is a ``where`` on it, so
nothing is sliced to a data-dependent length and no step reads a host value.
"""

from __future__ import annotations

import torch

from blipx.generation.config import GenerationSettings


def apply_repetition_penalty(scores: torch.Tensor, sequences: torch.Tensor, penalty: float) -> torch.Tensor:
    """HF's RepetitionPenaltyLogitsProcessor: every distinct token of ``sequences`` (prompt and
    bos included; ids outside [0, V) ignored) has its score multiplied by ``penalty`` if negative,
    divided by it otherwise. scores fp32 [N, V]; sequences int64 [N, T]."""
    if penalty == 1.0:
        return scores
    seen = _token_table(sequences, torch.ones_like(sequences, dtype=torch.bool), scores.shape[1])
    penalized = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalized, scores)


def ban_token_(scores: torch.Tensor, token_id: int, when: torch.Tensor | bool = True) -> torch.Tensor:
    """MinLengthLogitsProcessor's action: the token gets -inf (in place) -- where ``when`` holds
    (a bool, or a bool tensor on the device, e.g. ``cur < min_length``: no host read)."""
    if isinstance(when, torch.Tensor):
        scores[:, token_id] = torch.where(when, float("-inf"), scores[:, token_id])
    elif when:
        scores[:, token_id] = float("-inf")
    return scores


def _token_table(tokens: torch.Tensor, mark: torch.Tensor, vocab: int) -> torch.Tensor:
    """bool [N, V]: True at every ``tokens[n, j]`` where ``mark[n, j]`` (tokens / mark [N, M]).

    Unmarked entries and ids outside [0, V) go to a spare column V, dropped at the end: one
    scatter with a fixed shape, whatever is marked (HF's NoRepeatNGram does the same)."""
    ok = mark & (tokens >= 0) & (tokens < vocab)
    table = torch.zeros(tokens.shape[0], vocab + 1, dtype=torch.bool, device=tokens.device)
    table.scatter_(1, torch.where(ok, tokens, vocab), True)
    return table[:, :vocab]


def _last_tokens(sequences: torch.Tensor, cur, k: int):
    """The last ``k`` tokens before position ``cur``: ids [N, k] and whether they exist (``cur >=
    k``: a bool, or a bool tensor for a device-side ``cur``; where False the ids are garbage)."""
    pos = torch.arange(k, device=sequences.device) + (cur - k)
    return sequences.index_select(1, pos.clamp(min=0)), cur >= k


def ban_repeated_ngrams(scores: torch.Tensor, sequences: torch.Tensor, cur, n: int) -> torch.Tensor:
    """HF's NoRepeatNGramLogitsProcessor: ban every token that would complete an n-gram already
    present in ``sequences[:, :cur]`` (prompt included). Vectorised over the buffer: the n-token
    windows starting at j <= cur - n whose first n-1 tokens equal the last n-1 generated tokens
    ban their last token. scores [N, V]; sequences int64 [N, T_max]."""
    windows = sequences.unfold(1, n, 1)  # [N, T_max - n + 1, n], a view
    complete = torch.arange(windows.shape[1], device=sequences.device) <= cur - n  # inside [:cur]
    # The prefix exists whenever a complete window does; for n = 1 it is empty and every window
    # matches (all() of nothing), so every token seen so far is banned, as in HF.
    prefix, _ = _last_tokens(sequences, cur, n - 1)
    match = (windows[:, :, :-1] == prefix[:, None, :]).all(dim=-1) & complete[None, :]
    return scores.masked_fill(_token_table(windows[:, :, -1], match, scores.shape[1]), float("-inf"))


class BadWords:
    """HF's NoBadWordsLogitsProcessor (a -inf SequenceBias): single tokens are always banned; the
    last token of a longer sequence is banned when the tokens before ``cur`` end with the rest.
    The sequences are grouped by length once (a few small device tensors), so a step runs one
    comparison per distinct length."""

    def __init__(self, bad_words_ids: tuple[tuple[int, ...], ...], vocab: int, device: torch.device) -> None:
        self.always = torch.zeros(vocab, dtype=torch.bool, device=device)
        by_len: dict[int, list[tuple[int, ...]]] = {}
        for seq in bad_words_ids:
            if len(seq) == 1:
                self.always[seq[0]] = True
            else:
                by_len.setdefault(len(seq) - 1, []).append(seq)
        # (prefix length L, prefixes [G, L], last tokens [G])
        self.groups = [
            (n, torch.tensor([q[:-1] for q in qs], device=device), torch.tensor([q[-1] for q in qs], device=device))
            for n, qs in by_len.items()
        ]

    def __call__(self, scores: torch.Tensor, sequences: torch.Tensor, cur) -> torch.Tensor:
        banned = self.always[None, :].expand_as(scores)
        for n, prefixes, last in self.groups:
            tail, exists = _last_tokens(sequences, cur, n)
            match = (tail[:, None, :] == prefixes[None]).all(dim=-1) & exists  # [N, G]
            banned = banned | _token_table(last[None, :].expand_as(match), match, scores.shape[1])
        return scores.masked_fill(banned, float("-inf"))


class LogitsProcessors:
    """HF's logits-processor list for ``s``, built once per ``generate`` call.

    ``__call__(scores, sequences, cur)``: scores fp32 [N, V] (logits, or log-probs in beam
    search), sequences int64 [N, T_max] of which the first ``cur`` columns are the tokens so far
    (later slots are ignored whatever they hold). Returns the processed scores (may be ``scores``
    itself, modified in place by the min-length ban)."""

    def __init__(self, s: GenerationSettings, vocab: int, device: torch.device) -> None:
        self.s = s
        self.bad_words = BadWords(s.bad_words_ids, vocab, device) if s.bad_words_ids else None

    def __call__(self, scores: torch.Tensor, sequences: torch.Tensor, cur: torch.Tensor | int) -> torch.Tensor:
        s = self.s
        # Slots at and after cur (-1 in greedy's buffer, fill or stale ids in beam search's) must
        # not count as history: -1 is outside the vocabulary, so every processor ignores them.
        filled = torch.arange(sequences.shape[1], device=sequences.device) < cur
        sequences = torch.where(filled[None, :], sequences, -1)
        scores = apply_repetition_penalty(scores, sequences, s.repetition_penalty)
        if s.no_repeat_ngram_size > 0:
            scores = ban_repeated_ngrams(scores, sequences, cur, s.no_repeat_ngram_size)
        if self.bad_words is not None:
            scores = self.bad_words(scores, sequences, cur)
        if s.min_length > 0:  # cur may be a device tensor: compared on the device
            ban_token_(scores, s.eos_token_id, cur < s.min_length)
        return scores
