"""Hugging Face ``transformers`` BLIP directories -> blipx (config and key names).

HF BLIP = the Salesforce network with renamed vision keys (transformers'
``convert_blip_original_pytorch_to_hf.py``); text keys are the
MED names blipx uses. HF ``save_pretrained`` drops the tied ``cls.predictions.decoder.*``;
the loader re-ties them through blipx's alias groups. No transformers import is needed.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from blipx.layers.configs import TextConfig, VisionConfig
from blipx.models.config import ModelConfig

# HF class defaults (transformers 5.x), used when a config.json omits a field.
_HF_TEXT = dict(
    vocab_size=30524, hidden_size=768, encoder_hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=8, max_position_embeddings=512, hidden_act="gelu", layer_norm_eps=1e-12,
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, bos_token_id=30522, pad_token_id=0, sep_token_id=102,
)
_HF_VISION = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=384,
    patch_size=16, hidden_act="gelu", layer_norm_eps=1e-5,
)

# HF architecture -> blipx class name.
HF_ARCHITECTURES = {
    "BlipForConditionalGeneration": "BlipCaptioner",
    "BlipForImageTextRetrieval": "BlipRetriever",
    "BlipForQuestionAnswering": "BlipVqa",
}


def is_hf_config(cfg: dict[str, Any]) -> bool:
    return "vision_config" in cfg or cfg.get("model_type") == "blip"


def config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
    t = {**_HF_TEXT, **cfg.get("text_config", {})}
    v = {**_HF_VISION, **cfg.get("vision_config", {})}
    for what, act in (("text", t["hidden_act"]), ("vision", v["hidden_act"])):
        if act != "gelu":
            raise ValueError(f"HF BLIP {what} hidden_act {act!r} is not supported (blipx uses exact gelu)")
    vision = VisionConfig(
        image_size=v["image_size"], patch_size=v["patch_size"], width=v["hidden_size"],
        depth=v["num_hidden_layers"], heads=v["num_attention_heads"], mlp_dim=v["intermediate_size"],
        layer_norm_eps=v["layer_norm_eps"],
    )
    text = TextConfig(
        vocab_size=t["vocab_size"], hidden_size=t["hidden_size"], num_layers=t["num_hidden_layers"],
        num_heads=t["num_attention_heads"], intermediate_size=t["intermediate_size"],
        max_position_embeddings=t["max_position_embeddings"], type_vocab_size=0,
        layer_norm_eps=t["layer_norm_eps"], hidden_dropout=t["hidden_dropout_prob"],
        attention_dropout=t["attention_probs_dropout_prob"],
        # BlipConfig forces encoder_hidden_size = vision width.
        encoder_width=v["hidden_size"], fusion_layer=0, pad_token_id=t["pad_token_id"],
        sep_token_id=t["sep_token_id"], bos_token_id=t["bos_token_id"],
    )
    return ModelConfig(family="blip", vision=vision, text=text, embed_dim=cfg.get("image_text_hidden_size", 256))


# One table of (HF prefix, blipx prefix); "{i}" is a layer index. Both directions come from it.
_VISION_NAMES = [
    ("vision_model.embeddings.class_embedding", "visual_encoder.cls_token"),
    ("vision_model.embeddings.position_embedding", "visual_encoder.pos_embed"),
    ("vision_model.embeddings.patch_embedding.", "visual_encoder.patch_embed.proj."),
    ("vision_model.post_layernorm.", "visual_encoder.norm."),
    ("vision_model.encoder.layers.{i}.self_attn.projection.", "visual_encoder.blocks.{i}.attn.proj."),
    ("vision_model.encoder.layers.{i}.self_attn.qkv.", "visual_encoder.blocks.{i}.attn.qkv."),
    ("vision_model.encoder.layers.{i}.layer_norm1.", "visual_encoder.blocks.{i}.norm1."),
    ("vision_model.encoder.layers.{i}.layer_norm2.", "visual_encoder.blocks.{i}.norm2."),
    ("vision_model.encoder.layers.{i}.mlp.", "visual_encoder.blocks.{i}.mlp."),
]


def _rules(pairs: list[tuple[str, str]]) -> list[tuple[re.Pattern, str]]:
    """(source prefix, target prefix) -> (compiled ^pattern, re.sub replacement)."""
    return [(re.compile("^" + re.escape(src).replace(r"\{i\}", r"(\d+)")), dst.replace("{i}", r"\1"))
            for src, dst in pairs]


_TO_BLIPX = _rules(_VISION_NAMES)
_TO_HF = _rules([(b, a) for a, b in _VISION_NAMES])


def _rename(key: str, rules: list[tuple[re.Pattern, str]]) -> str:
    for pat, rep in rules:
        new, n = pat.subn(rep, key)
        if n:
            return new
    return key


def hf_key_to_blipx(key: str) -> str:
    return _rename(key, _TO_BLIPX)


def blipx_key_to_hf(key: str) -> str:
    """Inverse of :func:`hf_key_to_blipx` (used by tests and by export)."""
    return _rename(key, _TO_HF)


def state_dict_from_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # position_ids are non-persistent in HF but old files may carry them; blipx computes them.
    return {hf_key_to_blipx(k): v for k, v in sd.items() if not k.endswith("position_ids")}
