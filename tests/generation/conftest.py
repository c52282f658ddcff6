"""A tiny random HF BLIP captioner (hf-blip.md §1.4 / §5) and the same weights in blipx.

N(0, 0.5) weights (tests/models' N(0, 0.2) makes this decoder repeat one token forever) and a
+15 bias on [SEP]: with these, captions are varied and rows stop at mixed steps, so the
padding of finished rows and beam bookkeeping are exercised (the tests assert both)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from blipx.models import BlipCaptioner  # noqa: E402
from tests.models.hf_tiny import pixels, tiny_blip_config  # noqa: E402

SEP, PAD, BOS = 102, 0, 30522
PROMPT = "a picture of"
PROMPT_IDS = [101, 1037, 3861, 1997, 102]  # the HF processor's tokenization of PROMPT


@torch.no_grad()
def _randomize(model: torch.nn.Module, seed: int, std: float) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        is_ln = ("LayerNorm" in name or "layer_norm" in name or "layernorm" in name) and name.endswith("weight")
        p.copy_(torch.randn(p.shape, generator=g) * std + (1.0 if is_ln else 0.0))


@pytest.fixture(scope="session")
def captioners(tmp_path_factory):
    """(HF BlipForConditionalGeneration, blipx BlipCaptioner) with identical weights."""
    torch.manual_seed(0)
    hf = transformers.BlipForConditionalGeneration(tiny_blip_config())
    _randomize(hf, seed=1, std=0.5)
    with torch.no_grad():
        hf.text_decoder.cls.predictions.bias[SEP] += 15.0
    hf.eval()
    d = tmp_path_factory.mktemp("hf_gen")
    hf.save_pretrained(d)
    return hf, BlipCaptioner.from_pretrained(d).eval()


@pytest.fixture(scope="session")
def px():
    return pixels(4)


def hf_prompt(batch: int) -> dict:
    ids = torch.tensor([PROMPT_IDS] * batch)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids))
