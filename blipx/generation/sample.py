"""Greedy search and multinomial sampling (HF ``GenerationMixin._sample``).

Per step: fp32 logits -> :class:`~blipx.generation.processors.LogitsProcessors` (repetition
penalty, n-gram and bad-word bans, EOS ban below ``min_length``) -> argmax, or
:func:`blipx.ops.sample_tokens` (temperature -> top-k -> top-p -> draw, fused). Finished rows
get ``pad_token_id`` (the text config's [PAD]) and the output stops at the last step any row was
still running. With ``output_scores`` the processed (and, when sampling, warped) scores of every
step are kept, as HF's ``scores``.
"""

from __future__ import annotations

import torch

from blipx import ops
from blipx.generation.cache import CachedDecoder
from blipx.generation.config import GenerationSettings
from blipx.generation.outputs import GenerateOutput
from blipx.generation.processors import LogitsProcessors


def greedy_or_sample(
    dec: CachedDecoder,
    prompt: torch.Tensor,
    s: GenerationSettings,
    processors: LogitsProcessors,
    generator: torch.Generator | None = None,
) -> torch.Tensor | GenerateOutput:
    """prompt int64 [N, P] (N = B * num_return_sequences rows) -> sequences [N, P + steps]
    (a :class:`GenerateOutput` with ``s.return_dict``).

    Images whose rows have all finished are dropped from the decoder once at most
    ``s.compact`` of the running images remain (their later tokens are padding anyway)."""
    n, p = prompt.shape
    g = n // dec.images
    # -1 = not generated yet (the repetition penalty skips it); dropped rows get pad at the end.
    out = torch.full((n, s.max_length), -1, dtype=torch.long, device=prompt.device)
    out[:, :p] = prompt
    seqs, rows = out, None  # the running rows (a gathered copy once compacted) and their indices in out
    unfinished = torch.ones(n, dtype=torch.bool, device=prompt.device)
    pad = torch.tensor(s.pad_token_id, device=prompt.device)
    all_scores = [] if s.output_scores else None
    logits = dec.prefill(prompt)
    cur = p
    while True:
        scores = processors(logits.float(), seqs, cur)
        if s.do_sample and all_scores is not None:
            # HF's scores are the warped logits; drawing from them with the warpers off is the
            # same law (and, on the reference ops, the same multinomial call as HF's).
            scores = ops.reference.sample_tokens_scores_ref(scores, s.temperature, s.top_k, s.top_p)
            nxt = ops.sample_tokens(scores, generator=generator)
        elif s.do_sample:
            nxt = ops.sample_tokens(scores, s.temperature, s.top_k, s.top_p, generator=generator)
        else:
            nxt = scores.argmax(dim=-1)
        if all_scores is not None:
            # A copy: the processors may return the decoder's logits tensor itself.
            all_scores.append(scores.clone())
        nxt = torch.where(unfinished, nxt, pad)
        seqs[:, cur] = nxt
        cur += 1
        unfinished &= nxt != s.eos_token_id
        if cur >= s.max_length:
            break
        # The one host sync of the loop: how many images still have a running row (HF stops
        # when none has; the output is cut there too). Everything else stays on the device.
        alive = unfinished.view(-1, g).any(dim=1)
        n_alive = int(alive.sum())
        if n_alive == 0:
            break
        if n_alive < dec.images and n_alive <= s.compact * dec.images:
            # A second sync, rare: at compact <= 0.5 each one at least halves the batch.
            keep_rows = dec.keep_images_(alive.nonzero().view(-1))
            if rows is not None:
                out[rows] = seqs
            rows = keep_rows if rows is None else rows[keep_rows]
            seqs, unfinished, nxt = out[rows], unfinished[keep_rows], nxt[keep_rows]
        logits = dec.step(nxt)
    if rows is not None:
        out[rows] = seqs
    out = out[:, :cur]
    out = out.masked_fill_(out < 0, s.pad_token_id)  # rows dropped while finished: HF pads them
    if not s.return_dict:
        return out
    return GenerateOutput(sequences=out, scores=None if all_scores is None else tuple(all_scores))
