"""Image-text matching (ITM) with hard negatives (salesforce/ALBEF
``models/model_pretrain.py``, salesforce/BLIP ``models/blip_pretrain.py`` / ``blip_retrieval.py``).

Per step, for a batch of B pairs: one hard negative text per image and one hard negative image
per text, each drawn with probability softmax(sim) over the candidates that are not of the same
image, by ``blipx.ops.sample_hard_negatives`` (one call per direction, no host sync). The ITM
head then sees 3B pairs in the official order::

    rows [0, B)    (text_i,          image_i)          label 1
    rows [B, 2B)   (text_i,          neg image of i)   label 0
    rows [2B, 3B)  (neg text of i,   image_i)          label 0

Which similarities to pass (the op takes logits, i.e. already divided by temp):
- ALBEF/BLIP pretraining: ``itc.sim_i2t[:, :B]`` and ``itc.sim_t2i[:, :B]`` (online query vs
  the momentum keys of the local batch). Official pretraining has no id mask (false negatives,
  ALBEF#126); pass ``idx`` to exclude captions of the same image.
- BLIP retrieval: recomputed from online features, ``image_feat @ text_feat.T / temp``; with
  ``negative_all_rank`` the candidates are the gathered batch ([B, W*B]) and ``idx_all`` their ids.

Differences from the official code: a row without any valid candidate (a batch of one, every
caption of the same image) gets index -1 instead of crashing ``torch.multinomial``; its negative
pair is dropped from the loss by a weight of 0 (the tensors keep their static shapes, so the
step stays sync-free and graph-capturable). BLIP's ``+1e-4`` floor on the weights is not
reproduced: it only existed to keep multinomial from failing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from blipx import ops


def positive_mask_from_ids(idx: torch.Tensor, idx_all: torch.Tensor | None = None) -> torch.Tensor:
    """bool [B, N]: True where candidate j shows the same image as row i (``idx == idx_all.T``)."""
    keys = idx if idx_all is None else idx_all
    return idx.view(-1, 1) == keys.view(1, -1)


def diagonal_positive_mask(batch: int, num_candidates: int, offset: int = 0, device=None) -> torch.Tensor:
    """bool [B, N] marking column ``offset + i`` for row i: this rank's own pairs inside a gathered
    candidate list (``offset = rank * B``) when no image ids are known."""
    cols = torch.arange(num_candidates, device=device)
    return cols.view(1, -1) == (torch.arange(batch, device=device) + offset).view(-1, 1)


@dataclass
class ITMNegatives:
    image_for_text: torch.Tensor  # [B] int64: candidate index of each text's negative image, -1 if none
    text_for_image: torch.Tensor  # [B] int64: candidate index of each image's negative text, -1 if none

    @property
    def valid(self) -> torch.Tensor:
        """bool [2B] for the negative rows, in the head's order (text_i + neg image, then neg text + image_i)."""
        return torch.cat([self.image_for_text >= 0, self.text_for_image >= 0])


def sample_itm_negatives(
    sim_i2t: torch.Tensor,
    sim_t2i: torch.Tensor,
    *,
    idx: torch.Tensor | None = None,
    idx_all: torch.Tensor | None = None,
    positive_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    hardness: float = 1.0,
) -> ITMNegatives:
    """Draw the hard negatives of both directions.

    sim_i2t: [B, N] logits of image i vs candidate text j; sim_t2i: [B, N] text i vs candidate
    image j (N = B locally, W*B with gathered candidates). Positives: ``positive_mask`` if
    given, else same image id (``idx`` [B] vs ``idx_all`` [N], default ``idx``), else the
    diagonal (square sims only). Gradient-free. ``hardness`` scales the logits: 1 draws from
    softmax(sim) (official), 0 uniformly among the non-positives (a curriculum ramps it up).
    """
    if positive_mask is None and idx is not None:
        positive_mask = positive_mask_from_ids(idx, idx_all)
    with torch.no_grad():
        sim_t2i, sim_i2t = sim_t2i.detach(), sim_i2t.detach()
        if hardness != 1.0:  # a Python float: no sync; ITC sims are finite, so 0 * sim is 0
            sim_t2i, sim_i2t = sim_t2i * hardness, sim_i2t * hardness
        image_for_text = ops.sample_hard_negatives(sim_t2i, positive_mask, generator)
        text_for_image = ops.sample_hard_negatives(sim_i2t, positive_mask, generator)
    return ITMNegatives(image_for_text, text_for_image)


