"""The static-cache decode step equals the no-cache full forward, also with several rows per
image (G grouping) and after a beam reorder of the self-attention cache."""

from __future__ import annotations

import torch

from blipx.generation import CachedDecoder

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
    seqs[:, 0] = 30522
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
    seqs[:, 0] = 30522
    dec = CachedDecoder(ours.text_decoder, image_embeds, rows=n, max_len=t)
    dec.prefill(seqs[:, :2])
    for i in range(2, 5):
        dec.step(seqs[:, i])
    # Beam i of image b continues beam perm[i] of the same image (duplicates allowed, as in
    # beam search when one beam spawns two survivors).
    local = torch.tensor([2, 0, 0])
    rows = (torch.arange(b)[:, None] * g + local[None, :]).view(-1)
    dec.reorder_(rows)
    new = seqs[rows].clone()
    new[:, 5:] = seqs[:, 5:]  # different continuations after the reorder
    got = torch.stack([dec.step(new[:, i]) for i in range(5, t)], dim=1)
    full = _full_logits(ours, image_embeds, new)
    assert (got - full[:, 5:t]).abs().max() <= ATOL


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
    seqs[:, 0] = 30522
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
