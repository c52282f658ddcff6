"""Image cross-attention K/V are projected once per layer per generate call, from the B image
rows, and no tensor ever holds image states expanded to B * beams rows."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from blipx.layers.attention import BertCrossAttention

LK = 17  # image tokens of the tiny ViT (16 patches + CLS)


class ShapeSpy(TorchFunctionMode):
    """Records the shape of every tensor produced by a torch function or tensor method."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, torch.Tensor):
                self.shapes.append(tuple(o.shape))
        return out


def _expanded(shapes, rows):
    """Shapes with ``rows`` leading rows that carry the image-token axis: [rows, Lk, W] image
    states or [rows, H, Lk, D] K/V."""
    return [s for s in shapes if len(s) >= 3 and s[0] == rows and LK in s[1:]]


@pytest.mark.parametrize(
    "kw, g",
    [
        (dict(num_beams=3, num_return_sequences=2, max_length=10), 3),
        (dict(do_sample=True, num_return_sequences=3, max_length=10), 3),
    ],
)
def test_image_kv_projected_once_and_never_expanded(captioners, px, monkeypatch, kw, g):
    _, ours = captioners
    b = px.shape[0]
    calls = []
    original = BertCrossAttention.project_kv

    def counting(self, states):
        calls.append(tuple(states.shape))
        return original(self, states)

    monkeypatch.setattr(BertCrossAttention, "project_kv", counting)
    spy = ShapeSpy()
    with spy, torch.no_grad():
        out = ours.generate(px, **kw)
    assert out.shape[0] == b * kw["num_return_sequences"]
    n_layers = len(ours.text_decoder.bert.encoder.layer)
    assert calls == [(b, LK, ours.config.text.encoder_width)] * n_layers
    assert not _expanded(spy.shapes, b * g)

    # Positive control: the spy does see an expansion of the image embeddings.
    control = ShapeSpy()
    with control:
        torch.zeros(b, LK, 32).repeat_interleave(g, dim=0)
    assert _expanded(control.shapes, b * g)
