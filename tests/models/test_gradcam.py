"""The cross-attention's attention-probability mode and Grad-CAM (blipx.models.gradcam) against a
transcription of salesforce/ALBEF Grounding.py / models/xbert.py and LAVIS compute_gradcam
(tests/models/official_ve.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

import blipx.layers.attention as attn
from blipx.layers.attention import BertCrossAttention, cross_attention_with_probs, saving_attention
from blipx.models import create_model, get_config, with_first_token
from blipx.models.gradcam import cross_attention_layer, default_layer, gradcam
from blipx.ops.reference import cross_attention_ref

from . import official_ve as off

# ------------------------------------------------------------------ attention-probability mode


def _qkv(bg=6, b=3, h=2, lq=4, lk=5, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(bg, h, lq, d, generator=g)
    k = torch.randn(b, h, lk, d, generator=g)
    v = torch.randn(b, h, lk, d, generator=g)
    mask = torch.zeros(b, lk, dtype=torch.bool)
    mask[1, -2:] = True  # padded keys
    mask[2, :] = True  # an image whose every key is masked: zeros, as the op
    return q, k, v, mask


def test_probs_function_matches_reference():
    q, k, v, mask = _qkv()
    out, probs = cross_attention_with_probs(q, k, v, key_padding_mask=mask)
    assert torch.allclose(out, cross_attention_ref(q, k, v, key_padding_mask=mask), atol=1e-6)
    assert probs.shape == (6, 2, 4, 5) and probs.dtype == torch.float32
    rows = probs.sum(-1)
    assert torch.allclose(rows[:4], torch.ones_like(rows[:4]))  # images 0 and 1 (G = 2 rows each)
    assert torch.equal(rows[4:], torch.zeros_like(rows[4:]))  # the fully masked image
    assert torch.equal(probs[2:4, ..., -2:], torch.zeros(2, 2, 4, 2))  # masked keys get nothing


def _module(seed=0, hidden=16, kv_width=12, heads=2):
    torch.manual_seed(seed)
    m = BertCrossAttention(hidden, kv_width, heads, 1e-12, 0.0)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return m


def test_mode_off_is_the_fused_path(monkeypatch):
    m = _module()
    x, img = torch.randn(4, 3, 16), torch.randn(2, 5, 12)  # G = 2 text rows per image
    calls = []
    orig = attn.cross_attention

    def spy(*a, **kw):
        calls.append(1)
        return orig(*a, **kw)

    monkeypatch.setattr(attn, "cross_attention", spy)
    out = m(x, m.project_kv(img), None)
    assert calls == [1] and m.attention_map is None
    with saving_attention(m):
        saved = m(x, m.project_kv(img), None)
        assert calls == [1]  # the saving path does not call the op
    assert torch.allclose(saved, out, atol=1e-5)
    assert m.save_attention is False and m.attention_map is None  # restored and cleared


def test_saved_probs_and_gradient_match_autograd_of_the_reference():
    m = _module()
    x = torch.randn(4, 3, 16)
    img = torch.randn(2, 5, 12)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    w = torch.randn(4, 3, 16)
    m.save_attention = True
    out = m(x, m.project_kv(img), pad)
    probs = m.get_attention_map()
    (out * w).sum().backward()
    got = m.get_attn_gradients()
    assert probs.shape == (4, 2, 3, 5) and got.shape == probs.shape
    # the reference written out: scores, masked softmax (fp32), probs @ V, output block
    q = m.self.query(x).view(4, 3, 2, 8).transpose(1, 2)
    k, v = m.project_kv(img)
    k, v = k.repeat_interleave(2, 0), v.repeat_interleave(2, 0)
    scores = (q @ k.transpose(-1, -2)) * 8 ** -0.5
    scores = scores.masked_fill(pad.repeat_interleave(2, 0)[:, None, None, :], float("-inf"))
    ref_probs = scores.softmax(-1)
    ref_out = m.output((ref_probs @ v).transpose(1, 2).reshape(4, 3, 16), x)
    (ref_grad,) = torch.autograd.grad((ref_out * w).sum(), ref_probs)
    assert torch.allclose(probs, ref_probs, atol=1e-6)
    assert torch.allclose(probs.sum(-1), torch.ones(4, 2, 3))
    assert torch.allclose(got, ref_grad, atol=1e-6)
    m.clear_saved_attention()
    assert m.attention_map is None and m.attn_gradients is None


def test_mode_in_a_model_gives_the_same_outputs():
    m = create_model("albef_tiny", "retriever").eval()
    px, ids, mask = _batch()
    with torch.no_grad():
        ref = m(px, ids, mask).itm_logits
        layers = [lyr.crossattention for lyr in m.text_encoder.encoder.layer if hasattr(lyr, "crossattention")]
        with saving_attention(*layers):
            got = m(px, ids, mask).itm_logits
            assert all(c.attention_map is not None for c in layers)
    assert torch.allclose(got, ref, atol=1e-5)


# ------------------------------------------------------------------ Grad-CAM


def _batch(b=3, t=6, seed=1, size=32):
    g = torch.Generator().manual_seed(seed)
    px = torch.randn(b, 3, size, size, generator=g)
    ids = torch.randint(1000, 3000, (b, t), generator=g)
    ids[:, 0] = 101
    ids[:, -1] = 102
    mask = torch.ones(b, t, dtype=torch.long)
    if b > 1:
        mask[1, -2:] = 0  # a padded text ([SEP] earlier, as the tokenizer pads)
        ids[1, -2:] = 0
        ids[1, -3] = 102
    return px, ids, mask


def _random(name, task, seed=0, **kw):
    torch.manual_seed(seed)
    m = create_model(name, task, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return m


def _official(m, px, ids, mask, layer):
    """Grounding.py / compute_gradcam: xbert's recorded attention, model.zero_grad(),
    loss.backward(), then the official tensor code."""
    family = m.config.family
    rec = off.XbertCrossAttentionRecorder(layer - m.config.text.fusion_layer)
    mp = pytest.MonkeyPatch()
    mp.setattr(attn, "cross_attention", rec)
    try:
        m.eval()
        image_embeds = m.visual_encoder(px)
        if family == "albef":
            text = m.encode_text(ids, mask)
            rec.calls = 0
            vl = m.itm_logits(image_embeds, text, mask)
        else:
            rec.calls = 0
            vl = m.itm_logits(image_embeds, with_first_token(ids, m.config.text.enc_token_id), mask)
        loss = vl[:, 1].sum()
        m.zero_grad()
        loss.backward()
    finally:
        mp.undo()
    grid = m.config.vision.image_size // m.config.vision.patch_size
    fn = off.albef_gradcam if family == "albef" else off.lavis_gradcam
    return fn(rec.attention_map.detach(), rec.attn_gradients.detach(), mask, grid)


@pytest.mark.parametrize("name,task,layer", [("albef_tiny", "retriever", 2), ("albef_tiny", "retriever", 3),
                                             ("albef_tiny", "pretrain", 3), ("blip_tiny", "retriever", 0),
                                             ("blip_tiny", "pretrain", 0)])
def test_gradcam_matches_official(name, task, layer):
    m = _random(name, task, image_size=64)  # a 4x4 patch grid
    px, ids, mask = _batch(size=64)
    ours = gradcam(m, px, ids, mask, layer=layer)
    ref = _official(m, px, ids, mask, layer)
    assert ours.shape == (3, 4, 4) and (ours >= 0).all()
    assert ours.abs().sum() > 0
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-10)


def test_default_layers():
    assert default_layer(SimpleNamespace(config=get_config("albef_base"))) == 8  # config only: no weights
    assert default_layer(SimpleNamespace(config=get_config("blip_base"))) == 7
    assert default_layer(create_model("blip_tiny", "retriever")) == 0  # 2 layers: min(7, 2 - 2)
    assert default_layer(create_model("albef_tiny", "retriever")) == 2  # 4 layers: min(8, 2)
    m = create_model("blip_mini", "retriever")
    assert default_layer(m) == 1  # 3 layers: not the last (its map has only [ENC], which BLIP excludes)
    with pytest.raises(ValueError, match="layer=1 has no cross-attention"):
        cross_attention_layer(create_model("albef_tiny", "retriever"), 1)
    with pytest.raises(ValueError, match="layer=5"):
        cross_attention_layer(m, 5)


class _Planted(nn.Module):
    """Stands in for the ViT: image states that are zero except patch ``k[i]`` of image i (= x)."""

    def __init__(self, patches: int, x: torch.Tensor) -> None:
        super().__init__()
        self.patches, self.x, self.k = patches, x, []

    def forward(self, px):
        out = torch.zeros(px.shape[0], 1 + self.patches, self.x.shape[0])
        for i, k in enumerate(self.k):
            out[i, 1 + k] = self.x
        return out


@pytest.mark.parametrize("name", ["albef_tiny", "blip_tiny"])
def test_map_peaks_at_the_planted_patch(name):
    """Uniform attention (zero queries) and zero value bias: only the planted patch's value can
    move the match score, so the map is zero everywhere else and peaks there -- for each patch
    of a 4x4 grid, read in row-major order with the image [CLS] key dropped."""
    m = _random(name, "retriever", image_size=64)
    layer = default_layer(m)
    cross = cross_attention_layer(m, layer)
    with torch.no_grad():
        cross.self.query.weight.zero_()
        cross.self.query.bias.zero_()
        cross.self.value.bias.zero_()
    width = m.config.vision.width
    x = torch.randn(width, generator=torch.Generator().manual_seed(3)) * 1e-2
    planted = _Planted(16, x)
    m.visual_encoder = planted
    px, ids, mask = _batch(b=4, size=64)
    ids[:, 1:-1] = 2000  # one expression for every image
    mask[:] = 1
    planted.k = [0, 5, 10, 15]
    maps = gradcam(m, px, ids, mask, layer=layer)
    if maps.abs().sum() == 0:  # the random network's sign: the opposite value raises the score
        planted.x = -x
        maps = gradcam(m, px, ids, mask, layer=layer)
    for i, k in enumerate(planted.k):
        flat = maps[i].reshape(-1)
        assert flat[k] > 0 and int(flat.argmax()) == k
        assert torch.equal(torch.cat([flat[:k], flat[k + 1:]]), torch.zeros(15))
    planted.k = []  # no planted patch: an all-zero map
    assert torch.equal(gradcam(m, px, ids, mask, layer=layer), torch.zeros(4, 4, 4))


def test_gradcam_leaves_the_model_as_it_was():
    m = _random("blip_tiny", "pretrain")
    px, ids, mask = _batch()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    p0 = next(m.parameters())
    p0.grad = torch.full_like(p0, 7.0)  # the caller's gradient accumulation in progress
    m.train()
    cross = cross_attention_layer(m, 1)
    g = gradcam(m, px, ids, mask, layer=1)
    assert g.shape == (3, 2, 2) and not g.requires_grad
    assert m.training  # mode restored
    assert torch.equal(p0.grad, torch.full_like(p0, 7.0))
    assert all(p.grad is None for p in list(m.parameters())[1:])
    assert all(torch.equal(p, before[n]) for n, p in m.named_parameters())
    assert cross.save_attention is False and cross.attention_map is None and cross.attn_gradients is None
    # under no_grad too (evaluation loops), and for degenerate batches
    with torch.no_grad():
        assert torch.allclose(gradcam(m, px, ids, mask, layer=1), g)
        assert gradcam(m, px[:0], ids[:0], mask[:0]).shape == (0, 2, 2)
        assert gradcam(m, px[:1], ids[:1], mask[:1], layer=1).shape == (1, 2, 2)


def test_gradcam_refuses_bad_inputs():
    m = create_model("blip_tiny", "retriever")
    px, ids, mask = _batch()
    with pytest.raises(ValueError, match="pixel_values"):
        gradcam(m, px[0], ids, mask)
    with pytest.raises(ValueError, match="attention_mask"):
        gradcam(m, px, ids, mask[:, :3])
    with pytest.raises(ValueError, match="images"):
        gradcam(m, px[:2], ids, mask)
    with pytest.raises(TypeError, match="ITM head"):
        gradcam(create_model("blip_tiny", "captioner"), px, ids, mask)
