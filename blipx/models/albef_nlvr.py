"""ALBEF NLVR2 models (salesforce/ALBEF ``models/model_nlvr.py``, ``models/model_pretrain_nlvr.py``,
``models/xbert.py``, ``NLVR.py``, ``Pretrain_nlvr.py``).

ALBEF reads a pair of images by running each fusion layer twice: the BERT tower is expanded from
``N`` layers (12) to ``F + 2 (N - F)`` (18; ``F`` = ``fusion_layer`` = 6). Layers below ``F``
are the text layers; fusion layer ``n >= F`` becomes layers ``F + 2(n - F)`` and
``F + 2(n - F) + 1``, which cross-attend to image ``(layer - F) % 2`` -- image 0, then image 1
(xbert.py ``encoder_hidden_states[(layer_num - fusion_layer) % len(encoder_hidden_states)]``)
-- and **share their cross-attention key / value weights** (``share_cross_attention``: the
first layer of each pair takes the second's Parameters). Everything else of a pair (self-
attention, cross-attention query and output, FFN) is its own copy.

- :class:`AlbefNlvr` (model_nlvr.py): ``visual_encoder`` + the expanded ``text_encoder`` +
  ``cls_head`` = ``Linear(H, H) -> ReLU -> Linear(H, 2)`` on [CLS]; with ``config.momentum``
  (official ``distill: True``) the momentum copies ``visual_encoder_m``, ``text_encoder_m``,
  ``cls_head_m`` distil into the logits (:class:`blipx.train.nlvr.AlbefNlvrTask`).
- :class:`AlbefNlvrPretrainer` (model_pretrain_nlvr.py): the extra 1-epoch "text assignment"
  pre-training: ``ta_head`` = ``Linear(H, 3)`` says whether a caption belongs to the left image
  (0), the right image (1) or neither (2); ``vision_proj`` picks similar images as the other
  member of a pair; ``text_proj`` and ``temp`` are kept (unused, as there) so the layout matches.

``config`` holds the **unexpanded** tower (``albef_base``: 12 layers, fusion 6); the model
builds the 18 layers from it, so a pretraining folder and an NLVR folder share one config.

Loading (both classes): a pretraining checkpoint (``text_encoder.bert.*``, 12 layers) is
rewritten as ``Pretrain_nlvr.py`` does (``bert.`` dropped, fusion layer n copied to
``F + 2(n - F)`` and ``F + 2(n - F) + 1``; the momentum tower alike; a retrieval file's bare
``text_encoder.*`` the same way); an expanded file (the text-assignment checkpoint, the
fine-tuned NLVR layout) loads as is. A head absent from the file (``cls_head`` from a
pretraining or text-assignment file, ``ta_head`` from a pretraining file) keeps a fresh
N(0, initializer_range) draw (``load_report.kept_init``). The momentum copies of a file that
has none start as copies of the loaded online weights; official ``NLVR.py`` calls
``copy_params()`` *before* ``load_state_dict``, so its momentum model starts from the
un-loaded initial weights instead -- blipx copies after loading, as everywhere else.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blipx.layers.bert import BertModel
from blipx.layers.configs import TextConfig
from blipx.layers.vit import VisionTransformer
from blipx.models.base import BlipxModel, Checkpoint
from blipx.models.blip_nlvr import add_fresh, nlvr_head, report_fresh, split_pair
from blipx.models.blip_vqa import _all_names, _resolve_config
from blipx.models.config import ModelConfig
from blipx.models.contrastive import MomentumTowers

_MOMENTUM_PAIRS = ("visual_encoder", "text_encoder", "cls_head")
_TEXT_LAYER = re.compile(r"text_encoder\.(?:bert\.)?encoder\.layer\.(\d+)\..*")
_ALBEF_TEXT = re.compile(r"text_encoder(?:_m)?\..*")
# Text-assignment classes: 0 = the caption is the left image's, 1 = the right image's, 2 = neither.
TA_CLASSES = 3


def nlvr_text_config(text: TextConfig) -> TextConfig:
    """The expanded tower: ``F + 2 (N - F)`` layers (model_nlvr.py: ``num_hidden_layers = 18``)."""
    return replace(text, num_layers=text.fusion_layer + 2 * (text.num_layers - text.fusion_layer))


def share_cross_attention(bert: BertModel, fusion_layer: int) -> None:
    """model_nlvr.py ``share_cross_attention``: in each pair of expanded fusion layers
    (``F + 2i``, ``F + 2i + 1``) the first takes the second's cross-attention key and value
    Parameters (weight and bias)."""
    layers = bert.encoder.layer
    for i in range((len(layers) - fusion_layer) // 2):
        first = layers[fusion_layer + 2 * i].crossattention.self
        second = layers[fusion_layer + 2 * i + 1].crossattention.self
        for name in ("key", "value"):
            a, b = getattr(first, name), getattr(second, name)
            a.weight = b.weight
            a.bias = b.bias


def pair_cross_kv(bert: BertModel, fusion_layer: int, image0: torch.Tensor, image1: torch.Tensor):
    """Cross-attention K/V of every layer of the expanded tower: layer ``i >= F`` projects image
    ``(i - F) % 2`` (xbert.py's list ``encoder_hidden_states``); None for the text layers."""
    images = (image0, image1)
    return [layer.crossattention.project_kv(images[(i - fusion_layer) % 2]) if hasattr(layer, "crossattention")
            else None for i, layer in enumerate(bert.encoder.layer)]


def nlvr_state_dict_from_pretrain(sd: dict[str, torch.Tensor], fusion_layer: int) -> dict[str, torch.Tensor]:
    """salesforce/ALBEF ``Pretrain_nlvr.py``'s load loop: every ``text_encoder(_m).bert.X`` key
    loses ``bert.``; an ``encoder.layer.n`` key with ``n >= fusion_layer`` is copied to layers
    ``F + 2(n - F)`` and ``F + 2(n - F) + 1`` (the same tensor under both names). Keys of a bare
    ``text_encoder(_m).*`` tower (retrieval files; the official loop only rewrites keys that
    contain 'bert') are expanded the same way; everything else is kept."""
    out = {}
    for key, v in sd.items():
        if "bert" not in key and not _ALBEF_TEXT.fullmatch(key):
            out[key] = v
            continue
        new_key = key.replace("bert.", "")
        keys = new_key.split(".")
        if "layer" in new_key and keys[1:3] == ["encoder", "layer"]:
            n = int(keys[3])
            if n >= fusion_layer:
                for j in (0, 1):
                    keys[3] = str((n - fusion_layer) * 2 + fusion_layer + j)
                    out[".".join(keys)] = v
                continue
        out[new_key] = v
    return out


def _text_layers(sd: dict[str, torch.Tensor]) -> int:
    idx = [int(m.group(1)) for k in sd if (m := _TEXT_LAYER.fullmatch(k))]
    return max(idx) + 1 if idx else 0


def _fold_inferred(cfg: ModelConfig) -> ModelConfig:
    """An expanded official file's inferred config (18 layers) -> the unexpanded tower (12)."""
    t = cfg.text
    extra = t.num_layers - t.fusion_layer
    if extra % 2:
        raise ValueError(f"an NLVR text tower has F + 2k layers; this file has {t.num_layers} with fusion layer "
                         f"{t.fusion_layer}: pass config=")
    return replace(cfg, text=replace(t, num_layers=t.fusion_layer + extra // 2))


class _AlbefNlvrBase(BlipxModel):
    """ViT + the expanded text tower with shared pair K/V, and the load-time rewrite."""

    family = "albef"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.visual_encoder = VisionTransformer(config.vision)
        self.text_encoder = BertModel(nlvr_text_config(config.text))
        share_cross_attention(self.text_encoder, config.text.fusion_layer)

    def encode_pair(self, image0: torch.Tensor, image1: torch.Tensor, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor | None = None, momentum: bool = False) -> torch.Tensor:
        """All expanded layers on the statement ids (ALBEF-tokenized: ``[CLS] tokens``), the fusion
        pairs cross-attending to image0 then image1 -> [B, T, H]. The image attention mask is
        all ones in the official code, so none is applied."""
        enc = self.text_encoder_m if momentum else self.text_encoder
        kv = pair_cross_kv(enc, self.config.text.fusion_layer, image0, image1)
        return enc(input_ids, attention_mask, cross_kv=kv).last_hidden_state

    @classmethod
    def _fresh_heads(cls, sd: dict[str, torch.Tensor], cfg: ModelConfig) -> list[str]:
        raise NotImplementedError

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, *, config: str | ModelConfig | None = None, strict: bool = True,
                        **overrides: Any):
        """As :meth:`BlipxModel.from_checkpoint`, after the ``Pretrain_nlvr.py`` rewrite of an
        unexpanded (pretraining / retrieval) file and a fresh head where the file has none."""
        sd = _all_names(ckpt, cls)
        if ckpt.format == "official" and ckpt.config is not None and config is None \
                and any(k.startswith(("cls_head.", "ta_head.")) for k in sd):
            ckpt = replace(ckpt, config=_fold_inferred(ckpt.config))  # shape inference counted 18 layers
        cfg = _resolve_config(ckpt, config, overrides)
        if _text_layers(sd) != nlvr_text_config(cfg.text).num_layers:
            sd = nlvr_state_dict_from_pretrain(sd, cfg.text.fusion_layer)
        fresh = cls._fresh_heads(sd, cfg)
        model = super().from_checkpoint(replace(ckpt, state_dict=sd), config=config, strict=strict, **overrides)
        report_fresh(model, fresh)
        return model


class AlbefNlvr(MomentumTowers, _AlbefNlvrBase):
    """ALBEF NLVR2 (model_nlvr.py); see the module docstring.

    ``forward(pixel_values, input_ids, attention_mask, momentum=False)``: ``pixel_values``
    [2B, 3, S, S] are the B left images then the B right images (official
    ``torch.cat([image0, image1])``), ``input_ids`` [B, T] the statements; returns the logits
    [B, 2] (class 1 = true). ``momentum=True`` runs the momentum copies (distillation targets)."""

    _ignore_keys = (r"(vision|text)_proj(_m)?\..*", r"itm_head(_m)?\..*", r"temp", r"ta_head\..*",
                    r"text_encoder(_m)?\.cls\..*")
    _momentum = _MOMENTUM_PAIRS

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.cls_head = nlvr_head(config.text.hidden_size)
        if config.momentum:
            self._build_momentum()  # deep copies: the pair K/V sharing carries over

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                momentum: bool = False) -> torch.Tensor:
        vis, head = (self.visual_encoder_m, self.cls_head_m) if momentum else (self.visual_encoder, self.cls_head)
        image0, image1 = split_pair(vis(pixel_values), input_ids.shape[0])
        return head(self.encode_pair(image0, image1, input_ids, attention_mask, momentum)[:, 0])

    @classmethod
    def _fresh_heads(cls, sd, cfg):
        fresh = []
        if not any(k.startswith("cls_head.") for k in sd):
            fresh = add_fresh(sd, "cls_head", nlvr_head(cfg.text.hidden_size), cfg.initializer_range)
        if cfg.momentum and any(k.startswith("visual_encoder_m.") for k in sd) \
                and not any(k.startswith("cls_head_m.") for k in sd):
            # The momentum towers come from the file, the head never does: its copy starts equal
            # to the head, as copy_params makes it.
            copies = {f"cls_head_m.{k[len('cls_head.'):]}": v.clone() for k, v in sd.items()
                      if k.startswith("cls_head.")}
            sd.update(copies)
            fresh += list(copies) if fresh else []
        return fresh


class AlbefNlvrPretrainer(_AlbefNlvrBase):
    """ALBEF's text-assignment pre-training model (model_pretrain_nlvr.py); the sampling of the
    image pairs is the task's (:class:`blipx.train.nlvr.AlbefTextAssignmentTask`)."""

    _ignore_keys = (r"itm_head(_m)?\..*", r"text_encoder(_m)?\.cls\..*", r"cls_head(_m)?\..*",
                    r"(vision|text)_proj_m\..*")

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        h = config.text.hidden_size
        self.vision_proj = nn.Linear(config.vision.width, config.embed_dim)
        self.text_proj = nn.Linear(h, config.embed_dim)  # unused, as in model_pretrain_nlvr.py
        self.temp = nn.Parameter(torch.tensor(0.07))  # unused, as there
        self.ta_head = nn.Linear(h, TA_CLASSES)

    def image_features(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """L2-normalised ``vision_proj`` of the image [CLS] (what picks the pair's other image)."""
        return F.normalize(self.vision_proj(image_embeds[:, 0]), dim=-1)

    def ta_logits(self, image0: torch.Tensor, image1: torch.Tensor, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Text-assignment logits [B, 3] of the captions against (image0, image1) embeddings."""
        return self.ta_head(self.encode_pair(image0, image1, input_ids, attention_mask)[:, 0])

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """Logits [B, 3] of caption b against images ``left[b]`` and ``right[b]`` of the batch."""
        image_embeds = self.visual_encoder(pixel_values)
        return self.ta_logits(image_embeds.index_select(0, left), image_embeds.index_select(0, right), input_ids,
                              attention_mask)

    @classmethod
    def _fresh_heads(cls, sd, cfg):
        if any(k.startswith("ta_head.") for k in sd):
            return []
        return add_fresh(sd, "ta_head", nn.Linear(cfg.text.hidden_size, TA_CLASSES), cfg.initializer_range)


__all__ = ["AlbefNlvr", "AlbefNlvrPretrainer", "TA_CLASSES", "nlvr_state_dict_from_pretrain", "nlvr_text_config",
           "pair_cross_kv", "share_cross_attention"]