def select_negatives(candidates: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``candidates[index]`` for a [B] index that may hold -1 (dropped rows take row 0 as a
    placeholder; their loss weight is 0). Differentiable w.r.t. candidates."""
    return candidates.index_select(0, index.clamp_min(0))


def build_itm_inputs(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    text_atts: torch.Tensor,
    negatives: ITMNegatives,
    *,
    image_candidates: torch.Tensor | None = None,
    text_candidates: torch.Tensor | None = None,
    text_atts_candidates: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The 2B negative pairs for the fusion encoder, in the official order.

    image_embeds [B, Li, D], text_embeds [B, Lt, D] (or token ids [B, Lt] for BLIP, which
    re-encodes them), text_atts [B, Lt]: this rank's batch. *_candidates: what the indices point
    into (default: the local batch; pass gathered tensors for global negatives, e.g.
    ``all_gather_with_grad(image_embeds)``). Returns ``text_embeds`` [2B, ...], ``text_atts``
    [2B, Lt], ``image_embeds`` [2B, Li, D] (pair r = (text_embeds[r], image_embeds[r])), and
    ``valid`` bool [2B]. The positive pairs are the plain batch.
    """
    image_candidates = image_embeds if image_candidates is None else image_candidates
    text_candidates = text_embeds if text_candidates is None else text_candidates
    text_atts_candidates = text_atts if text_atts_candidates is None else text_atts_candidates
    image_neg = select_negatives(image_candidates, negatives.image_for_text)
    text_neg = select_negatives(text_candidates, negatives.text_for_image)
    text_atts_neg = select_negatives(text_atts_candidates, negatives.text_for_image)
    return {
        "text_embeds": torch.cat([text_embeds, text_neg], dim=0),
        "text_atts": torch.cat([text_atts, text_atts_neg], dim=0),
        "image_embeds": torch.cat([image_neg, image_embeds], dim=0),
        "valid": negatives.valid,
    }


def itm_labels(batch: int, device=None) -> torch.Tensor:
    """[3B] int64: B ones (positives) then 2B zeros."""
    return torch.cat([torch.ones(batch, dtype=torch.long, device=device), torch.zeros(2 * batch, dtype=torch.long, device=device)])


def itm_loss(itm_logits: torch.Tensor, neg_valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the 3B ITM rows, dropping invalid negatives.

    itm_logits: [3B, 2] (positives, then the 2B negatives; column 1 = "match"). neg_valid: bool
    [2B] (``ITMNegatives.valid``); None keeps every row, which equals the official
    ``F.cross_entropy(logits, [1]*B + [0]*2B)``. Dropping is a 0/1 weight, not boolean
    indexing, so the shapes stay static and no host sync happens.
    """
    rows = itm_logits.shape[0]
    if rows % 3 != 0:
        raise ValueError(f"itm_loss: expected 3B rows (B positives + 2B negatives), got {rows}")
    b = rows // 3
    labels = itm_labels(b, itm_logits.device)
    ce = F.cross_entropy(itm_logits.float(), labels, reduction="none")
    if neg_valid is None:
        return ce.mean()
    weight = torch.cat([torch.ones(b, dtype=torch.bool, device=itm_logits.device), neg_valid.view(-1)]).to(ce.dtype)
    return (ce * weight).sum() / weight.sum()  # weight.sum() >= B > 0
