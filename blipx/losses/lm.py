"""Language-modelling loss of BLIP's decoder (salesforce/BLIP ``models/blip_pretrain.py``,
``blip.py`` ``BLIP_Decoder``, ``blip_vqa.py``).

Targets are the decoder ids with [PAD] -> -100 and the first ``prompt_length`` positions ->
-100 (captioning: ``'a picture of '`` = 4 positions; pretraining: 0); the decoder input has
position 0 replaced by [DEC]. The loss shifts by one (position t predicts t + 1) and is
``CrossEntropyLoss(label_smoothing=0.1)``: the mean over non-ignored target tokens, or with
reduction='none' the per-sequence sum (what BLIP's VQA ranking uses).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from blipx.layers.configs import TextConfig

_IDS = TextConfig()  # special token ids are defined once, in the text config


def lm_inputs_and_targets(
    input_ids: torch.Tensor,
    *,
    bos_token_id: int = _IDS.bos_token_id,
    pad_token_id: int = _IDS.pad_token_id,
    prompt_length: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(decoder_input_ids, targets)`` from tokenized captions [B, T] starting with [CLS]."""
    decoder_ids = input_ids.clone()
    decoder_ids[:, 0] = bos_token_id
    targets = decoder_ids.masked_fill(decoder_ids == pad_token_id, -100)
    if prompt_length > 0:
        targets[:, :prompt_length] = -100
    return decoder_ids, targets


def lm_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    label_smoothing: float = 0.1,
    reduction: str = "mean",
) -> torch.Tensor:
    """Shifted, label-smoothed CE. logits [B, T, V], targets [B, T] (-100 = ignored).

    reduction='mean': mean over non-ignored tokens (NaN when every target is ignored, as the
    official); 'none': [B] per-sequence sums. Computed in fp32.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"lm_loss: reduction must be 'mean' or 'none', got {reduction!r}")
    b, _, v = logits.shape
    # Shift the labels, not the logits: slicing [B, T, V] logits would cost a copy forward and a
    # zero-filled [B, T, V] gradient backward; the last position simply has no target.
    labels = torch.cat([targets[:, 1:], targets.new_full((b, 1), -100)], dim=1).reshape(-1)
    loss = F.cross_entropy(logits.reshape(-1, v).float(), labels, ignore_index=-100,
                           label_smoothing=label_smoothing, reduction=reduction)
    return loss if reduction == "mean" else loss.view(b, -1).sum(dim=1)
