"""Masked language modelling (ALBEF) with momentum distillation (salesforce/ALBEF
``models/model_pretrain.py`` ``mask`` and the MLM distillation of its ``models/xbert.py``).

Masking as ALBEF's ``mask``: each token is selected with probability 0.15, except [PAD] and
[CLS] ([SEP] can be selected); of the selected, 80 % become [MASK], half of the rest (10 %) a
random id from the whole vocabulary (special ids included), the remaining 10 % stay. Labels are
the original ids at selected positions and -100 elsewhere. The random draws are made in the
official order (selection, 80 %, 50 %, random ids), so with the same generator the result is
identical to the official function; ``torch.where`` replaces its boolean-index assignments.

Loss: ``(1 - alpha) * CE(logits, labels) + alpha * mean over selected positions of
-sum(softmax(logits_m) * log_softmax(logits))``. Means over selected positions are computed as
weighted sums, so there is no boolean indexing (no host sync); a batch with nothing selected
gives 0 instead of the official NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from blipx.layers.configs import TextConfig

_IDS = TextConfig()  # special token ids are defined once, in the text config


def mask_tokens(
    input_ids: torch.Tensor,
    vocab_size: int,
    *,
    mask_prob: float = 0.15,
    mask_token_id: int = _IDS.mask_token_id,
    pad_token_id: int = _IDS.pad_token_id,
    cls_token_id: int = _IDS.cls_token_id,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(masked_ids, labels)`` for input_ids [B, L] (input left untouched).

    The official code draws on the CPU default generator and moves to the device; here every
    draw happens on input_ids' device from ``generator`` (of that device) or the default one.
    """
    shape, dev = input_ids.shape, input_ids.device
    selected = torch.bernoulli(torch.full(shape, mask_prob, device=dev), generator=generator).bool()
    selected &= (input_ids != pad_token_id) & (input_ids != cls_token_id)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    replaced = torch.bernoulli(torch.full(shape, 0.8, device=dev), generator=generator).bool() & selected
    ids = torch.where(replaced, torch.full_like(input_ids, mask_token_id), input_ids)
    randomized = torch.bernoulli(torch.full(shape, 0.5, device=dev), generator=generator).bool() & selected & ~replaced
    random_words = torch.randint(vocab_size, shape, dtype=torch.long, device=dev, generator=generator)
    ids = torch.where(randomized, random_words.to(ids.dtype), ids)
    return ids, labels


def mlm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    logits_m: torch.Tensor | None = None,
    alpha: float = 0.0,
) -> torch.Tensor:
    """MLM loss over [B, L, V] logits and [B, L] labels (-100 = not selected).

    logits_m: the momentum model's logits on the same masked ids (no gradient flows into them);
    alpha: distillation weight (0 or logits_m None: plain CE). Computed in fp32.
    """
    v = logits.shape[-1]
    flat = logits.reshape(-1, v).float()
    lab = labels.reshape(-1)
    weight = (lab != -100).to(flat.dtype)
    count = weight.sum().clamp_min(1.0)
    ce = F.cross_entropy(flat, lab, ignore_index=-100, reduction="sum") / count
    if logits_m is None or alpha == 0:
        return ce
    with torch.no_grad():
        soft = F.softmax(logits_m.detach().reshape(-1, v).float(), dim=-1)
    distill = -(F.log_softmax(flat, dim=-1) * soft).sum(dim=-1)
    distill = (distill * weight).sum() / count
    return (1 - alpha) * ce + alpha * distill
