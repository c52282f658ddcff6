"""ALBEF VQA model (salesforce/ALBEF ``models/model_vqa.py``, ``VQA.py``).

- ``text_encoder``: the 12-layer multimodal question encoder (the ALBEF text tower run in
  ``mode="multimodal"``: text layers, then the fusion layers with cross-attention to the image);
- ``text_decoder``: a ``BertLMHead`` of ``num_layers - fusion_layer`` (6) layers, every one with
  cross-attention to the question states (``fusion_layer=0``, key/value width = text width);
- with ``config.momentum``: the momentum copies ``visual_encoder_m``, ``text_encoder_m`` and
  ``text_decoder_m`` that distil into the decoder logits during training.

Loading a pretraining checkpoint applies the official load-time rewrite of ``VQA.py``: the
encoder takes every layer (``bert.`` stripped) and the decoder takes fusion layers 6-11 as its
layers 0-5, plus the embeddings and the MLM head (the momentum copies alike). The released VQA
file lacks ``text_decoder_m.*`` (ALBEF#101); they are recreated as copies of ``text_decoder``,
what the official ``copy_params`` makes them at construction.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from blipx.layers.bert import BertLMHead, BertModel
from blipx.layers.vit import VisionTransformer
from blipx.losses.lm import lm_loss
from blipx.models.base import BlipxModel, Checkpoint
from blipx.models.blip_vqa import (
    RankOutput,
    VqaOutput,
    _all_names,
    _resolve_config,
    answer_rows,
    answer_targets,
    fresh_cross_kv,
    rank_answers,
    weighted_answer_loss,
)
from blipx.models.config import ModelConfig
from blipx.models.contrastive import MomentumTowers

_MOMENTUM_PAIRS = ("visual_encoder", "text_encoder", "text_decoder")
_TEXT_KEY = re.compile(r"(text_encoder(?:_m)?)\.(?:bert\.)?(.*)")
_LAYER_KEY = re.compile(r"encoder\.layer\.(\d+)\.(.*)")


def vqa_state_dict_from_pretrain(sd: dict[str, torch.Tensor], fusion_layer: int) -> dict[str, torch.Tensor]:
    """salesforce/ALBEF ``VQA.py``'s load-time rewrite of a pretraining (or retrieval) state dict:
    ``text_encoder(_m).bert.X`` -> ``text_encoder(_m).X`` (all layers); fusion layers
    ``n >= fusion_layer`` -> ``text_decoder(_m).bert.encoder.layer.{n - fusion_layer}``; the
    embeddings -> ``text_decoder(_m).bert.embeddings``; ``cls.*`` (MLM head) -> the decoder's
    only. A state dict that already has a ``text_decoder`` (the VQA layout) is returned as is."""
    if any(k.startswith("text_decoder.") for k in sd):
        return sd
    out = {}
    for k, v in sd.items():
        m = _TEXT_KEY.fullmatch(k)
        if m is None:
            out[k] = v
            continue
        enc, rest = m.groups()
        dec = enc.replace("text_encoder", "text_decoder")
        if rest.startswith("cls."):
            out[f"{dec}.{rest}"] = v
            continue
        out[f"{enc}.{rest}"] = v
        layer = _LAYER_KEY.fullmatch(rest)
        if layer is None:  # embeddings
            out[f"{dec}.bert.{rest}"] = v
        elif int(layer.group(1)) >= fusion_layer:
            out[f"{dec}.bert.encoder.layer.{int(layer.group(1)) - fusion_layer}.{layer.group(2)}"] = v
    return out


def with_missing_momentum(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A file with momentum copies for some pairs but not others (the released ALBEF VQA
    checkpoint has no ``text_decoder_m.*``): each missing ``X_m`` becomes a copy of ``X``, as
    ``copy_params`` initialises it. A file with no momentum copy at all is left alone (the
    loader copies every pair then)."""
    if not any(k.split(".", 1)[0] in {f"{n}_m" for n in _MOMENTUM_PAIRS} for k in sd):
        return sd
    out = dict(sd)
    for name in _MOMENTUM_PAIRS:
        if not any(k.startswith(f"{name}_m.") for k in sd):
            out.update({f"{name}_m.{k[len(name) + 1:]}": v for k, v in sd.items() if k.startswith(f"{name}.")})
    return out


