"""The static-cache decode step equals the no-cache full forward, also with several rows per
image (G grouping), with an encoder padding mask, after a beam reorder of the self-attention
cache and after dropping finished images; and it runs the model's own layers."""

from __future__ import annotations

import torch

from blipx.generation import CachedDecoder
from blipx.layers.bert import BertLayer

from .helpers import BOS

ATOL = 1e-4  # logits are O(10) with these weights; fp32 summation-order noise is ~1e-5


def _full_logits(model, image_embeds, seqs):
    logits, _ = model.text_decoder(seqs, encoder_hidden_states=image_embeds, is_decoder=True)
    return logits


@torch.no_grad()
def test_cached_decode_equals_full_forward(captioners, px):
    _, ours = captioners
    image_embeds = ours.visual_encoder(px)
    b, t, p = px.shape[0], 12, 3
    seqs = torch.randint(1000, 30000, (b, t), generator=torch.Generator().manual_seed(0))
    seqs[:, 0] = BOS
    full = _full_logits(ours, image_embeds, seqs)
    dec = CachedDecoder(ours.text_decoder, image_embeds, rows=b, max_len=t)
    got = [dec.prefill(seqs[:, :p])]
    for i in range(p, t):
        got.append(dec.step(seqs[:, i]))
    got = torch.stack(got, dim=1)  # logits predicting positions p..t
    assert got.shape == full[:, p - 1 :].shape
    assert (got - full[:, p - 1 :]).abs().max() <= ATOL
    # The logits depend on the image and on earlier tokens, so this comparison can fail.
    assert (full[0] - full[1]).abs().max() > 1e-2


@torch.no_grad()
def test_reorder_within_image_groups(captioners, px):
    _, ours = captioners
    image_embeds = ours.visual_encoder(px)
    b, g, t = px.shape[0], 3, 10
    n = b * g
    seqs = torch.randint(1000, 30000, (n, t), generator=torch.Generator().manual_seed(1))
    seqs[:, 0] = BOS
    dec = CachedDecoder(ours.text_decoder, image_embeds, rows=n, max_len=t)
    dec.prefill(seqs[:, :2])
    for i in range(2, 5):
        dec.step(seqs[:, i])
    # Beam i of image b continues beam perm[i] of the same image (duplicates allowed, as in
    # beam search when one beam spawns two survivors).
    local = torch.tensor([2, 0, 0])
    rows = (torch.arange(b)[:, None] * g + local[None, :]).view(-1)
    addr = dec.cache.kv.data_ptr()
    dec.reorder_(rows)
    # One gather into the same storage: a captured graph's addresses (and the layer views) stay valid.
    assert dec.cache.kv.data_ptr() == addr and dec.cache.layers[-1].v.data_ptr() == dec.cache.kv[1, -1].data_ptr()
    new = seqs[rows].clone()
    new[:, 5:] = seqs[:, 5:]  # different continuations after the reorder
    got = torch.stack([dec.step(new[:, i]) for i in range(5, t)], dim=1)
    full = _full_logits(ours, image_embeds, new)
    assert (got - full[:, 5:t]).abs().max() <= ATOL


@torch.no_grad()
def test_encoder_mask_groups_and_dropped_images(captioners, px):
    """VQA's case: G rows per encoder row (a question's candidate answers / beams share its K/V)
    and padded encoder keys. After ``keep_images_`` the survivors' steps still equal the full
    forward of their rows."""
    _, ours = captioners
    image_embeds = ours.visual_encoder(px)
    b, g, t = px.shape[0], 2, 9
    enc_mask = torch.ones(b, image_embeds.shape[1], dtype=torch.long)
    enc_mask[1, 5:] = 0
    enc_mask[2, 1:] = 0
    seqs = torch.randint(1000, 30000, (b * g, t), generator=torch.Generator().manual_seed(3))
    seqs[:, 0] = BOS
    full, _ = ours.text_decoder(seqs, encoder_hidden_states=image_embeds, encoder_attention_mask=enc_mask,
                                is_decoder=True)
    dec = CachedDecoder(ours.text_decoder, image_embeds, rows=b * g, max_len=t, encoder_mask=enc_mask)
    got = [dec.prefill(seqs[:, :2])] + [dec.step(seqs[:, i]) for i in range(2, 5)]
    assert (torch.stack(got, 1) - full[:, 1:5]).abs().max() <= ATOL
    keep = torch.tensor([1, 2])
    rows = dec.keep_images_(keep)
    assert rows.tolist() == [2, 3, 4, 5] and dec.rows == 4 and dec.images == 2
    got = torch.stack([dec.step(seqs[rows, i]) for i in range(5, t)], 1)
    assert (got - full[rows, 5:t]).abs().max() <= ATOL
    # The mask matters for these rows, so the comparison can fail.
    unmasked, _ = ours.text_decoder(seqs, encoder_hidden_states=image_embeds, is_decoder=True)
    assert (unmasked[rows] - full[rows]).abs().max() > 1e-2


@torch.no_grad()
def test_steps_run_the_models_own_layers(captioners, px, monkeypatch):
    """Prefill and steps go through BertLayer.forward (no hand-written copy of the layer): one
    call per layer per forward."""
    _, ours = captioners
    calls = []
    real = BertLayer.forward
    monkeypatch.setattr(BertLayer, "forward", lambda self, *a, **k: calls.append(a[0].shape) or real(self, *a, **k))
    image_embeds = ours.visual_encoder(px)
    b, n_layers = px.shape[0], ours.config.text.num_layers
    dec = CachedDecoder(ours.text_decoder, image_embeds, rows=b, max_len=6)
    dec.prefill(torch.full((b, 3), BOS))
    dec.step(torch.full((b,), BOS))
    hidden = ours.config.text.hidden_size
    assert calls == [(b, 3, hidden)] * n_layers + [(b, 1, hidden)] * n_layers


@torch.no_grad()
def test_decode_step_compiles_once_with_static_shapes(captioners, px):
    """The step is one graph with fixed shapes: ``torch.compile(fullgraph=True, dynamic=False)``
    traces it without a break, every later step reuses that graph (the position lives on the
    device, so it is not a guard), and the logits equal eager's. The precondition of capturing
    it in a CUDA graph / ``mode="reduce-overhead"`` on GPU."""
    import torch._dynamo

    _, ours = captioners
    image_embeds = ours.visual_encoder(px)
    b, t, p = px.shape[0], 10, 2
    seqs = torch.randint(1000, 30000, (b, t), generator=torch.Generator().manual_seed(2))
    seqs[:, 0] = BOS
    eager = CachedDecoder(ours.text_decoder, image_embeds, rows=b, max_len=t)
    comp = CachedDecoder(ours.text_decoder, image_embeds, rows=b, max_len=t)
    eager.prefill(seqs[:, :p])
    comp.prefill(seqs[:, :p])
    torch._dynamo.reset()
    frames = []
    step = torch.compile(comp.step, fullgraph=True, dynamic=False, backend=_counting_backend(frames))
    for i in range(p, t):
        assert (step(seqs[:, i]) - eager.step(seqs[:, i])).abs().max() <= ATOL
    assert len(frames) == 1, f"the decode step was traced {len(frames)} times (a guard on the position?)"


def _counting_backend(frames):
    def backend(gm, example_inputs):
        frames.append(gm)
        return gm.forward  # run the traced graph as is: this checks tracing, not inductor

    return backend
