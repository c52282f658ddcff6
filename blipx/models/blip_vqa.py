"""BLIP VQA model (``blip_vqa.py``): an image-grounded question encoder and a separate answer
decoder (not tied to the encoder) that cross-attends to the question states.

Answer ranking (``rank``) builds on ``answer_logits``; :meth:`BlipVqa.generate` decodes free-form
answers with :mod:`blipx.generation`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from blipx.layers.bert import BertLMHead, BertModel
from blipx.layers.vit import VisionTransformer
from blipx.models.base import BlipxModel
from blipx.models.config import ModelConfig


@dataclass
class VqaOutput:
    image_embeds: torch.Tensor  # [B, 1+N, Dv]
    question_embeds: torch.Tensor  # [B, Tq, H]
    logits: torch.Tensor | None = None  # [B*G, Ta, V] answer-decoder logits, if answer ids given


class BlipVqa(BlipxModel):
    """``visual_encoder`` + ``text_encoder`` (question, cross-attends to the image) +
    ``text_decoder`` (answers, cross-attends to the question; key/value width = text width).

    As in HF and the official code, the caller's question ids are used as given (the official
    code puts [ENC] first; see :func:`blipx.models.with_first_token`) and answers start with [DEC].
    """

    family = "blip"
    _ignore_keys = (r"vision_proj\..*", r"text_proj\..*", r"itm_head\..*", r"temp")

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.visual_encoder = VisionTransformer(config.vision)
        self.text_encoder = BertModel(config.text)
        self.text_decoder = BertLMHead(replace(config.text, encoder_width=config.text.hidden_size))

    def encode_question(self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask=None) -> torch.Tensor:
        return self.text_encoder(input_ids, attention_mask, encoder_hidden_states=image_embeds).last_hidden_state

    def answer_logits(
        self,
        question_embeds: torch.Tensor,
        question_mask: torch.Tensor | None,
        answer_ids: torch.Tensor,
        answer_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Causal decoder over answers; G answer rows per question share its K/V (rows b*G..)."""
        logits, _ = self.text_decoder(
            answer_ids, answer_mask, encoder_hidden_states=question_embeds,
            encoder_attention_mask=question_mask, is_decoder=True,
        )
        return logits

    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask=None, **kw) -> torch.Tensor:
        """Answer ids [B * num_return_sequences, 1 + new] starting with [DEC], as HF
        ``BlipForQuestionAnswering.generate``: the question is encoded against the image, then the
        decoder runs from [DEC] over the question states. As in HF (and the official code), the
        decoder's cross-attention ignores the question padding (an all-ones mask). ``kw``: the
        decoding arguments of :meth:`blipx.models.BlipCaptioner.generate`. The question K/V are
        projected once per question and shared by its beams."""
        from blipx.generation import generate

        q = self.encode_question(self.visual_encoder(pixel_values), input_ids, attention_mask)
        bos = torch.full((q.shape[0], 1), self.config.text.bos_token_id, dtype=torch.long, device=q.device)
        return generate(self.text_decoder, q, bos, **kw)

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> VqaOutput:
        image_embeds = self.visual_encoder(pixel_values)
        q = self.encode_question(image_embeds, input_ids, attention_mask)
        logits = None
        if decoder_input_ids is not None:
            logits = self.answer_logits(q, attention_mask, decoder_input_ids, decoder_attention_mask)
        return VqaOutput(image_embeds, q, logits)
