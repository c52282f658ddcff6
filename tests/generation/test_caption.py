"""caption(): decoded text of generate()'s ids with the [DEC] + prompt prefix stripped; accepts
pixel values or uint8 images."""

from __future__ import annotations

import torch

from blipx.tokenizer import blip_tokenizer

from .helpers import PROMPT


def test_caption_strips_prompt(captioners, px):
    _, ours = captioners
    tok = blip_tokenizer()
    ids = ours.generate(px, PROMPT, max_length=12)
    caps = ours.caption(px, PROMPT, max_length=12)
    assert caps == tok.batch_decode(ids[:, 4:].tolist(), skip_special_tokens=True)
    full = tok.batch_decode(ids.tolist(), skip_special_tokens=True)
    assert all(f.startswith(PROMPT) and not c.startswith(PROMPT) for f, c in zip(full, caps))
    assert any(c.strip() for c in caps)
    # Without a prompt only [DEC] is dropped (special, so it never shows in text anyway).
    ids = ours.generate(px, num_beams=3, max_length=10, num_return_sequences=2)
    caps = ours.caption(px, num_beams=3, max_length=10, num_return_sequences=2)
    assert len(caps) == 2 * px.shape[0]
    assert caps == tok.batch_decode(ids[:, 1:].tolist(), skip_special_tokens=True)


def test_caption_from_uint8_images(captioners):
    _, ours = captioners
    images = torch.randint(0, 256, (2, 3, 48, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    caps = ours.caption(images, max_length=8)
    assert len(caps) == 2 and all(isinstance(c, str) for c in caps)
    assert caps == ours.caption(list(images), max_length=8)  # a list of images is the same batch
