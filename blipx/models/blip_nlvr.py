"""BLIP NLVR2 model (salesforce/BLIP ``models/blip_nlvr.py`` + ``models/nlvr_encoder.py``).

A statement about a pair of images is true or false. ``BlipNlvr`` runs the ViT once over both
images (``[image0; image1]``, 2B rows), and an image-grounded text encoder whose every
cross-attention block has two attentions, one per image:

- ``crossattention.self0`` attends to image 0, ``crossattention.self1`` to image 1 (each its own
  query / key / value);
- ``crossattention.output.dense0`` / ``dense1`` project the two attention outputs; in layers < 6
  the two projections are **averaged**, in layers >= 6 they are **concatenated** and mapped back
  by ``crossattention.output.merge_layer`` (Linear 2H -> H; no activation: the official ``act``
  is commented out); then dropout, and one ``LayerNorm(. + residual)`` (``output.LayerNorm``);
- ``cls_head`` = ``Linear(H, H) -> ReLU -> Linear(H, 2)`` on the [ENC] state (index 1 = true).

The text reads ``[ENC]`` in column 0 (written by :meth:`BlipNlvr.forward` over the tokenizer's
[CLS], as the official forward does). Every text-to-image attention still goes through the
grouped cross-attention op (:func:`blipx.layers.attention.cross_attention`).

Loading: the official fine-tuned NLVR layout (``visual_encoder`` + the two-attention
``text_encoder`` + ``cls_head.{0,2}``) loads with nothing missing or unexpected. A BLIP
pretraining or retrieval checkpoint (official ``.pth`` or a blipx folder) converts as the
official ``load_checkpoint`` of blip_nlvr.py does: every ``crossattention.self.*`` key is
duplicated into ``self0`` and ``self1``, every ``crossattention.output.dense.*`` into ``dense0``
and ``dense1``; ``merge_layer`` and ``cls_head``, absent from such files, keep a fresh
N(0, initializer_range) draw (listed in ``load_report.kept_init``); the decoder, ITC
projections, ITM head and momentum copies are listed in ``load_report.ignored``.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from blipx.layers.attention import _QKV, cross_attention, merge_heads, split_heads
from blipx.layers.bert import BertModel
from blipx.layers.configs import TextConfig
from blipx.layers.vit import VisionTransformer
from blipx.models.base import BlipxModel, Checkpoint
from blipx.models.blip import with_first_token
from blipx.models.blip_vqa import _all_names, _resolve_config
from blipx.models.config import ModelConfig
from blipx.models.init import init_weights_

# salesforce/BLIP models/nlvr_encoder.py: ``merge=(is_cross_attention and layer_num>=6)``.
MERGE_FROM_LAYER = 6
_PRETRAIN_HEADS = (r"text_decoder(_m)?\..*", r"(vision|text)_proj(_m)?\..*", r"itm_head(_m)?\..*", r"temp")


def nlvr_head(hidden: int) -> nn.Sequential:
    """``cls_head`` of blip_nlvr.py / model_nlvr.py: ``Linear(H, H) -> ReLU -> Linear(H, 2)``."""
    return nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2))


class NlvrSelfOutput(nn.Module):
    """nlvr_encoder.py ``BertSelfOutput(twin=True, merge=...)``: ``dense0`` / ``dense1`` on the two
    attention outputs, averaged (``merge=False``) or concatenated and mapped by ``merge_layer``,
    then ``LayerNorm(dropout(.) + residual)``."""

    def __init__(self, hidden: int, eps: float, dropout: float, merge: bool) -> None:
        super().__init__()
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.dense0 = nn.Linear(hidden, hidden)
        self.dense1 = nn.Linear(hidden, hidden)
        self.merge = merge
        if merge:
            self.merge_layer = nn.Linear(2 * hidden, hidden)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        h0, h1 = self.dense0(x0), self.dense1(x1)
        h = self.merge_layer(torch.cat([h0, h1], dim=-1)) if self.merge else (h0 + h1) / 2
        return self.LayerNorm(self.dropout(h) + residual)


class NlvrCrossAttention(nn.Module):
    """nlvr_encoder.py ``BertAttention(is_cross_attention=True)``: ``self0`` over image 0 and
    ``self1`` over image 1, combined by :class:`NlvrSelfOutput`. K/V come in projected
    (:meth:`project_kv`), a pair per layer; attention-probability dropout is not applied (the
    fused op has none), as in :class:`blipx.layers.attention.BertCrossAttention`."""

    def __init__(self, hidden: int, kv_width: int, heads: int, eps: float, dropout: float, merge: bool) -> None:
        super().__init__()
        self.heads = heads
        self.self0 = _QKV(hidden, kv_width)
        self.self1 = _QKV(hidden, kv_width)
        self.output = NlvrSelfOutput(hidden, eps, dropout, merge)

    def project_kv(self, images: tuple[torch.Tensor, torch.Tensor]):
        """(image0 [B, Lk, W], image1 [B, Lk, W]) -> ((K0, V0), (K1, V1)), each [B, H, Lk, D]."""
        return tuple((split_heads(s.key(img), self.heads), split_heads(s.value(img), self.heads))
                     for s, img in zip((self.self0, self.self1), images, strict=True))

    def forward(self, x: torch.Tensor, kv, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        outs = [merge_heads(cross_attention(split_heads(s.query(x), self.heads), k, v,
                                            key_padding_mask=key_padding_mask))
                for s, (k, v) in zip((self.self0, self.self1), kv, strict=True)]
        return self.output(outs[0], outs[1], x)


class NlvrBertModel(BertModel):
    """BLIP's NLVR text encoder (nlvr_encoder.py ``BertModel``): the BLIP text tower whose
    cross-attention layers are :class:`NlvrCrossAttention` (merge from layer 6 on). Same
    forward as :class:`blipx.layers.bert.BertModel`; ``encoder_hidden_states`` is the pair
    ``(image0, image1)`` and ``cross_kv`` a list of K/V pairs (:meth:`project_cross_kv`)."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__(replace(cfg, fusion_layer=cfg.num_layers))  # layers without cross-attention ...
        self.config = cfg
        for i, layer in enumerate(self.encoder.layer):  # ... then the two-image one (BertLayer.forward runs it)
            if i >= cfg.fusion_layer:
                layer.crossattention = NlvrCrossAttention(cfg.hidden_size, cfg.encoder_width, cfg.num_heads,
                                                          cfg.layer_norm_eps, cfg.hidden_dropout,
                                                          merge=i >= MERGE_FROM_LAYER)

    def project_cross_kv(self, encoder_hidden_states):
        """The K/V pair of every cross-attention layer for ``(image0, image1)`` (None elsewhere)."""
        pair = tuple(encoder_hidden_states)
        if len(pair) != 2:
            raise ValueError(f"the NLVR text encoder attends to a pair of images, got {len(pair)} image tensors")
        return [layer.crossattention.project_kv(pair) if hasattr(layer, "crossattention") else None
                for layer in self.encoder.layer]


