"""Constants and weight randomisation shared by the generation tests."""

from __future__ import annotations

import torch

SEP, PAD, BOS = 102, 0, 30522
PROMPT = "a picture of"
PROMPT_IDS = [101, 1037, 3861, 1997, 102]  # the HF processor's tokenization of PROMPT


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int, std: float) -> torch.nn.Module:
    """N(0, std) everywhere, LayerNorm weights around 1 (tests/models/hf_tiny.py's recipe with a
    wider spread: N(0, 0.2) makes the tiny decoder repeat one token forever). Tied parameters
    are visited once, so ties survive."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        is_ln = ("LayerNorm" in name or "layer_norm" in name or "layernorm" in name) and name.endswith("weight")
        p.copy_(torch.randn(p.shape, generator=g) * std + (1.0 if is_ln else 0.0))
    return model.eval()


def hf_prompt(batch: int) -> dict:
    """PROMPT as HF callers pass it: processor ids and an all-ones mask."""
    ids = torch.tensor([PROMPT_IDS] * batch)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids))
