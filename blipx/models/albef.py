"""ALBEF models (salesforce/ALBEF): pretraining model and retrieval model.

The text tower runs layers ``[0, fusion_layer)`` as a text-only encoder (ITC) and layers
``[fusion_layer, N)`` as the fusion encoder on those same states (ITM), as ``xbert``'s
``mode='text'`` / ``mode='fusion'``; MLM runs all layers (``mode='multimodal'``).
"""

from __future__ import annotations

import torch

from blipx.layers.bert import BertLMHead, BertModel
from blipx.layers.vit import VisionTransformer
from blipx.models.base import BlipxModel
from blipx.models.config import ModelConfig
from blipx.models.contrastive import ContrastiveHeadsMixin
from blipx.models.outputs import PretrainOutput, RetrieverOutput


class _AlbefBase(ContrastiveHeadsMixin, BlipxModel):
    family = "albef"

    def _bert(self, momentum: bool = False) -> BertModel:
        enc = self.text_encoder_m if momentum else self.text_encoder
        return enc.bert if isinstance(enc, BertLMHead) else enc

    def encode_text(self, input_ids: torch.Tensor, attention_mask=None, momentum: bool = False) -> torch.Tensor:
        """Text-only layers -> [B, T, H] (reused by :meth:`fuse`)."""
        return self._bert(momentum)(input_ids, attention_mask, mode="text").last_hidden_state

    def fuse(self, text_embeds: torch.Tensor, attention_mask, image_embeds: torch.Tensor) -> torch.Tensor:
        """Fusion layers on text states (rows b*G.. of image b) with cross-attention to the image."""
        return self._bert()(
            attention_mask=attention_mask, hidden_states=text_embeds, encoder_hidden_states=image_embeds, mode="fusion"
        ).last_hidden_state

    def itm_logits(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, attention_mask=None) -> torch.Tensor:
        """ITM logits [B*G, 2] from unimodal text states (index 1 = match)."""
        self.require_itm()
        return self.itm_head(self.fuse(text_embeds, attention_mask, image_embeds)[:, 0])



class AlbefPretrainer(_AlbefBase):
    """ALBEF pretraining model: ViT + BertForMaskedLM (``text_encoder.{bert,cls}``), ITC
    projections, ITM head, ``temp`` and the momentum copies (``*_m``)."""

    _text_encoder_is_lm = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.visual_encoder = VisionTransformer(config.vision)
        self.text_encoder = BertLMHead(config.text)
        self._build_heads(config)
        self._build_momentum()

    def mlm_logits(
        self, image_embeds: torch.Tensor, masked_ids: torch.Tensor, attention_mask=None, momentum: bool = False
    ) -> torch.Tensor:
        """All text layers on masked ids with cross-attention -> MLM logits [B, T, V]."""
        enc = self.text_encoder_m if momentum else self.text_encoder
        logits, _ = enc(masked_ids, attention_mask, encoder_hidden_states=image_embeds)
        return logits

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        masked_input_ids: torch.Tensor | None = None,
    ) -> PretrainOutput:
        image_embeds = self.visual_encoder(pixel_values)
        text_embeds = self.encode_text(input_ids, attention_mask)
        mlm = None if masked_input_ids is None else self.mlm_logits(image_embeds, masked_input_ids, attention_mask)
        return PretrainOutput(
            image_embeds=image_embeds,
            image_feat=self.image_features(image_embeds),
            text_embeds=text_embeds,
            text_feat=self.text_features(text_embeds),
            itm_logits=self.itm_logits(image_embeds, text_embeds, attention_mask),
            mlm_logits=mlm,
        )


class AlbefRetriever(_AlbefBase):
    """ALBEF retrieval model (``model_retrieval.py``): ITC similarities and ITM scores.

    Loads pretraining checkpoints too (``text_encoder.bert.*`` -> ``text_encoder.*``; the MLM
    head is ignored). ``config.momentum`` keeps the ``*_m`` copies for distillation.
    """

    _ignore_keys = (r"text_encoder(_m)?\.cls\..*",)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.visual_encoder = VisionTransformer(config.vision)
        self.text_encoder = BertModel(config.text)
        self._build_heads(config)
        if config.momentum:
            self._build_momentum()

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        use_itm_head: bool = True,
    ) -> RetrieverOutput:
        image_embeds = self.visual_encoder(pixel_values)
        text_embeds = self.encode_text(input_ids, attention_mask)
        if use_itm_head:
            return RetrieverOutput(image_embeds, itm_logits=self.itm_logits(image_embeds, text_embeds, attention_mask))
        image_feat = self.image_features(image_embeds)
        text_feat = self.text_features(text_embeds)
        return RetrieverOutput(
            image_embeds, itc_similarity=image_feat @ text_feat.t(), image_feat=image_feat, text_feat=text_feat
        )


__all__ = ["AlbefPretrainer", "AlbefRetriever"]
