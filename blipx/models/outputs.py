"""Output dataclasses of the blipx models (features and logits only; losses live outside)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CaptionerOutput:
    logits: torch.Tensor  # [B, T, V]
    image_embeds: torch.Tensor  # [B, 1+N, Dv]


@dataclass
class RetrieverOutput:
    image_embeds: torch.Tensor  # [B, 1+N, Dv]
    itm_logits: torch.Tensor | None = None  # [B, 2], image i with text i; index 1 = match
    itc_similarity: torch.Tensor | None = None  # [B_img, B_txt] cosine, no temperature
    image_feat: torch.Tensor | None = None  # [B_img, E], L2-normalised
    text_feat: torch.Tensor | None = None  # [B_txt, E], L2-normalised


@dataclass
class PretrainOutput:
    """One online forward of a pretraining model on matched pairs.

    ITM here covers the positive pairs only: hard negatives depend on the ITC similarities
    and are sampled outside (``blipx.losses.sample_itm_negatives``), then scored with the model's ``itm_logits`` method.
    """

    image_embeds: torch.Tensor  # [B, 1+N, Dv]
    image_feat: torch.Tensor  # [B, E]
    text_embeds: torch.Tensor  # [B, T, H] unimodal text states
    text_feat: torch.Tensor  # [B, E]
    itm_logits: torch.Tensor  # [B, 2] positive pairs
    lm_logits: torch.Tensor | None = None  # BLIP: [B, T, V] decoder logits ([DEC] first)
    mlm_logits: torch.Tensor | None = None  # ALBEF: [B, T, V] on the masked ids, if given


@dataclass
class MomentumOutput:
    image_embeds: torch.Tensor
    image_feat: torch.Tensor
    text_embeds: torch.Tensor
    text_feat: torch.Tensor
