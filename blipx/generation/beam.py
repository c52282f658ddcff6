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
top-k choices (ties among -1e9 placeholders included) are the same.
"""

from __future__ import annotations

import torch

from blipx import ops
from blipx.generation.cache import CachedDecoder
from blipx.generation.config import GenerationSettings
from blipx.generation.outputs import GenerateOutput
from blipx.generation.processors import LogitsProcessors

NEG = -1.0e9


def _take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """HF's ``_gather_beams``: t [B, M, ...] indexed along dim 1 by idx [B, M']."""
    while idx.dim() < t.dim():
        idx = idx.unsqueeze(-1)
    return torch.take_along_dim(t, idx, dim=1)


def _step_unfused(
    logits: torch.Tensor, run_scores: torch.Tensor, seqs: torch.Tensor, cur: int, processors: LogitsProcessors
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


def beam_search(
    dec: CachedDecoder, prompt: torch.Tensor, s: GenerationSettings, processors: LogitsProcessors
) -> torch.Tensor | GenerateOutput:
    """prompt int64 [B, P] -> [B * num_return_sequences, P + longest returned hypothesis],
    finished hypotheses padded with EOS (HF fills with ``pad_token_id or eos``; pad 0 is falsy);
    a :class:`GenerateOutput` with ``s.return_dict`` (plus ``sequences_scores``, ``beam_indices``
    and, with ``s.output_scores``, the per-step ``scores``).

    An image is done when its finished set can no longer change (HF's early-stop heuristic, or
    K finished hypotheses under ``early_stopping=True``); done images leave the decoder once at
    most ``s.compact`` of the running images remain, and the loop ends when all are done."""
    b, p = prompt.shape
    k, t_max, dev = s.num_beams, s.max_length, prompt.device
    lp, eos, early = s.length_penalty, s.eos_token_id, s.early_stopping
    fill = s.pad_token_id or eos
    seqs = torch.full((b, k, t_max), fill, dtype=torch.long, device=dev)
    seqs[:, :, :p] = prompt[:, None]
    run_scores = torch.zeros(b, k, device=dev)
    run_scores[:, 1:] = NEG  # only beam 0 expands at the first step (all beams are equal)
    fin_seqs = seqs.clone()
    fin_scores = torch.full((b, k), NEG, device=dev)
    fin_len = torch.zeros(b, k, dtype=torch.long, device=dev)  # generated tokens (HF: beam_indices != -1)
    is_fin = torch.zeros(b, k, dtype=torch.bool, device=dev)
    may_improve = torch.ones(b, 1, dtype=torch.bool, device=dev)
    top_k_mask = torch.cat([torch.ones(k, dtype=torch.bool), torch.zeros(k, dtype=torch.bool)]).to(dev)
    # HF's beam_indices: the flat row (image * K + beam) each generated token came from, -1 =
    # not generated. Kept for the returned dict only.
    track = s.return_dict
    run_bidx = torch.full((b, k, t_max - p), -1, dtype=torch.int32, device=dev) if track else None
    fin_bidx = run_bidx.clone() if track else None
    fused = not (s.output_scores or s.has_ngram_or_bad_words)
    all_scores = [] if s.output_scores else None
    # Results of every image; the running state above covers the images in ``img`` only.
    img = torch.arange(b, device=dev)
    out = dict(seqs=fin_seqs.clone(), len=fin_len.clone(), scores=fin_scores.clone(), bidx=fin_bidx)

    def store_results():
        """Copy the finished sets of the running images into ``out`` (before a compaction and at
        the end)."""
        out["seqs"][img], out["len"][img], out["scores"][img] = fin_seqs, fin_len, fin_scores
        if track:
            out["bidx"][img] = fin_bidx

    # Prompt ids are repeated per beam (ids only, a few ints); the image K/V is not.
    logits = dec.prefill(prompt.repeat_interleave(k, dim=0))
    cur = p
    while True:
        n = seqs.shape[0]  # running images
        if fused:
            scores, tokens, src = ops.beam_search_step(
                logits, run_scores.view(-1), seqs.view(n * k, t_max), k, cur_len=cur,
                eos_token_id=eos, min_length=s.min_length, repetition_penalty=s.repetition_penalty,
            )
        else:
            scores, tokens, src, log_probs = _step_unfused(logits, run_scores, seqs, cur, processors)
            if all_scores is not None:
                all_scores.append(log_probs)
        cand = _take(seqs, src)  # [n, 2K, T_max]
        cand[:, :, cur] = tokens
        if track:
            cand_bidx = _take(run_bidx, src)
            cand_bidx[:, :, cur - p] = (src + img[:, None] * k).to(torch.int32)
        hits = tokens == eos
        last = cur + 1 >= t_max
        if last:  # MaxLengthCriteria: every candidate stops
            hits = torch.ones_like(hits)

        # Next running beams: the best K candidates that did not stop.
        run_cand = scores + hits.to(torch.float32) * NEG
        pick = torch.topk(run_cand, k=k).indices
        seqs = _take(cand, pick)
        run_scores = _take(run_cand, pick)
        src_beam = _take(src, pick)  # [n, K]: the beam each survivor continues
        if track:
            run_bidx = _take(cand_bidx, pick)

        # Finished hypotheses: stopped candidates among the top K merge with the finished set.
        just = hits & top_k_mask[None, :]
        fs = scores / ((cur + 1 - p) ** lp)
        full = torch.all(is_fin, dim=-1, keepdim=True) & (early is True)
        fs += full.to(torch.float32) * NEG
        fs += (~may_improve).to(torch.float32) * NEG
        fs += (~just) * NEG
        keep = torch.topk(torch.cat((fin_scores, fs), dim=1), k=k).indices
        fin_seqs = _take(torch.cat((fin_seqs, cand), dim=1), keep)
        fin_scores = _take(torch.cat((fin_scores, fs), dim=1), keep)
        fin_len = _take(torch.cat((fin_len, torch.full_like(tokens, cur + 1 - p)), dim=1), keep)
        is_fin = _take(torch.cat((is_fin, just), dim=1), keep)
        if track:
            fin_bidx = _take(torch.cat((fin_bidx, cand_bidx), dim=1), keep)
        cur += 1
        if last:
            break

        # HF's early-stop heuristic: can the best running beam still beat the worst finished one?
        best_len = (t_max - p) if (early == "never" and lp > 0.0) else (cur - p)
        best_running = run_scores[:, :1] / (best_len**lp)
        worst_fin = torch.where(is_fin, torch.min(fin_scores, dim=1, keepdim=True)[0], NEG)
        may_improve = may_improve & torch.any(best_running > worst_fin, dim=-1, keepdim=True)
        # Done: the finished set of the image is final (nothing is merged into it any more).
        # Per image, this is HF's batch-wide rule (stop when no image may improve, or all are
        # full under early_stopping=True): an image that may no longer improve has all K slots
        # finished (an empty slot counts as -1e9, which a running beam beats unless every
        # continuation was banned), so the loop runs HF's steps and ``scores`` has HF's length.
        alive = may_improve[:, 0] & ~(torch.all(is_fin, dim=-1) & (early is True))
        # The one host sync per step: how many images can still change their result, and
        # whether every candidate stopped.
        n_alive, all_hit = torch.stack([alive.sum(), torch.all(hits).long()]).tolist()
        if n_alive == 0 or all_hit:
            break
        if n_alive < n and n_alive <= s.compact * n:
            store_results()
            # A second sync, rare: at compact <= 0.5 each one at least halves the batch.
            live = alive.nonzero().view(-1)
            seqs, run_scores, src_beam, fin_seqs, fin_scores, fin_len, is_fin, may_improve, img = (
                t.index_select(0, live)
                for t in (seqs, run_scores, src_beam, fin_seqs, fin_scores, fin_len, is_fin, may_improve, img)
            )
            if track:
                run_bidx, fin_bidx = run_bidx.index_select(0, live), fin_bidx.index_select(0, live)
            dec.keep_images_(live)
        offset = torch.arange(seqs.shape[0], device=dev)[:, None] * k
        dec.reorder_((src_beam + offset).view(-1))
        logits = dec.step(seqs[:, :, cur - 1].reshape(-1))

    store_results()
    nrs = s.num_return_sequences
    gen_len = int(out["len"][:, :nrs].max())  # once, after the loop
    sequences = out["seqs"][:, :nrs].reshape(b * nrs, t_max)[:, : p + gen_len]
    if not s.return_dict:
        return sequences
    return GenerateOutput(
        sequences=sequences,
        scores=None if all_scores is None else tuple(all_scores),
        sequences_scores=out["scores"][:, :nrs].reshape(b * nrs),
        beam_indices=out["bidx"][:, :nrs].reshape(b * nrs, -1)[:, :gen_len],
    )
