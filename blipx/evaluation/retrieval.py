"""Image-text retrieval evaluation with the official two-stage protocol.

``salesforce/BLIP train_retrieval.py`` / ``salesforce/ALBEF Retrieval.py`` ``evaluation``:
1. ITC: unit-norm image and text features, similarity matrix ``sims = img_feat @ txt_feat.T``.
2. For every image, the top-``k_test`` texts by ITC are re-scored with the ITM head (and for
   every text, its top-``k_test`` images); every other entry stays at -100.
   BLIP: score = ITM match logit + ITC similarity; ALBEF: score = ITM match logit.
3. TR@K: an image is a hit when one of its captions ranks in the top K; IR@K: a text is a hit
   when its image ranks in the top K. Reported in percent with the official key names.

Rows are split across torch.distributed ranks and summed with all_reduce, as officially.
ITM runs in batches of ``itm_batch_size`` (image, text) pairs: one image's ``k`` candidate
texts share its image embeddings (the models accept G texts per image), no per-pair loops.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from blipx.evaluation.ranking import recall_at_k

NEG_INF_SCORE = -100.0  # the official fill value for pairs outside the top-k
MAX_LENGTH = {"blip": 35, "albef": 30}


def _family(model) -> str:
    return getattr(model, "family", None) or model.config.family


def _rank_rows(n: int) -> range:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        step = -(-n // dist.get_world_size())
        start = dist.get_rank() * step
        return range(start, min(n, start + step))
    return range(n)


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def _pixel_batches(images: torch.Tensor | Iterable, batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        yield from images.split(batch_size)
        return
    for b in images:  # a DataLoader of collated dicts, or of tensors
        yield b["pixel_values"] if isinstance(b, dict) else b


@torch.no_grad()
def encode_texts(
    model, texts: Sequence[str], tokenizer=None, max_length: int | None = None, text_batch_size: int = 256
) -> dict[str, Any]:
    """Unimodal text pass: ``family``, ``input_ids``, ``attention_mask``, ``text_feat`` (and for
    ALBEF ``text_states``, which its fusion layers continue from), on the model's device. Shared
    by image and video retrieval (``salesforce/BLIP eval_retrieval_video.py`` encodes text as
    ``train_retrieval.py`` does)."""
    family = _family(model)
    if tokenizer is None:
        from blipx.tokenizer import tokenizer_for

        tokenizer = tokenizer_for(family)
    param = next(model.parameters())
    ids, masks, states, text_feat = [], [], [], []
    for start in range(0, len(texts), text_batch_size):
        tok = tokenizer(
            list(texts[start : start + text_batch_size]), padding="max_length", truncation=True,
            max_length=max_length or MAX_LENGTH[family], return_tensors="pt",
        )  # fmt: skip
        i, m = tok["input_ids"].to(param.device), tok["attention_mask"].to(param.device)
        h = model.encode_text(i, m)
        ids.append(i), masks.append(m), text_feat.append(model.text_features(h))
        if family == "albef":  # ALBEF's fusion layers continue from the text-only states
            states.append(h)
    out = {"family": family, "input_ids": torch.cat(ids), "attention_mask": torch.cat(masks),
           "text_feat": torch.cat(text_feat)}  # fmt: skip
    if states:
        out["text_states"] = torch.cat(states)
    return out


@torch.no_grad()
def encode_for_retrieval(
    model, images: torch.Tensor | Iterable, texts: Sequence[str], tokenizer=None,
    max_length: int | None = None, text_batch_size: int = 256, image_batch_size: int = 64,
) -> dict[str, Any]:  # fmt: skip
    """Unimodal pass: image embeds/features and text ids/masks/states/features (on the model's device)."""
    out = encode_texts(model, texts, tokenizer, max_length, text_batch_size)
    param = next(model.parameters())
    image_embeds, image_feat = [], []
    for pv in _pixel_batches(images, image_batch_size):
        e = model.visual_encoder(pv.to(device=param.device, dtype=param.dtype))
        image_embeds.append(e), image_feat.append(model.image_features(e))
    out.update(image_embeds=torch.cat(image_embeds), image_feat=torch.cat(image_feat))
    return out


def _embeds_rows(enc: dict[str, Any], rows: torch.Tensor | slice, device: torch.device) -> torch.Tensor:
    """``enc["image_embeds"][rows]`` on ``device``. The embeddings may live in host memory (video
    retrieval keeps its [N, F*L, C] frame embeddings there, as ``eval_retrieval_video.py`` does):
    then the row indices go to the host first (a copy of k indices per ITM batch, in evaluation)."""
    emb = enc["image_embeds"]
    if isinstance(rows, torch.Tensor):
        rows = rows.to(emb.device)
    return emb[rows].to(device, non_blocking=True)


def _itm_match(model, enc: dict[str, Any], image_embeds: torch.Tensor, text_idx: torch.Tensor) -> torch.Tensor:
    """ITM match logit (index 1) for ``text_idx`` [B*G] rows against image_embeds [B, ...]."""
    mask = enc["attention_mask"][text_idx]
    if enc["family"] == "albef":
        return model.itm_logits(image_embeds, enc["text_states"][text_idx], mask)[:, 1]
    ids = enc["input_ids"][text_idx].clone()
    ids[:, 0] = model.config.text.enc_token_id  # BLIP's image-grounded encoder reads [ENC], not [CLS]
    return model.itm_logits(image_embeds, ids, mask)[:, 1]


@torch.no_grad()
def rerank_with_itm(
    model, enc: dict[str, Any], k_test: int = 128, itm_batch_size: int = 256, scoring: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(score_i2t [N_img, N_txt], score_t2i [N_txt, N_img], itc_sims [N_img, N_txt])`` on CPU.

    ``scoring``: "blip" (ITM logit + ITC sim) or "albef" (ITM logit); default: the model's family.
    """
    scoring = scoring or enc["family"]
    if scoring not in ("blip", "albef"):
        raise ValueError(f"scoring must be 'blip' or 'albef', got {scoring!r}")
    sims = enc["image_feat"] @ enc["text_feat"].t()
    n_img, n_txt = sims.shape
    out = {}
    for name, s, n_cand in (("i2t", sims, n_txt), ("t2i", sims.t(), n_img)):
        k = min(k_test, n_cand)
        rows = _rank_rows(s.shape[0])
        # Zero outside this rank's rows so the cross-rank SUM leaves each row from one rank only.
        score = torch.zeros(s.shape, dtype=torch.float32, device=s.device)
        if len(rows):
            score[rows.start : rows.stop] = NEG_INF_SCORE
        per_chunk = max(1, itm_batch_size // k)
        for start in range(rows.start, rows.stop, per_chunk):
            stop = min(rows.stop, start + per_chunk)
            topk_sim, topk_idx = s[start:stop].topk(k, dim=1)
            if name == "i2t":  # each image against its k texts (G = k texts per image)
                itm = _itm_match(model, enc, _embeds_rows(enc, slice(start, stop), s.device), topk_idx.flatten())
            else:  # each text against its k images (G = 1)
                texts = torch.arange(start, stop, device=s.device).repeat_interleave(k)
                itm = _itm_match(model, enc, _embeds_rows(enc, topk_idx.flatten(), s.device), texts)
            itm = itm.view(stop - start, k).float()
            score[start:stop].scatter_(1, topk_idx, itm + topk_sim.float() if scoring == "blip" else itm)
        out[name] = _all_reduce(score).cpu()
    return out["i2t"], out["t2i"], sims.float().cpu()


def evaluate_retrieval(
    model, images: torch.Tensor | Iterable, texts: Sequence[str], txt2img: Sequence[int] | torch.Tensor,
    tokenizer=None, k_test: int = 128, itm_batch_size: int = 256, scoring: str | None = None,
    positives: torch.Tensor | None = None, max_length: int | None = None,
) -> dict[str, float]:  # fmt: skip
    """Full protocol -> ``txt_r1/5/10``, ``img_r1/5/10``, ``txt_r_mean``, ``img_r_mean``, ``r_mean``
    (percent), plus ``itc_*`` keys for the ITC-only ranking (the first stage alone).

    ``images``: pixel_values [N_img, 3, S, S] or an iterable of batches (tensors or collated
    dicts, in image order). ``txt2img[j]``: the image of text j. ``positives`` (bool
    [N_img, N_txt]) replaces the id ground truth, e.g. "this caption describes this image".
    """
    was_training = model.training
    model.eval()  # dropout off, as the official evaluation
    try:
        enc = encode_for_retrieval(model, images, texts, tokenizer, max_length)
        score_i2t, score_t2i, sims = rerank_with_itm(model, enc, k_test, itm_batch_size, scoring)
    finally:
        model.train(was_training)
    txt2img = torch.as_tensor(txt2img, dtype=torch.long)
    n_img = score_i2t.shape[0]
    if (positives is None and int(txt2img.max()) >= n_img) or (positives is not None and positives.shape[0] != n_img):
        # A loader that dropped unreadable images shifts every later image: refuse, do not mis-score.
        raise ValueError(f"got {n_img} images, but the ground truth refers to more; were images skipped?")
    metrics = recall_at_k(score_i2t, score_t2i, txt2img, positives)
    itc = recall_at_k(sims, sims.t(), txt2img, positives)
    metrics.update({f"itc_{k}": v for k, v in itc.items()})
    return metrics
