"""Vectorised beam search, step for step HF's ``GenerationMixin._beam_search``
(transformers ``generation/utils.py``).

State lives in fixed-shape device tensors ([B, K, T_max] running and finished sequences,
[B, K] scores). Per step: :func:`blipx.ops.beam_search_step` fuses log_softmax, repetition
penalty, the min-length EOS ban, the running-score add and the top-2K selection. With n-gram or
bad-word bans, or when the per-step scores are returned, the same step runs as torch ops:
log_softmax -> :class:`~blipx.generation.processors.LogitsProcessors` (HF's processor list on
the log-probs) -> add the running scores -> ``topk(2K)``, HF's own expressions. Candidates
that hit EOS or max_length leave the running set and, if among the top K, compete for the K
finished slots with the length-normalised score ``sum_logprobs / generated_len ** length_penalty``
(generated length excludes the prompt, counts EOS). The self-attention cache is reordered by
source beam; the image K/V is shared by the K beams and never touched.

The -1e9 arithmetic below repeats HF's expressions in the same order and dtype, so the
top-k choices (ties among -1e9 placeholders included) are the same; the length-normalising
divisions by HF's Python floats are looked up per step in fp32 tables and done as torch does
them on each device (:func:`~blipx.generation.loop.divide_like_torch`).

The step is :meth:`BeamRun.iterate` (:mod:`blipx.generation.loop`): fixed shapes, the current
length read on the device (the static KV cache's position, which the fused step op reads too),
every result written in place, so on CUDA it is one captured graph. Once HF's loop would have
stopped, an iteration leaves the finished sets as they are, so "all finished" can be read every
few steps instead of every step.
"""

from __future__ import annotations

import torch

from blipx import ops
from blipx.generation.cache import CachedDecoder
from blipx.generation.config import GenerationSettings
from blipx.generation.loop import DecodeRun, divide_like_torch, length_penalty_table, run_loop
from blipx.generation.outputs import GenerateOutput
from blipx.generation.processors import LogitsProcessors

NEG = -1.0e9


def _take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """HF's ``_gather_beams``: t [B, M, ...] indexed along dim 1 by idx [B, M']."""
    while idx.dim() < t.dim():
        idx = idx.unsqueeze(-1)
    return torch.take_along_dim(t, idx, dim=1)