def split_pair(image_embeds: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[image0 rows; image1 rows]`` [2B, L, D] -> (image0 [B, L, D], image1 [B, L, D]) (the
    official ``torch.split(image_embeds, targets.size(0))``)."""
    if image_embeds.shape[0] != 2 * batch:
        raise ValueError(f"pixel_values must hold 2 * B = {2 * batch} images ([left images; right images]) for "
                         f"B = {batch} statements, got {image_embeds.shape[0]}")
    return image_embeds[:batch], image_embeds[batch:]


def twin_cross_attention_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """salesforce/BLIP blip_nlvr.py ``load_checkpoint``: each ``crossattention.self.X`` key becomes
    ``crossattention.self0.X`` and ``self1.X``, each ``crossattention.output.dense.X`` becomes
    ``dense0.X`` and ``dense1.X`` (the same tensor under both names); the source names are
    consumed (official: left in the dict, unused under ``strict=False``)."""
    out = {}
    for k, v in sd.items():
        if "crossattention.self." in k:
            out[k.replace("crossattention.self.", "crossattention.self0.")] = v
            out[k.replace("crossattention.self.", "crossattention.self1.")] = v
        elif "crossattention.output.dense." in k:
            out[k.replace("crossattention.output.dense.", "crossattention.output.dense0.")] = v
            out[k.replace("crossattention.output.dense.", "crossattention.output.dense1.")] = v
        else:
            out[k] = v
    return out


def add_fresh(sd: dict[str, torch.Tensor], prefix: str, module: nn.Module, std: float) -> list[str]:
    """Put a fresh N(0, std) draw of ``module`` into ``sd`` under ``prefix``: the weights the
    official loaders leave at their initial values (``load_state_dict(strict=False)``) when a
    converted file lacks them. Returns the names (for ``load_report.kept_init``)."""
    drawn = init_weights_(module, std=std).state_dict()
    sd.update({f"{prefix}.{k}": v for k, v in drawn.items()})
    return [f"{prefix}.{k}" for k in drawn]


def report_fresh(model: BlipxModel, fresh: list[str]) -> None:
    """Move the freshly drawn names from ``loaded`` to ``kept_init`` in the load report."""
    drawn = set(fresh)
    model.load_report.loaded = [k for k in model.load_report.loaded if k not in drawn]
    model.load_report.kept_init.extend(k for k in fresh if k not in model.load_report.kept_init)


class BlipNlvr(BlipxModel):
    """``visual_encoder`` + :class:`NlvrBertModel` ``text_encoder`` + ``cls_head`` (see the
    module docstring for the architecture and the layouts it loads).

    ``forward(pixel_values, input_ids, attention_mask)``: ``pixel_values`` [2B, 3, S, S] are the
    B left images then the B right images (official ``torch.cat([image0, image1])``);
    ``input_ids`` [B, T] the statements as tokenized ([CLS] first; [ENC] is written here).
    Returns the logits [B, 2] (official ``prediction``; class 1 = the statement is true)."""

    family = "blip"
    _ignore_keys = _PRETRAIN_HEADS

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.visual_encoder = VisionTransformer(config.vision)
        self.text_encoder = NlvrBertModel(config.text)
        self.cls_head = nlvr_head(config.text.hidden_size)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        image0, image1 = split_pair(self.visual_encoder(pixel_values), input_ids.shape[0])
        ids = with_first_token(input_ids, self.config.text.enc_token_id)
        cross_kv = self.text_encoder.project_cross_kv((image0, image1))
        h = self.text_encoder(ids, attention_mask, cross_kv=cross_kv).last_hidden_state
        return self.cls_head(h[:, 0])

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, *, config: str | ModelConfig | None = None, strict: bool = True,
                        **overrides: Any):
        """As :meth:`BlipxModel.from_checkpoint`; a file without the two-attention layers
        (pretraining, retrieval) is converted by :func:`twin_cross_attention_keys`, and gets a
        fresh ``merge_layer`` (layers >= 6) and ``cls_head``."""
        sd = _all_names(ckpt, cls)
        nlvr_layout = any(".crossattention.self0." in k for k in sd)
        if nlvr_layout and ckpt.format == "official" and ckpt.config is not None and config is None:
            ckpt = replace(ckpt, config=_nlvr_inferred_config(ckpt.config, sd))
        cfg = _resolve_config(ckpt, config, overrides)
        fresh: list[str] = []
        if not nlvr_layout:
            sd = twin_cross_attention_keys(sd)
            t = cfg.text
            for i in range(max(t.fusion_layer, MERGE_FROM_LAYER), t.num_layers):
                prefix = f"text_encoder.encoder.layer.{i}.crossattention.output.merge_layer"
                fresh += add_fresh(sd, prefix, nn.Linear(2 * t.hidden_size, t.hidden_size), cfg.initializer_range)
        if not any(k.startswith("cls_head.") for k in sd):
            fresh += add_fresh(sd, "cls_head", nlvr_head(cfg.text.hidden_size), cfg.initializer_range)
        model = super().from_checkpoint(replace(ckpt, state_dict=sd), config=config, strict=strict, **overrides)
        report_fresh(model, fresh)
        return model


def _nlvr_inferred_config(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> ModelConfig:
    """An official NLVR file's inferred config, corrected: shape inference looks for
    ``crossattention.self.key`` (absent here: ``self0``/``self1``), so it finds no cross-attention."""
    layer = re.compile(r"text_encoder\.encoder\.layer\.(\d+)\.crossattention\.self0\.key\.weight")
    cross = sorted(int(m.group(1)) for k in sd if (m := layer.fullmatch(k)))
    width = sd[f"text_encoder.encoder.layer.{cross[0]}.crossattention.self0.key.weight"].shape[1]
    return replace(cfg, text=replace(cfg.text, fusion_layer=cross[0], encoder_width=width))


__all__ = ["BlipNlvr", "MERGE_FROM_LAYER", "NlvrBertModel", "NlvrCrossAttention", "NlvrSelfOutput", "nlvr_head",
           "split_pair", "twin_cross_attention_keys"]
