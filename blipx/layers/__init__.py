"""Building blocks of the blipx models: the ViT image tower, the BERT/MED text tower and the
single cross-attention entry point that every text-to-image attention goes through."""

from blipx.layers.attention import cross_attention
from blipx.layers.bert import BertLMHead, BertModel, TextOutput
from blipx.layers.configs import TextConfig, VisionConfig
from blipx.layers.vit import VisionTransformer, interpolate_pos_embed

__all__ = [
    "BertLMHead",
    "BertModel",
    "TextConfig",
    "TextOutput",
    "VisionConfig",
    "VisionTransformer",
    "cross_attention",
    "interpolate_pos_embed",
]
