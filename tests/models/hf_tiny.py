"""Tiny random HF BLIP models for parity tests (transformers' ``BlipConfig`` classes), with the real BERT
vocabulary size so captions can be tokenized with blipx's BLIP tokenizer."""

from __future__ import annotations

import torch

CAPTIONS = [
    "a picture of a dog running on the beach",
    "two cats",
    "a man riding a red bicycle down a busy city street",
]


def tiny_blip_config():
    from transformers import BlipConfig

    text = dict(
        vocab_size=30524, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, bos_token_id=30522, eos_token_id=2, pad_token_id=0, sep_token_id=102,
    )
    vision = dict(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        patch_size=8, initializer_range=0.02,
    )
    return BlipConfig(text_config=text, vision_config=vision, projection_dim=16, image_text_hidden_size=16)


@torch.no_grad()
def rerandomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """N(0, 0.2) everywhere, LayerNorm weights around 1: HF's vision init (~1e-10) would make
    every image look the same. Tied parameters are visited once, so ties survive."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        is_ln = ("LayerNorm" in name or "layer_norm" in name or "layernorm" in name) and name.endswith("weight")
        p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if is_ln else 0.0))
    return model.eval()


def pixels(batch: int, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
