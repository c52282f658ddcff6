"""Greedy search and multinomial sampling (HF ``GenerationMixin._sample``).

Per step: fp32 logits -> :class:`~blipx.generation.processors.LogitsProcessors` (repetition
penalty, n-gram and bad-word bans, EOS ban below ``min_length``) -> argmax, or
:func:`blipx.ops.sample_tokens` (temperature -> top-k -> top-p -> draw, fused). Finished rows
get ``pad_token_id`` (the text config's [PAD]) and the output stops at the last step any row was
still running. With ``output_scores`` the processed (and, when sampling, warped) scores of every
step are kept, as HF's ``scores``.

The step is :meth:`GreedyRun.iterate` (:mod:`blipx.generation.loop`): fixed shapes, the current
length read on the device (the static KV cache's position), every result written in place, so
on CUDA it is one captured graph.
"""

from __future__ import annotations

import torch

from blipx import ops
from blipx.generation.cache import CachedDecoder
from blipx.generation.config import GenerationSettings
from blipx.generation.loop import DecodeRun, run_loop
from blipx.generation.outputs import GenerateOutput
from blipx.generation.processors import LogitsProcessors


class GreedyRun(DecodeRun):
    """The running rows of greedy search / sampling.

    seqs int64 [N, T_max] (the prompt, then the tokens; -1 = not generated yet, which the
    repetition penalty skips); unfinished bool [N]; logits [N, V] for the current position;
    steps int64 [1]: the steps HF's loop has run (the output is cut at prompt + steps);
    running bool [1]: HF's loop would run the next step (some row unfinished, room left);
    scores fp32 [T_max - P, N, V] with ``output_scores``."""

    BUFFERS = ("seqs", "unfinished", "logits", "steps", "running", "scores")

    def __init__(self, dec: CachedDecoder, s: GenerationSettings, processors: LogitsProcessors, generator,
                 seqs, unfinished, logits, steps, running, scores) -> None:
        self.dec, self.s, self.processors, self.generator = dec, s, processors, generator
        self.seqs, self.unfinished, self.logits = seqs, unfinished, logits
        self.steps, self.running, self.scores = steps, running, scores

    def iterate(self, decode_next: bool = True) -> None:
        s = self.s
        cur = self.dec.pos  # int64 [1] on the device: the current length, prompt included
        scores = self.processors(self.logits.float(), self.seqs, cur)
        if s.do_sample and self.scores is not None:
            # HF's scores are the warped logits; drawing from them with the warpers off is the
            # same law (and, on the reference ops, the same multinomial call as HF's).
            scores = ops.reference.sample_tokens_scores_ref(scores, s.temperature, s.top_k, s.top_p)
            nxt = ops.sample_tokens(scores, generator=self.generator)
        elif s.do_sample:
            nxt = ops.sample_tokens(scores, s.temperature, s.top_k, s.top_p, generator=self.generator)
        else:
            nxt = scores.argmax(dim=-1)
        if self.scores is not None:
            self.scores.index_copy_(0, cur - s.prompt_len, scores[None])
        nxt = torch.where(self.unfinished, nxt, s.pad_token_id)
        self.seqs.scatter_(1, cur.expand(nxt.shape[0], 1), nxt[:, None])  # seqs[:, cur] = nxt
        self.steps += self.running
        self.unfinished &= nxt != s.eos_token_id
        self.running &= self.unfinished.any() & (cur + 1 < s.max_length)
        if decode_next:
            self.logits.copy_(self.dec.step(nxt))

    def select(self, dec: CachedDecoder, rows: torch.Tensor) -> GreedyRun:
        """The run restricted to ``rows`` (local row indices) on the compacted decoder ``dec``."""
        assert self.scores is None  # output_scores keeps every row (compact = 0)
        return GreedyRun(dec, self.s, self.processors, self.generator, self.seqs[rows], self.unfinished[rows],
                         self.logits[rows], self.steps.clone(), self.running.clone(), None)


def greedy_or_sample(
    dec: CachedDecoder,
    prompt: torch.Tensor,
    s: GenerationSettings,
    processors: LogitsProcessors,
    generator: torch.Generator | None = None,
    *,
    check_every: int = 1,
    graphs=None,
) -> torch.Tensor | GenerateOutput:
    """prompt int64 [N, P] (N = B * num_return_sequences rows) -> sequences [N, P + steps]
    (a :class:`GenerateOutput` with ``s.return_dict``).

    Every ``check_every`` steps one host read decides whether any row still runs; there, images
    whose rows have all finished are dropped from the decoder once at most ``s.compact`` of the
    running images remain (their later tokens are padding anyway). ``graphs``: the CUDA graphs
    of :mod:`blipx.generation.graphs` bound to this call, or None (eager)."""
    n, p = prompt.shape
    g = n // dec.images
    dev = prompt.device
    out = torch.full((n, s.max_length), -1, dtype=torch.long, device=dev)
    out[:, :p] = prompt
    logits = dec.prefill(prompt)
    scores = torch.zeros(s.max_length - p, n, logits.shape[1], device=dev) if s.output_scores else None
    run = GreedyRun(dec, s, processors, generator, out.clone(), torch.ones(n, dtype=torch.bool, device=dev), logits,
                    torch.zeros(1, dtype=torch.long, device=dev), torch.ones(1, dtype=torch.bool, device=dev), scores)
    rows = None  # the rows of ``out`` the run holds, in order (None: all of them)

    def store(run: GreedyRun) -> None:
        if rows is None:
            out.copy_(run.seqs)
        else:
            out[rows] = run.seqs

    def check(run: GreedyRun) -> GreedyRun | None:
        nonlocal rows
        alive = run.unfinished.view(-1, g).any(dim=1)
        # The one host sync per check: how many images still have a running row, and whether
        # HF's loop goes on (it stops when no row runs; the output is cut there too).
        n_alive, running = torch.stack([alive.sum(), run.running.sum()]).tolist()
        if not running:
            return None
        images = run.dec.images
        if n_alive < images and n_alive <= s.compact * images:
            # A second sync, rare: at compact <= 0.5 each one at least halves the batch.
            new_dec, keep_rows = run.dec.keep_images(alive.nonzero().view(-1))
            store(run)
            rows = keep_rows if rows is None else rows[keep_rows]
            run = run.select(new_dec, keep_rows)
        return run

    run = run_loop(run, s.max_length - p, check, check_every, graphs)
    store(run)
    steps = int(run.steps)  # once, after the loop
    out = out[:, : p + steps]
    out = out.masked_fill_(out < 0, s.pad_token_id)  # rows dropped while finished: HF pads them
    if not s.return_dict:
        return out
    all_scores = None
    if run.scores is not None:  # copies: a graph session reuses its buffers on the next call
        all_scores = tuple(t.clone() for t in run.scores[:steps].unbind(0))
    return GenerateOutput(sequences=out, scores=all_scores)
