"""Visual entailment (SNLI-VE): ALBEF's VE model (salesforce/ALBEF ``models/model_ve.py``, ``VE.py``)
and a BLIP twin.

``AlbefVe``: ``visual_encoder`` + ``text_encoder`` (the whole ALBEF text tower run multimodally:
text layers, then the fusion layers cross-attending to the image) + ``cls_head`` =
``Linear(H, H) -> ReLU -> Linear(H, 3)`` on the fused [CLS] state (checkpoint keys
``cls_head.0.*`` / ``cls_head.2.*``). With ``config.momentum`` (official ``distill: True``) the
momentum copies ``visual_encoder_m``, ``text_encoder_m`` and ``cls_head_m`` distil into the
logits during training (:class:`blipx.train.ve.VeTask`). Class indices are the official ones:
0 contradiction, 1 neutral, 2 entailment (:data:`blipx.data.ve.LABELS`).

Loading: the official VE checkpoint layout (``visual_encoder``, ``text_encoder`` without
``bert.``, ``cls_head``, their ``_m`` copies and ``position_ids`` buffers) loads with nothing
missing or unexpected. A pretraining (or retrieval) checkpoint converts as ``VE.py`` does it:
``text_encoder.bert.X`` -> ``text_encoder.X`` (the momentum tower alike), the MLM head, ITC
projections, ITM head, ``temp`` and queues are not used (reported in ``load_report.ignored``),
and the head, absent from such a file, keeps a fresh N(0, initializer_range) draw (reported in
``load_report.kept_init``); ``cls_head_m`` starts as a copy of it, as ``copy_params`` makes it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from blipx.layers.bert import BertModel
from blipx.layers.vit import VisionTransformer
from blipx.models.base import BlipxModel, Checkpoint
from blipx.models.blip import with_first_token
from blipx.models.blip_vqa import _all_names, _resolve_config
from blipx.models.config import ModelConfig
from blipx.models.contrastive import MomentumTowers
from blipx.models.init import init_weights_

NUM_CLASSES = 3
_MOMENTUM_PAIRS = ("visual_encoder", "text_encoder", "cls_head")
# Keys of pretraining / retrieval files that no VE model uses (queues never reach the loader).
_PRETRAIN_HEADS = (r"(vision|text)_proj(_m)?\..*", r"itm_head(_m)?\..*", r"temp")


def ve_head(hidden: int) -> nn.Sequential:
    """``cls_head`` of model_ve.py: ``Linear(H, H) -> ReLU -> Linear(H, 3)``."""
    return nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, NUM_CLASSES))


@dataclass
class VeOutput:
    logits: torch.Tensor  # [B, 3]: 0 contradiction, 1 neutral, 2 entailment
    image_embeds: torch.Tensor | None = None


class _VeModel(MomentumTowers, BlipxModel):
    """Shared body of the VE models: ViT + multimodal text encoder + ``cls_head`` (+ momentum)."""

    _ignore_keys = _PRETRAIN_HEADS
    _momentum = _MOMENTUM_PAIRS

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.visual_encoder = VisionTransformer(config.vision)
        self.text_encoder = BertModel(config.text)
        self.cls_head = ve_head(config.text.hidden_size)
        if config.momentum:
            self._build_momentum()

    def _encoder_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return input_ids

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                momentum: bool = False) -> VeOutput:
        """Logits [B, 3] of ``cls_head(text_encoder(ids | image)[:, 0])`` (model_ve.py ``forward``);
        ``momentum=True`` runs the momentum copies (the distillation targets)."""
        vis, enc, head = ((self.visual_encoder_m, self.text_encoder_m, self.cls_head_m) if momentum
                          else (self.visual_encoder, self.text_encoder, self.cls_head))
        image_embeds = vis(pixel_values)
        if pixel_values.shape[0] == 0:  # an empty batch (the cross-attention op divides by B)
            return VeOutput(image_embeds.new_zeros(0, NUM_CLASSES), image_embeds)
        h = enc(self._encoder_ids(input_ids), attention_mask, encoder_hidden_states=image_embeds).last_hidden_state
        return VeOutput(head(h[:, 0]), image_embeds)

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, *, config: str | ModelConfig | None = None, strict: bool = True,
                        **overrides: Any):
        """As :meth:`BlipxModel.from_checkpoint`; a checkpoint without ``cls_head`` (pretraining,
        retrieval) gets a fresh head, as ``VE.py``'s ``load_state_dict(strict=False)`` leaves it."""
        cfg = _resolve_config(ckpt, config, overrides)
        sd = _all_names(ckpt, cls)
        fresh: list[str] = []
        if not any(k.startswith("cls_head.") for k in sd):
            head = init_weights_(ve_head(cfg.text.hidden_size), std=cfg.initializer_range)
            for k, v in head.state_dict().items():
                sd[f"cls_head.{k}"] = v
                fresh.append(f"cls_head.{k}")
        if cfg.momentum and any(k.startswith("visual_encoder_m.") for k in sd) \
                and not any(k.startswith("cls_head_m.") for k in sd):
            # The other momentum towers come from the file; the head's copy starts equal to the
            # head (official copy_params at construction; the head is never in such a file).
            copies = {f"cls_head_m.{k[len('cls_head.'):]}": v.clone() for k, v in sd.items()
                      if k.startswith("cls_head.")}
            sd.update(copies)
            if fresh:
                fresh += list(copies)
        model = super().from_checkpoint(replace(ckpt, state_dict=sd), config=config, strict=strict, **overrides)
        drawn = set(fresh)
        model.load_report.kept_init.extend(fresh)
        model.load_report.loaded = [k for k in model.load_report.loaded if k not in drawn]
        return model


class AlbefVe(_VeModel):
    """ALBEF visual entailment (salesforce/ALBEF ``models/model_ve.py``): ids as ALBEF tokenizes
    them (``[CLS] tokens``, no [SEP]); every text layer runs, the fusion ones cross-attend to
    the image; ``cls_head`` reads the [CLS] state. See the module docstring for the layouts."""

    family = "albef"
    _ignore_keys = _PRETRAIN_HEADS + (r"text_encoder(_m)?\.cls\..*",)


class BlipVe(_VeModel):
    """The ALBEF VE head on BLIP's image-grounded (ITM) encoder: a **blipx extension** -- BLIP
    has no visual-entailment model -- so that VE can fine-tune from a BLIP checkpoint (the
    synthetic shapes-VE starts from the demo's BLIP model). The encoder reads ``[ENC]`` in
    column 0 (written here, as BLIP's own ITM / NLVR forwards write it over [CLS]) and
    cross-attends to the image in every layer; ``cls_head`` (same layout as ALBEF's) reads the
    [ENC] state. Loads BLIP pretraining / retrieval checkpoints (encoder + ViT; the decoder,
    projections and ITM head are ignored) with a fresh head."""

    family = "blip"
    _ignore_keys = _PRETRAIN_HEADS + (r"text_decoder(_m)?\..*",)

    def _encoder_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return with_first_token(input_ids, self.config.text.enc_token_id)


__all__ = ["AlbefVe", "BlipVe", "NUM_CLASSES", "VeOutput", "ve_head"]
