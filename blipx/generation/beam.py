"""Vectorised beam search, step for step HF's ``GenerationMixin._beam_search`` (hf-blip.md §2.6).

State lives in fixed-shape device tensors ([B, K, T_max] running and finished sequences,
[B, K] scores). Per step: :func:`blipx.ops.beam_search_step` fuses log_softmax, repetition
penalty, the min-length EOS ban, the running-score add and the top-2K selection; candidates
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

NEG = -1.0e9


def _take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """HF's ``_gather_beams``: t [B, M, ...] indexed along dim 1 by idx [B, M']."""
    while idx.dim() < t.dim():
        idx = idx.unsqueeze(-1)
    return torch.take_along_dim(t, idx, dim=1)


def beam_search(dec: CachedDecoder, prompt: torch.Tensor, s: GenerationSettings) -> torch.Tensor:
    """prompt int64 [B, P] -> [B * num_return_sequences, P + longest returned hypothesis],
    finished hypotheses padded with EOS (HF fills with ``pad_token_id or eos``; pad 0 is falsy).

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
    # Results of every image; the running state above covers the images in ``img`` only.
    out_seqs, out_len, img = fin_seqs.clone(), fin_len.clone(), torch.arange(b, device=dev)

    # Prompt ids are repeated per beam (ids only, a few ints); the image K/V is not.
    logits = dec.prefill(prompt.repeat_interleave(k, dim=0))
    cur = p
    while True:
        n = seqs.shape[0]  # running images
        scores, tokens, src = ops.beam_search_step(
            logits, run_scores.view(-1), seqs.view(n * k, t_max), k, cur_len=cur,
            eos_token_id=eos, min_length=s.min_length, repetition_penalty=s.repetition_penalty,
        )
        cand = _take(seqs, src)  # [n, 2K, T_max]
        cand[:, :, cur] = tokens
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
        cur += 1
        if last:
            break

        # HF's early-stop heuristic: can the best running beam still beat the worst finished one?
        best_len = (t_max - p) if (early == "never" and lp > 0.0) else (cur - p)
        best_running = run_scores[:, :1] / (best_len**lp)
        worst_fin = torch.where(is_fin, torch.min(fin_scores, dim=1, keepdim=True)[0], NEG)
        may_improve = may_improve & torch.any(best_running > worst_fin, dim=-1, keepdim=True)
        # Done: the finished set of the image is final (nothing is merged into it any more).
        alive = may_improve[:, 0] & ~(torch.all(is_fin, dim=-1) & (early is True))
        # The one host sync per step: how many images can still change their result, and
        # whether every candidate stopped.
        n_alive, all_hit = torch.stack([alive.sum(), torch.all(hits).long()]).tolist()
        if n_alive == 0 or all_hit:
            break
        if n_alive < n and n_alive <= s.compact * n:
            out_seqs[img], out_len[img] = fin_seqs, fin_len
            # A second sync, rare: at compact <= 0.5 each one at least halves the batch.
            live = alive.nonzero().view(-1)
            seqs, run_scores, src_beam, fin_seqs, fin_scores, fin_len, is_fin, may_improve, img = (
                t.index_select(0, live)
                for t in (seqs, run_scores, src_beam, fin_seqs, fin_scores, fin_len, is_fin, may_improve, img)
            )
            dec.keep_images_(live)
        offset = torch.arange(seqs.shape[0], device=dev)[:, None] * k
        dec.reorder_((src_beam + offset).view(-1))
        logits = dec.step(seqs[:, :, cur - 1].reshape(-1))

    out_seqs[img], out_len[img] = fin_seqs, fin_len
    nrs = s.num_return_sequences
    out = out_seqs[:, :nrs].reshape(b * nrs, t_max)
    return out[:, : p + int(out_len[:, :nrs].max())]