def decoder_config(config: ModelConfig):
    """The answer decoder's text config (official ``config_decoder``): ``num_layers -
    fusion_layer`` layers (6), cross-attention in all of them, over the question states."""
    t = config.text
    return replace(t, num_layers=t.num_layers - t.fusion_layer, fusion_layer=0, encoder_width=t.hidden_size)


class AlbefVqa(MomentumTowers, BlipxModel):
    """``visual_encoder`` + multimodal ``text_encoder`` (question) + 6-layer ``text_decoder``
    (answers), and with ``config.momentum`` their ``*_m`` copies. Questions are ALBEF-tokenized
    (``[CLS] tokens``, no [SEP]); answers are ``[CLS] answer [SEP]`` (the official dataset
    appends ``eos='[SEP]'`` to each answer), [CLS] serving as the decoder's bos."""

    family = "albef"
    _ignore_keys = (r"(vision|text)_proj(_m)?\..*", r"itm_head\..*", r"temp")
    _momentum = _MOMENTUM_PAIRS

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.visual_encoder = VisionTransformer(config.vision)
        self.text_encoder = BertModel(config.text)
        self.text_decoder = BertLMHead(decoder_config(config))
        if config.momentum:
            self._build_momentum()

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, *, config=None, strict: bool = True, **overrides: Any):
        """As :meth:`BlipxModel.from_checkpoint`, after the official pretraining -> VQA rewrite
        (:func:`vqa_state_dict_from_pretrain`), the recreation of missing momentum copies
        (:func:`with_missing_momentum`) and :func:`blipx.models.blip_vqa.fresh_cross_kv`."""
        cfg = _resolve_config(ckpt, config, overrides)
        sd = with_missing_momentum(vqa_state_dict_from_pretrain(_all_names(ckpt, cls), cfg.text.fusion_layer))
        sd, fresh = fresh_cross_kv(sd, cfg)
        model = super().from_checkpoint(replace(ckpt, state_dict=sd), config=config, strict=strict, **overrides)
        model.load_report.kept_init.extend(k for k in fresh if k in model.state_dict())  # not ignored _m
        return model

    def encode_question(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask=None,
                        momentum: bool = False) -> VqaOutput:
        """Image embeddings, then all text layers (the fusion ones cross-attend to the image)
        -> ``VqaOutput(image_embeds, question_embeds [B, Tq, H])``."""
        vis, enc = ((self.visual_encoder_m, self.text_encoder_m) if momentum
                    else (self.visual_encoder, self.text_encoder))
        image_embeds = vis(pixel_values)
        q = enc(input_ids, attention_mask, encoder_hidden_states=image_embeds).last_hidden_state
        return VqaOutput(image_embeds, q)

    def answer_logits(self, question_states, question_mask, answer_ids, answer_mask=None, momentum: bool = False):
        """Decoder logits [N, Ta, V] over answers; N may be a multiple G of the questions (rows
        b*G.. share question b's K/V)."""
        dec = self.text_decoder_m if momentum else self.text_decoder
        logits, _ = dec(answer_ids, answer_mask, encoder_hidden_states=question_states,
                        encoder_attention_mask=question_mask, is_decoder=True)
        return logits

    def answer_loss(self, pixel_values, input_ids, attention_mask, answer_ids, answer_mask, answer_weights,
                    answer_counts, alpha: float = 0.0, momentum_step=None) -> torch.Tensor:
        """The official training forward (``ALBEF.forward(train=True)``; arguments as
        :meth:`blipx.models.BlipVqa.answer_loss`, ids as tokenized): ``sum(weight *
        per-answer loss) / B``, the per-answer loss being the decoder's per-sequence CE sum (no
        label smoothing, salesforce/ALBEF ``models/xbert.py``) mixed with distillation when the
        model has momentum copies and ``alpha > 0``: ``(1 - alpha) * CE + alpha * sum over answer
        tokens of -sum_v softmax(momentum logits) * log_softmax(logits)``.

        ``momentum_step``: called between the online question forward and the momentum forward
        (the official place of ``_momentum_update``); the task passes its EMA step."""
        n = answer_ids.shape[0]
        q = self.encode_question(pixel_values, input_ids, attention_mask).question_embeds
        states, mask = answer_rows(q, attention_mask, answer_counts, n)
        targets = answer_targets(answer_ids, self.config.text.pad_token_id)
        logits = self.answer_logits(states, mask, answer_ids, answer_mask)
        per_answer = lm_loss(logits, targets, label_smoothing=0.0, reduction="none")
        if self.has_momentum and alpha > 0:
            with torch.no_grad():
                if momentum_step is not None:
                    momentum_step()
                q_m = self.encode_question(pixel_values, input_ids, attention_mask, momentum=True).question_embeds
                states_m, _ = answer_rows(q_m, attention_mask, answer_counts, n)
                logits_m = self.answer_logits(states_m, mask, answer_ids, answer_mask, momentum=True)
            per_answer = (1 - alpha) * per_answer + alpha * distillation_per_sequence(logits, logits_m, targets)
        elif momentum_step is not None:
            momentum_step()
        return weighted_answer_loss(per_answer, answer_weights, pixel_values.shape[0])

    @torch.no_grad()
    def rank_answers(self, pixel_values, input_ids, attention_mask, answer_ids, answer_mask,
                     k_test: int = 128) -> RankOutput:
        """Official ``forward(train=False)``: :func:`blipx.models.blip_vqa.rank_answers` without
        label smoothing and with ALBEF's extra log p(first token)."""
        q = self.encode_question(pixel_values, input_ids, attention_mask).question_embeds
        return rank_answers(self.text_decoder, q, attention_mask, answer_ids, answer_mask, k_test,
                            add_first_token_logprob=True)

    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask=None, **kw):
        """Free-form answer ids [B * n, 1 + new] from [CLS] (ALBEF's decoder bos), ending at [SEP].
        The official ALBEF ranks only; this decodes with :func:`blipx.generation.generate` (the
        question K/V shared by the beams) under the question padding mask, as training sees it."""
        from blipx.generation import check_pixel_values, generate

        check_pixel_values(pixel_values)
        q = self.encode_question(pixel_values, input_ids, attention_mask).question_embeds
        bos = torch.full((q.shape[0], 1), self.config.text.cls_token_id, dtype=torch.long, device=q.device)
        return generate(self.text_decoder, q, bos, encoder_mask=attention_mask, **kw)

    def forward(self, pixel_values, input_ids, attention_mask=None, decoder_input_ids=None,
                decoder_attention_mask=None) -> VqaOutput:
        out = self.encode_question(pixel_values, input_ids, attention_mask)
        if decoder_input_ids is not None:
            out.logits = self.answer_logits(out.question_embeds, attention_mask, decoder_input_ids,
                                            decoder_attention_mask)
        return out


def distillation_per_sequence(logits: torch.Tensor, logits_m: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[N] per-sequence sums of ``-sum_v softmax(logits_m) * log_softmax(logits)`` over the
    positions that predict a target (shifted by one as the LM loss; -100 targets excluded), in
    fp32: ``loss_distill`` of salesforce/ALBEF ``models/xbert.py`` ``BertLMHeadModel``."""
    keep = (targets[:, 1:] != -100).float()
    soft = F.softmax(logits_m[:, :-1].float(), dim=-1)
    per_token = -(F.log_softmax(logits[:, :-1].float(), dim=-1) * soft).sum(dim=-1)
    return (per_token * keep).sum(dim=1)


__all__ = ["AlbefVqa", "decoder_config", "distillation_per_sequence", "vqa_state_dict_from_pretrain",
           "with_missing_momentum"]
