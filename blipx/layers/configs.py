"""Architecture configs of the two towers (plain dataclasses, JSON-serialisable)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class VisionConfig:
    """timm-style pre-LN ViT. ``layer_norm_eps`` is 1e-6 in the Salesforce code, 1e-5 in HF BLIP."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    layer_norm_eps: float = 1e-6
    drop_path: float = 0.0
    # Checkpoint the last N blocks when training (BLIP's ``vit_ckpt_layer``); 0 disables.
    grad_ckpt_layers: int = 0
    # Std of the fresh position embedding / [CLS] token; None = the model's initializer_range.
    # A from-scratch ViT needs it near the patch features' scale (blip_mini: 0.5, see init.py).
    pos_embed_init_std: float | None = None


@dataclass
class TextConfig:
    """BERT / BLIP-MED text tower.

    Layers ``[fusion_layer, num_layers)`` carry cross-attention to the image (ALBEF: 6 of 12;
    BLIP: 0, i.e. every layer). ``type_vocab_size`` 0 means no token-type embeddings (BLIP);
    ALBEF has 2.
    """

    vocab_size: int = 30524
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 0
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    encoder_width: int = 768
    fusion_layer: int = 0
    pad_token_id: int = 0
    cls_token_id: int = 101
    sep_token_id: int = 102
    mask_token_id: int = 103
    # BLIP's [DEC] (decoder bos) and [ENC] (image-grounded encoder) ids; unused by ALBEF.
    bos_token_id: int = 30522
    enc_token_id: int = 30523
