"""Recall@K from score matrices, and the recall a random ranking would get (chance level)."""

from __future__ import annotations

import torch

KS = (1, 5, 10)


def positives_from_ids(txt2img: torch.Tensor, n_img: int) -> torch.Tensor:
    """bool [N_img, N_txt]: text j belongs to image i."""
    return torch.arange(n_img).unsqueeze(1) == txt2img.view(1, -1)


def best_positive_rank(scores: torch.Tensor, positives: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """0-based rank of each row's best-scored positive among its negatives.

    rank = #negatives scoring >= the best positive: ties count against the model (a model that
    scores everything equally gets rank N-1, not 0). Without ties this is the official
    ``np.where(argsort(-score) == gt)`` minimum. Rows without a positive get rank N.
    """
    ranks = []
    for s, p in zip(scores.split(chunk), positives.split(chunk)):
        best = s.masked_fill(~p, float("-inf")).amax(dim=1, keepdim=True)
        r = ((s >= best) & ~p).sum(dim=1)
        ranks.append(torch.where(p.any(dim=1), r, torch.full_like(r, s.shape[1])))
    return torch.cat(ranks)


def _with_means(out: dict[str, float], ks) -> dict[str, float]:
    out["txt_r_mean"] = sum(out[f"txt_r{k}"] for k in ks) / len(ks)
    out["img_r_mean"] = sum(out[f"img_r{k}"] for k in ks) / len(ks)
    out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
    return out


def recall_summary(tr: torch.Tensor, ir: torch.Tensor, ks=KS) -> dict[str, float]:
    """R@K in percent and their means from 0-based ranks: ``tr`` per image (its best caption),
    ``ir`` per text (its best image)."""
    out = {f"txt_r{k}": 100.0 * float((tr < k).float().mean()) for k in ks}
    out.update({f"img_r{k}": 100.0 * float((ir < k).float().mean()) for k in ks})
    return _with_means(out, ks)


def retrieval_ranks(
    score_i2t: torch.Tensor, score_t2i: torch.Tensor, txt2img: torch.Tensor, positives: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based ranks ``(per image: its best caption, per text: its best image)`` (see
    :func:`best_positive_rank`; arguments as :func:`recall_at_k`)."""
    pos = positives_from_ids(txt2img, score_i2t.shape[0]) if positives is None else positives.bool()
    return best_positive_rank(score_i2t, pos), best_positive_rank(score_t2i, pos.t())


def recall_at_k(
    score_i2t: torch.Tensor, score_t2i: torch.Tensor, txt2img: torch.Tensor, positives: torch.Tensor | None = None
) -> dict[str, float]:
    """TR@K / IR@K in percent (official keys ``txt_r1`` ... ``r_mean``).

    ``score_i2t`` [N_img, N_txt], ``score_t2i`` [N_txt, N_img]; ``txt2img[j]`` = image of text j,
    or ``positives`` bool [N_img, N_txt] for a custom ground truth.
    """
    return recall_summary(*retrieval_ranks(score_i2t, score_t2i, txt2img, positives))


def rank_statistics(ranks: torch.Tensor) -> dict[str, float]:
    """Median and mean of the 1-based ranks: ``mdR`` as ``salesforce/BLIP eval_retrieval_video.py``
    computes it (``np.median(ranks + 1)``: the mean of the two middle ranks for an even count)
    and ``mnR``. ``ranks``: 0-based, e.g. from :func:`retrieval_ranks`."""
    if ranks.numel() == 0:
        raise ValueError("rank_statistics needs at least one rank")
    r = ranks.double() + 1
    return {"mdR": float(torch.quantile(r, 0.5)), "mnR": float(r.mean())}  # quantile interpolates as np.median


def _hit_probability(p: torch.Tensor, k: int) -> torch.Tensor:
    """Per row of bool ``p`` [N, M]: P(a positive is in a random top-k) = 1 - C(M-P, k) / C(M, k)."""
    m = p.shape[1]
    k = min(k, m)
    neg = m - p.sum(dim=1).double()
    lg = torch.lgamma
    mm = torch.tensor(float(m), dtype=torch.double)
    log_miss = lg(neg + 1) - lg((neg - k + 1).clamp(min=1)) - lg(mm + 1) + lg(mm - k + 1)
    return 1 - torch.where(neg >= k, log_miss.exp(), torch.zeros_like(neg))


def chance_recall(txt2img: torch.Tensor, positives: torch.Tensor | None = None, ks=KS) -> dict[str, float]:
    """Expected recall (percent, keys as :func:`recall_at_k`) of a uniformly random ranking."""
    pos = positives_from_ids(txt2img, int(txt2img.max()) + 1) if positives is None else positives.bool()
    out = {f"txt_r{k}": 100.0 * float(_hit_probability(pos, k).mean()) for k in ks}
    out.update({f"img_r{k}": 100.0 * float(_hit_probability(pos.t(), k).mean()) for k in ks})
    return _with_means(out, ks)