def _step_unfused(
    logits: torch.Tensor, run_scores: torch.Tensor, seqs: torch.Tensor, cur, processors: LogitsProcessors
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`blipx.ops.beam_search_step` as HF's torch expressions, with every processor.
    logits [n*K, V]; run_scores [n, K]; seqs [n, K, T_max]. Returns (scores [n, 2K], tokens,
    source beams, processed log-probs [n*K, V] -- HF's per-step ``scores``)."""
    n, k, t_max = seqs.shape
    lp = processors(torch.log_softmax(logits.float(), dim=-1), seqs.view(n * k, t_max), cur)
    acc = (lp.view(n, k, -1) + run_scores[:, :, None]).view(n, -1)  # [n, K*V]
    scores, idx = torch.topk(acc, k=2 * k)
    v = lp.shape[1]
    return scores, idx % v, torch.div(idx, v, rounding_mode="floor"), lp


class BeamRun(DecodeRun):
    """The running images of beam search: n images x K beams.

    Running beams: seqs int64 [n, K, T_max], run_scores fp32 [n, K], run_bidx int32
    [n, K, T_max - P] (HF's beam_indices, with ``return_dict``). Finished sets: fin_seqs,
    fin_scores, fin_len (generated tokens; HF: beam_indices != -1), is_fin, fin_bidx.
    may_improve bool [n, 1] (HF's early-stop heuristic), alive bool [n] (the image's finished
    set may still change), running bool [1] (HF's loop would run the next step), steps int64
    [1] (steps HF has run), img int64 [n] (the images' indices in the batch), logits
    [n*K, V]; scores fp32 [T_max - P, n*K, V] with ``output_scores``. Constants: offset (row of
    each image's first beam), the top-K mask, the length-penalty tables."""

    BUFFERS = ("logits", "seqs", "run_scores", "fin_seqs", "fin_scores", "fin_len", "is_fin", "may_improve", "alive",
               "running", "steps", "img", "offset", "top_k_mask", "len_den", "len_inv", "run_bidx", "fin_bidx",
               "scores")

    def __init__(self, dec: CachedDecoder, s: GenerationSettings, processors: LogitsProcessors, **t) -> None:
        self.dec, self.s, self.processors = dec, s, processors
        self.fused = not (s.output_scores or s.has_ngram_or_bad_words)
        for name in self.BUFFERS:
            setattr(self, name, t.get(name))

    def iterate(self, decode_next: bool = True) -> None:
        s = self.s
        n, k, t_max = self.seqs.shape
        p, lp, eos, early = s.prompt_len, s.length_penalty, s.eos_token_id, s.early_stopping
        cur = self.dec.pos  # int64 [1] on the device: the current length, prompt included
        if self.fused:
            scores, tokens, src = ops.beam_search_step(
                self.logits, self.run_scores.view(-1), self.seqs.view(n * k, t_max), k, cur_len=cur,
                eos_token_id=eos, min_length=s.min_length, repetition_penalty=s.repetition_penalty,
            )
        else:
            scores, tokens, src, log_probs = _step_unfused(self.logits, self.run_scores, self.seqs, cur,
                                                           self.processors)
            if self.scores is not None:
                self.scores.index_copy_(0, cur - p, log_probs[None])
        at = cur.view(1, 1, 1).expand(n, 2 * k, 1)
        cand = _take(self.seqs, src)  # [n, 2K, T_max]
        cand.scatter_(2, at, tokens[:, :, None])  # cand[:, :, cur] = tokens
        track = self.run_bidx is not None
        if track:
            cand_bidx = _take(self.run_bidx, src)
            cand_bidx.scatter_(2, at - p, (src + self.img[:, None] * k).to(torch.int32)[:, :, None])
        last = cur + 1 >= t_max  # MaxLengthCriteria: every candidate stops
        hits = (tokens == eos) | last

        # Next running beams: the best K candidates that did not stop.
        run_cand = scores + hits.to(torch.float32) * NEG
        pick = torch.topk(run_cand, k=k).indices
        seqs = _take(cand, pick)
        run_scores = _take(run_cand, pick)
        src_beam = _take(src, pick)  # [n, K]: the beam each survivor continues

        # Finished hypotheses: stopped candidates among the top K merge with the finished set.
        gen_len = cur + 1 - p  # int64 [1]: generated tokens, EOS included
        just = hits & self.top_k_mask[None, :]
        fs = divide_like_torch(scores, self.len_den.index_select(0, gen_len), self.len_inv.index_select(0, gen_len))
        full = torch.all(self.is_fin, dim=-1, keepdim=True) & (early is True)
        fs += full.to(torch.float32) * NEG
        fs += (~self.may_improve).to(torch.float32) * NEG
        fs += (~just) * NEG
        keep = torch.topk(torch.cat((self.fin_scores, fs), dim=1), k=k).indices
        fin_seqs = _take(torch.cat((self.fin_seqs, cand), dim=1), keep)
        fin_scores = _take(torch.cat((self.fin_scores, fs), dim=1), keep)
        fin_len = _take(torch.cat((self.fin_len, gen_len.expand_as(tokens)), dim=1), keep)
        is_fin = _take(torch.cat((self.is_fin, just), dim=1), keep)

        # HF's early-stop heuristic at the next length: can the best running beam still beat the
        # worst finished one?
        if early == "never" and lp > 0.0:
            best = torch.full_like(gen_len, t_max - p)
        else:
            best = gen_len
        best_running = divide_like_torch(run_scores[:, :1], self.len_den.index_select(0, best),
                                         self.len_inv.index_select(0, best))
        worst_fin = torch.where(is_fin, torch.min(fin_scores, dim=1, keepdim=True)[0], NEG)
        may_improve = self.may_improve & torch.any(best_running > worst_fin, dim=-1, keepdim=True)
        # Done: the finished set of the image is final (nothing is merged into it any more).
        # Per image, this is HF's batch-wide rule (stop when no image may improve, or all are
        # full under early_stopping=True): an image that may no longer improve has all K slots
        # finished (an empty slot counts as -1e9, which a running beam beats unless every
        # continuation was banned), so the loop runs HF's steps and ``scores`` has HF's length.
        alive = may_improve[:, 0] & ~(torch.all(is_fin, dim=-1) & (early is True))

        # Once HF's loop has stopped (``running`` False), nothing of the result changes: the
        # iterations a coarser finished check adds are no-ops for the output.
        going = self.running
        self.fin_seqs.copy_(torch.where(going[:, None, None], fin_seqs, self.fin_seqs))
        self.fin_scores.copy_(torch.where(going[:, None], fin_scores, self.fin_scores))
        self.fin_len.copy_(torch.where(going[:, None], fin_len, self.fin_len))
        self.is_fin.copy_(torch.where(going[:, None], is_fin, self.is_fin))
        if track:
            fin_bidx = _take(torch.cat((self.fin_bidx, cand_bidx), dim=1), keep)
            self.fin_bidx.copy_(torch.where(going[:, None, None], fin_bidx, self.fin_bidx))
            self.run_bidx.copy_(_take(cand_bidx, pick))
        self.seqs.copy_(seqs)
        self.run_scores.copy_(run_scores)
        self.may_improve.copy_(may_improve)
        self.alive.copy_(alive)
        self.steps += going
        self.running &= alive.any() & ~torch.all(hits) & ~last
        if decode_next:
            self.dec.reorder_((src_beam + self.offset).view(-1))
            self.logits.copy_(self.dec.step(seqs.gather(2, at[:, :k]).view(-1)))  # the tokens just placed

    def select(self, dec: CachedDecoder, live: torch.Tensor) -> BeamRun:
        """The run restricted to the images ``live`` (local indices) on the compacted ``dec``."""
        assert self.scores is None  # output_scores keeps every image (compact = 0)
        n, k, _ = self.seqs.shape
        t = {name: getattr(self, name) for name in self.BUFFERS}
        for name in ("seqs", "run_scores", "fin_seqs", "fin_scores", "fin_len", "is_fin", "may_improve", "alive", "img",
                     "run_bidx", "fin_bidx"):
            if t[name] is not None:
                t[name] = t[name].index_select(0, live)
        t["logits"] = self.logits.view(n, k, -1).index_select(0, live).view(live.numel() * k, -1)
        t["offset"] = torch.arange(live.numel(), device=live.device)[:, None] * k
        t["running"], t["steps"] = self.running.clone(), self.steps.clone()
        return BeamRun(dec, self.s, self.processors, **t)


def beam_search(
    dec: CachedDecoder,
    prompt: torch.Tensor,
    s: GenerationSettings,
    processors: LogitsProcessors,
    *,
    check_every: int = 1,
    graphs=None,
) -> torch.Tensor | GenerateOutput:
    """prompt int64 [B, P] -> [B * num_return_sequences, P + longest returned hypothesis],
    finished hypotheses padded with EOS (HF fills with ``pad_token_id or eos``; pad 0 is falsy);
    a :class:`GenerateOutput` with ``s.return_dict`` (plus ``sequences_scores``, ``beam_indices``
    and, with ``s.output_scores``, the per-step ``scores``).

    An image is done when its finished set can no longer change (HF's early-stop heuristic, or
    K finished hypotheses under ``early_stopping=True``). Every ``check_every`` steps one host
    read decides whether HF's loop goes on; there, done images leave the decoder once at most
    ``s.compact`` of the running images remain. ``graphs``: the CUDA graphs of
    :mod:`blipx.generation.graphs` bound to this call, or None (eager)."""
    b, p = prompt.shape
    k, t_max, dev = s.num_beams, s.max_length, prompt.device
    fill = s.pad_token_id or s.eos_token_id
    seqs = torch.full((b, k, t_max), fill, dtype=torch.long, device=dev)
    seqs[:, :, :p] = prompt[:, None]
    run_scores = torch.zeros(b, k, device=dev)
    run_scores[:, 1:] = NEG  # only beam 0 expands at the first step (all beams are equal)
    track = s.return_dict
    # HF's beam_indices: the flat row (image * K + beam) each generated token came from, -1 =
    # not generated. Kept for the returned dict only.
    run_bidx = torch.full((b, k, t_max - p), -1, dtype=torch.int32, device=dev) if track else None
    len_den, len_inv = length_penalty_table(t_max - p, s.length_penalty, dev)
    # Prompt ids are repeated per beam (ids only, a few ints); the image K/V is not.
    logits = dec.prefill(prompt.repeat_interleave(k, dim=0))
    run = BeamRun(
        dec, s, processors, logits=logits, seqs=seqs, run_scores=run_scores, fin_seqs=seqs.clone(),
        fin_scores=torch.full((b, k), NEG, device=dev), fin_len=torch.zeros(b, k, dtype=torch.long, device=dev),
        is_fin=torch.zeros(b, k, dtype=torch.bool, device=dev), may_improve=torch.ones(b, 1, dtype=torch.bool, device=dev),
        alive=torch.ones(b, dtype=torch.bool, device=dev), running=torch.ones(1, dtype=torch.bool, device=dev),
        steps=torch.zeros(1, dtype=torch.long, device=dev), img=torch.arange(b, device=dev),
        offset=torch.arange(b, device=dev)[:, None] * k,
        top_k_mask=torch.cat([torch.ones(k, dtype=torch.bool), torch.zeros(k, dtype=torch.bool)]).to(dev),
        len_den=len_den, len_inv=len_inv, run_bidx=run_bidx, fin_bidx=None if run_bidx is None else run_bidx.clone(),
        scores=torch.zeros(t_max - p, b * k, logits.shape[1], device=dev) if s.output_scores else None,
    )
    # Results of every image; the run holds the images in ``run.img`` only.
    out = dict(seqs=run.fin_seqs.clone(), len=run.fin_len.clone(), scores=run.fin_scores.clone(),
               bidx=None if run.fin_bidx is None else run.fin_bidx.clone())

    def store_results(run: BeamRun) -> None:
        """Copy the finished sets of the running images into ``out`` (before a compaction and at
        the end)."""
        out["seqs"][run.img], out["len"][run.img], out["scores"][run.img] = run.fin_seqs, run.fin_len, run.fin_scores
        if track:
            out["bidx"][run.img] = run.fin_bidx

    def check(run: BeamRun) -> BeamRun | None:
        # The one host sync per check: how many images can still change their result, and
        # whether HF's loop goes on.
        n_alive, running = torch.stack([run.alive.sum(), run.running.sum()]).tolist()
        if not running:
            return None
        n = run.seqs.shape[0]
        if n_alive < n and n_alive <= s.compact * n:
            store_results(run)
            # A second sync, rare: at compact <= 0.5 each one at least halves the batch.
            live = run.alive.nonzero().view(-1)
            new_dec, _ = run.dec.keep_images(live)
            run = run.select(new_dec, live)
        return run

    run = run_loop(run, t_max - p, check, check_every, graphs)
    store_results(run)
    nrs = s.num_return_sequences
    gen_len = int(out["len"][:, :nrs].max())  # once, after the loop
    sequences = out["seqs"][:, :nrs].reshape(b * nrs, t_max)[:, : p + gen_len]
    if not s.return_dict:
        return sequences
    all_scores = None
    if run.scores is not None:  # copies: a graph session reuses its buffers on the next call
        steps = int(run.steps)
        all_scores = tuple(t.clone() for t in run.scores[:steps].unbind(0))
    return GenerateOutput(
        sequences=sequences,
        scores=all_scores,
        sequences_scores=out["scores"][:, :nrs].reshape(b * nrs),
        beam_indices=out["bidx"][:, :nrs].reshape(b * nrs, -1)[:, :gen_len],
    )
