"""BLIP models (salesforce/BLIP): captioner, retriever (ITM + ITC) and pretraining model.

Module names follow the official checkpoints (``visual_encoder``, ``text_encoder``,
``text_decoder.{bert,cls}``, ``vision_proj``, ``text_proj``, ``itm_head``, ``*_m``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch

from blipx.layers.bert import BertLMHead, BertModel
from blipx.layers.vit import VisionTransformer
from blipx.models.base import BlipxModel
from blipx.models.config import ModelConfig
from blipx.models.contrastive import ContrastiveHeadsMixin
from blipx.models.outputs import CaptionerOutput, PretrainOutput, RetrieverOutput
from blipx.tokenizer import decode_ids

if TYPE_CHECKING:
    from blipx.generation import GenerateOutput

# Keys of official/HF files that belong to other BLIP heads or to training state.
_PRETRAIN_HEADS = (r"text_encoder\..*", r"vision_proj\..*", r"text_proj\..*", r"itm_head\..*", r"temp")


def with_first_token(input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
    """Copy of ``input_ids`` with column 0 set to ``token_id`` ([DEC] / [ENC] in BLIP)."""
    ids = input_ids.clone()
    ids[:, 0] = token_id
    return ids


@lru_cache(maxsize=1)
def _tokenizer():
    from blipx.tokenizer import blip_tokenizer

    return blip_tokenizer()


def decoder_prompt(prompt: Any, batch: int, bos: int, device: torch.device) -> torch.Tensor:
    """HF BLIP's decoder prompt [B, P]: ``None`` -> [[bos]]; a string is tokenized as the HF
    processor does (``[CLS] ... [SEP]``); ids ([P] or [B, P], a list or tensor) are taken as that
    tokenized form. Then column 0 becomes bos ([DEC]) and the last column ([SEP]) is dropped."""
    if prompt is None:
        return torch.full((batch, 1), bos, dtype=torch.long, device=device)
    if isinstance(prompt, str):
        prompt = _tokenizer()(prompt).input_ids
    ids = torch.as_tensor(prompt, dtype=torch.long, device=device)
    if ids.dim() == 1:
        ids = ids[None].expand(batch, -1)
    if ids.dim() != 2 or ids.shape[0] != batch or ids.shape[1] < 2:
        raise ValueError(f"prompt ids must be [P] or [{batch}, P] with P >= 2, got {tuple(ids.shape)}")
    ids = ids.clone()
    ids[:, 0] = bos
    return ids[:, :-1]


class BlipCaptioner(BlipxModel):
    """Image-grounded decoder: ``logits = decoder(input_ids | image)``.

    ``input_ids`` should start with [DEC] (``config.text.bos_token_id``), as in HF and the
    official training code; this forward does not rewrite it (HF parity).
    """

    family = "blip"
    _ignore_keys = _PRETRAIN_HEADS

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.visual_encoder = VisionTransformer(config.vision)
        self.text_decoder = BertLMHead(config.text)

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> CaptionerOutput:
        image_embeds = self.visual_encoder(pixel_values)
        logits, _ = self.text_decoder(
            input_ids, attention_mask, encoder_hidden_states=image_embeds, is_decoder=True
        )
        return CaptionerOutput(logits=logits, image_embeds=image_embeds)

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor,
        prompt: str | torch.Tensor | list | None = None,
        *,
        num_beams: int = 1,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = 50,
        top_p: float | None = 1.0,
        repetition_penalty: float = 1.0,
        length_penalty: float = 1.0,
        min_length: int = 0,
        max_length: int | None = None,
        max_new_tokens: int | None = None,
        min_new_tokens: int | None = None,
        num_return_sequences: int = 1,
        early_stopping: bool | str = False,
        no_repeat_ngram_size: int = 0,
        bad_words_ids: list[list[int]] | None = None,
        return_dict: bool = False,
        output_scores: bool = False,
        generator: torch.Generator | None = None,
        compact: float = 0.5,
        cuda_graph: bool | None = None,
        check_every: int | None = None,
    ) -> torch.Tensor | GenerateOutput:
        """Caption ids [B * num_return_sequences, P + new], as HF
        ``BlipForConditionalGeneration.generate`` returns them: prefix ([DEC] + prompt)
        included, rows that finished early padded with [PAD] (greedy / sampling) or [SEP] (beam
        search; HF fills with ``pad_token_id or eos``), ids from ``config.text``. ``max_length`` /
        ``min_length`` count the prefix (``max_new_tokens`` / ``min_new_tokens`` do not); the
        default is 20 new tokens;
        ``top_k`` defaults to 50 as in HF (pass ``top_k=0`` for pure nucleus sampling).
        ``no_repeat_ngram_size`` / ``bad_words_ids``: HF's processors (prompt included in the
        n-gram history). ``return_dict=True`` returns a :class:`blipx.generation.GenerateOutput`
        (``sequences``, and for beam search ``sequences_scores`` and ``beam_indices``);
        ``output_scores=True`` adds HF's per-step ``scores``. Every setting is checked up front
        (:func:`blipx.generation.resolve`).
        ``prompt``: see :func:`decoder_prompt`. The image K/V is projected once per image and
        shared by all beams / return sequences (see :mod:`blipx.generation`). ``compact``: once
        finished images leave at most this fraction running, they leave the decoder (0 = never).
        ``cuda_graph``: capture each decode iteration as a CUDA graph and replay it (None: on for
        CUDA, off on the CPU); ``check_every``: read "all finished" every this many steps (None:
        1 on the CPU, 4 on CUDA). Neither changes the ids.

        ``pixel_values``: normalised float [B, 3, S, S] (uint8 images are refused: use
        :meth:`caption` or :func:`blipx.data.image_processor`). B = 0 gives [0, P] ids;
        non-finite pixel values raise ValueError.
        """
        from blipx.generation import check_pixel_values, generate

        check_pixel_values(pixel_values)
        image_embeds = self.visual_encoder(pixel_values)
        ids = decoder_prompt(prompt, image_embeds.shape[0], self.config.text.bos_token_id, image_embeds.device)
        return generate(
            self.text_decoder, image_embeds, ids, generator=generator, num_beams=num_beams, do_sample=do_sample,
            temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
            length_penalty=length_penalty, min_length=min_length, max_length=max_length,
            max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, num_return_sequences=num_return_sequences,
            early_stopping=early_stopping, no_repeat_ngram_size=no_repeat_ngram_size, bad_words_ids=bad_words_ids,
            return_dict=return_dict, output_scores=output_scores, compact=compact, cuda_graph=cuda_graph,
            check_every=check_every,
        )

    def caption(self, images: Any, prompt: str | torch.Tensor | list | None = None, **kw) -> list[str]:
        """Captions (prompt stripped) for PIL images, uint8 tensors or float pixel_values
        [B, 3, S, S]; ``kw`` as :meth:`generate`. Returns B * num_return_sequences strings."""
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            pixel_values = images
        else:
            from blipx.data.processing import image_processor

            pixel_values = image_processor(self.family, self.config.vision.image_size)(images)
        param = next(self.parameters())
        pixel_values = pixel_values.to(device=param.device, dtype=param.dtype)
        ids = self.generate(pixel_values, prompt, **kw)
        p = decoder_prompt(prompt, pixel_values.shape[0], self.config.text.bos_token_id, ids.device).shape[1]
        # Host copy of the finished ids, once per call, for the tokenizer (outside the decode loop).
        return decode_ids(_tokenizer(), ids[:, p:])


class BlipRetriever(ContrastiveHeadsMixin, BlipxModel):
    """ITM head and ITC projections over one text encoder (BLIP ``blip_retrieval`` / ``blip_itm``).

    Like HF, the caller's first token is used as is; the official retrieval code puts [ENC]
    (``config.text.enc_token_id``) there for ITM — use :func:`with_first_token` for that.

    Loaded from an HF ``BlipModel`` folder it is ITC only (``config.itm_head=False``,
    ``config.itc_pooling="hf_blip_model"``): ITM calls raise, ``load_report.notes`` says so.
    """

    family = "blip"
    _ignore_keys = (r"text_decoder\..*",)
    _optional_keys = (r"temp",)  # HF BlipForImageTextRetrieval has no temperature

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.visual_encoder = VisionTransformer(config.vision)
        self.text_encoder = BertModel(config.text)
        self._build_heads(config)
        if config.momentum:
            self._build_momentum()

    def itm_logits(self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask=None) -> torch.Tensor:
        """[B*G, 2] for text rows b*G..b*G+G-1 against image b (G texts per image)."""
        self.require_itm()
        h = self.text_encoder(input_ids, attention_mask, encoder_hidden_states=image_embeds).last_hidden_state
        return self.itm_head(h[:, 0])

    def encode_text(self, input_ids: torch.Tensor, attention_mask=None, momentum: bool = False) -> torch.Tensor:
        enc = self.text_encoder_m if momentum else self.text_encoder
        return enc(input_ids, attention_mask, mode="text").last_hidden_state

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        use_itm_head: bool = True,
    ) -> RetrieverOutput:
        image_embeds = self.visual_encoder(pixel_values)
        if use_itm_head:
            return RetrieverOutput(image_embeds, itm_logits=self.itm_logits(image_embeds, input_ids, attention_mask))
        image_feat = self.image_features(image_embeds)
        text_feat = self.text_features(self.encode_text(input_ids, attention_mask))
        return RetrieverOutput(
            image_embeds, itc_similarity=image_feat @ text_feat.t(), image_feat=image_feat, text_feat=text_feat
        )


class BlipPretrainer(ContrastiveHeadsMixin, BlipxModel):
    """BLIP pretraining model: unimodal encoder (ITC), image-grounded encoder ([ENC], ITM) and
    image-grounded decoder ([DEC], LM), plus the momentum copies.

    Encoder and decoder share every module except self-attention and the LM head (official
    ``tie_encoder_decoder_weights``): the shared modules are the same objects, so the state
    dict lists them under both prefixes, as official checkpoints do.
    """

    family = "blip"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.visual_encoder = VisionTransformer(config.vision)
        self.text_encoder = BertModel(config.text)
        self.text_decoder = BertLMHead(config.text)
        self._build_heads(config)
        self._tie_encoder_decoder()
        self._build_momentum()

    def _tie_encoder_decoder(self) -> None:
        enc, dec = self.text_encoder, self.text_decoder.bert
        enc.embeddings = dec.embeddings
        for le, ld in zip(enc.encoder.layer, dec.encoder.layer):
            le.crossattention = ld.crossattention
            le.intermediate = ld.intermediate
            le.output = ld.output

    def encode_text(self, input_ids: torch.Tensor, attention_mask=None, momentum: bool = False) -> torch.Tensor:
        enc = self.text_encoder_m if momentum else self.text_encoder
        return enc(input_ids, attention_mask, mode="text").last_hidden_state

    def itm_logits(self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask=None) -> torch.Tensor:
        """Image-grounded encoder on [ENC]-prefixed ids -> ITM logits [B*G, 2]."""
        self.require_itm()
        ids = with_first_token(input_ids, self.config.text.enc_token_id)
        h = self.text_encoder(ids, attention_mask, encoder_hidden_states=image_embeds).last_hidden_state
        return self.itm_head(h[:, 0])

    def lm_logits(self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask=None) -> torch.Tensor:
        """Decoder on [DEC]-prefixed ids -> next-token logits [B, T, V] (shift is the loss's job)."""
        ids = with_first_token(input_ids, self.config.text.bos_token_id)
        logits, _ = self.text_decoder(ids, attention_mask, encoder_hidden_states=image_embeds, is_decoder=True)
        return logits

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask=None) -> PretrainOutput:
        """``input_ids`` start with [CLS] (unimodal encoder); ITM and LM swap in [ENC] / [DEC]."""
        image_embeds = self.visual_encoder(pixel_values)
        text_embeds = self.encode_text(input_ids, attention_mask)
        return PretrainOutput(
            image_embeds=image_embeds,
            image_feat=self.image_features(image_embeds),
            text_embeds=text_embeds,
            text_feat=self.text_features(text_embeds),
            itm_logits=self.itm_logits(image_embeds, input_ids, attention_mask),
            lm_logits=self.lm_logits(image_embeds, input_ids, attention_mask),
        )
