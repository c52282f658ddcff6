"""Tower behaviour: the static decoder KV cache, K/V shared across beams, ViT position interpolation,
gradient checkpointing, and the single cross-attention entry point."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from blipx.layers import attention as attn_mod
from blipx.layers.vit import VisionTransformer, interpolate_pos_embed
from blipx.models import create_model


def _tiny_captioner():
    torch.manual_seed(0)
    m = create_model("blip_tiny", "captioner").eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


def test_static_kv_cache_prefill_and_steps_match_full_forward():
    """The model's own forward over a StaticKVCache (a 2-token prefill, then one-token steps; the
    position lives on the device) gives the no-cache logits, with a left-padded row whose mask
    covers the cache slots."""
    m = _tiny_captioner()
    px = torch.randn(2, 3, 32, 32)
    ids = torch.randint(1000, 3000, (2, 6))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # row 0 is left-padded
    t_max = 8
    with torch.no_grad():
        img = m.visual_encoder(px)
        full, _ = m.text_decoder(ids, mask, encoder_hidden_states=img, is_decoder=True)
        cross_kv = m.text_decoder.bert.project_cross_kv(img)  # once per image
        cache = m.text_decoder.bert.new_kv_cache(rows=2, max_len=t_max)
        slot_mask = torch.cat([mask, torch.ones(2, t_max - ids.shape[1], dtype=mask.dtype)], dim=1)
        dec = lambda x: m.text_decoder(x, slot_mask, cross_kv=cross_kv, is_decoder=True, kv_cache=cache)[0]
        steps = [dec(ids[:, :2])] + [dec(ids[:, t : t + 1]) for t in range(2, ids.shape[1])]
        unmasked, _ = m.text_decoder(ids, encoder_hidden_states=img, is_decoder=True)
    got = torch.cat(steps, 1)
    assert cache.pos.tolist() == [ids.shape[1]]
    # Pad queries (row 0, positions 0-1) are opened to every key and never read: compare the rest.
    torch.testing.assert_close(got[1], full[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got[0, 2:], full[0, 2:], atol=1e-5, rtol=1e-4)
    # Without the mask row 0 sees its pad tokens: the comparison above can fail.
    assert (unmasked[0, 2:] - full[0, 2:]).abs().max() > 1e-3


def test_static_kv_cache_is_for_causal_decoding_only():
    m = _tiny_captioner()
    cache = m.text_decoder.bert.new_kv_cache(rows=1, max_len=4)
    bos = torch.tensor([[m.config.text.bos_token_id]])
    with pytest.raises(ValueError, match="is_decoder"):
        m.text_decoder(bos, encoder_hidden_states=torch.zeros(1, 5, 32), kv_cache=cache)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        m.text_decoder.bert.new_kv_cache(rows=1, max_len=m.config.text.max_position_embeddings + 1)


def test_beams_share_image_kv_without_repeat():
    """G text rows per image (input rows b*G..b*G+G-1) equal the repeat_interleave formulation."""
    m = _tiny_captioner()
    g = 3
    px = torch.randn(2, 3, 32, 32)
    ids = torch.randint(1000, 3000, (2 * g, 5))
    mask = torch.ones_like(ids)
    mask[1, 3:] = 0
    with torch.no_grad():
        img = m.visual_encoder(px)
        shared, _ = m.text_decoder(ids, mask, encoder_hidden_states=img, is_decoder=True)
        repeated, _ = m.text_decoder(ids, mask, encoder_hidden_states=img.repeat_interleave(g, 0), is_decoder=True)
    torch.testing.assert_close(shared, repeated, atol=1e-5, rtol=1e-4)


def test_all_cross_attention_goes_through_one_function():
    m = _tiny_captioner()
    calls = []
    real = attn_mod.ops.cross_attention

    def spy(q, k, v, key_padding_mask=None, scale=None):
        calls.append((q.shape, k.shape))
        return real(q, k, v, key_padding_mask=key_padding_mask, scale=scale)

    with mock.patch.object(attn_mod.ops, "cross_attention", spy), torch.no_grad():
        m(pixel_values=torch.randn(1, 3, 32, 32), input_ids=torch.randint(1000, 3000, (1, 4)))
    assert len(calls) == m.config.text.num_layers
    assert calls[0] == ((1, 2, 4, 4), (1, 2, 5, 4))


def test_causal_mask_hides_future_tokens():
    m = _tiny_captioner()
    px = torch.randn(1, 3, 32, 32)
    a = torch.tensor([[30522, 1037, 3899, 2003]])
    b = a.clone()
    b[0, 3] = 4937
    with torch.no_grad():
        la, lb = m(pixel_values=px, input_ids=a).logits, m(pixel_values=px, input_ids=b).logits
    torch.testing.assert_close(la[:, :3], lb[:, :3])
    assert (la[:, 3] - lb[:, 3]).abs().max() > 1e-3


def test_vit_interpolates_position_embedding_for_other_resolutions():
    cfg = create_model("blip_tiny", "captioner").config.vision
    torch.manual_seed(0)
    vit = VisionTransformer(cfg).eval()
    px = torch.randn(2, 3, 64, 64)  # 4x4 patches instead of 2x2
    with torch.no_grad():
        out = vit(px)
        assert out.shape == (2, 17, cfg.width)
        big = VisionTransformer(type(cfg)(**{**vars(cfg), "image_size": 64})).eval()
        sd = vit.state_dict()
        sd["pos_embed"] = interpolate_pos_embed(sd["pos_embed"], 16)
        big.load_state_dict(sd)
        torch.testing.assert_close(big(px), out)
    # CLS slot kept, grid resized
    pe = interpolate_pos_embed(vit.pos_embed.detach(), 16)
    assert pe.shape == (1, 17, cfg.width) and torch.equal(pe[:, 0], vit.pos_embed.detach()[:, 0])


def test_vit_gradient_checkpointing_gives_same_gradients():
    cfg = create_model("blip_tiny", "captioner").config.vision
    torch.manual_seed(0)
    plain = VisionTransformer(cfg).train()
    ckpt = VisionTransformer(type(cfg)(**{**vars(cfg), "grad_ckpt_layers": 2})).train()
    ckpt.load_state_dict(plain.state_dict())
    px = torch.randn(2, 3, 32, 32)
    for model in (plain, ckpt):
        model(px).square().sum().backward()
    for (n, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


def test_left_padding_gives_finite_outputs_in_low_precision():
    """A pad query under left padding sees no key; it must not produce NaN that would leak
    into later layers through the (masked) keys."""
    m = _tiny_captioner()
    ids = torch.randint(1000, 3000, (2, 6))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = m(pixel_values=px, input_ids=ids, attention_mask=mask).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            amp = m(pixel_values=px, input_ids=ids, attention_mask=mask).logits
        half = m.to(torch.bfloat16)(pixel_values=px, input_ids=ids, attention_mask=mask).logits
    assert torch.isfinite(ref).all() and torch.isfinite(amp).all() and torch.isfinite(half).all()
    assert (amp.float() - ref).abs().max() < 0.5


def test_pretrainers_train_step_reaches_online_weights_only():
    for name in ("blip_tiny", "albef_tiny"):
        m = create_model(name, "pretrain").train()
        ids = torch.randint(1000, 3000, (2, 6))
        out = m(torch.randn(2, 3, 32, 32), ids, torch.ones_like(ids))
        logits = out.lm_logits if out.lm_logits is not None else out.text_embeds
        (out.itm_logits.sum() + (out.image_feat @ out.text_feat.t()).sum() / m.temp + logits.mean()).backward()
        frozen = [n for n, p in m.named_parameters() if "_m." in n]
        assert frozen and all(p.grad is None for n, p in m.named_parameters() if "_m." in n)
        assert m.visual_encoder.patch_embed.proj.weight.grad is not None and m.temp.grad is not None
        word = m.text_encoder.embeddings if name == "blip_tiny" else m.text_encoder.bert.embeddings
        assert word.word_embeddings.weight.grad is not None
