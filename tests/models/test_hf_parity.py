"""HF BLIP parity: tiny random HF models saved with ``save_pretrained`` load into blipx and give
the same logits / ITM logits / ITC similarities (fp32, max abs diff <= 1e-4), with real
tokenized captions, with and without padding."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from blipx.models import BlipCaptioner, BlipRetriever, BlipVqa  # noqa: E402
from blipx.tokenizer import blip_tokenizer  # noqa: E402
from blipx.weights import CheckpointError  # noqa: E402

from .hf_tiny import CAPTIONS, pixels, rerandomize, tiny_blip_config  # noqa: E402

ATOL = 1e-4


@pytest.fixture(scope="module")
def tok():
    return blip_tokenizer()


@pytest.fixture(scope="module")
def hf_captioner(tmp_path_factory):
    torch.manual_seed(0)
    m = rerandomize(transformers.BlipForConditionalGeneration(tiny_blip_config()))
    d = tmp_path_factory.mktemp("hf_cap")
    m.save_pretrained(d)
    return m, d


@pytest.fixture(scope="module")
def hf_retriever(tmp_path_factory):
    torch.manual_seed(0)
    m = rerandomize(transformers.BlipForImageTextRetrieval(tiny_blip_config()), seed=3)
    d = tmp_path_factory.mktemp("hf_itr")
    m.save_pretrained(d)
    return m, d


def _batch(tok, captions, bos=None):
    enc = tok(captions, padding="longest", return_tensors="pt")
    ids, mask = enc.input_ids, enc.attention_mask
    if bos is not None:
        ids[:, 0] = bos
    return ids, mask


@pytest.mark.parametrize("padded", [False, True])
def test_captioner_logits_match_hf(hf_captioner, tok, padded):
    hf, d = hf_captioner
    ours = BlipCaptioner.from_pretrained(d)
    # The HF file lacks the tied LM-head weight; it must have been re-tied, not left at init.
    dec = ours.text_decoder
    assert dec.cls.predictions.decoder.weight is dec.bert.embeddings.word_embeddings.weight
    assert not ours.load_report.kept_init
    caps = CAPTIONS if padded else [CAPTIONS[0]] * 2
    ids, mask = _batch(tok, caps, bos=tok.bos_token_id)
    assert bool((mask == 0).any()) == padded
    px = pixels(len(caps))
    with torch.no_grad():
        ref = hf(pixel_values=px, input_ids=ids, attention_mask=mask)
        out = ours(pixel_values=px, input_ids=ids, attention_mask=mask)
    assert out.logits.shape == ref.logits.shape == (len(caps), ids.shape[1], 30524)
    keep = mask.bool()
    assert (out.logits[keep] - ref.logits[keep]).abs().max() <= ATOL
    assert (out.image_embeds - ref.image_embeds).abs().max() <= ATOL
    # The comparison must be able to fail: the logits depend on the image.
    assert (ref.logits[0] - ref.logits[1]).abs().max() > 1e-2


@pytest.mark.parametrize("padded", [False, True])
def test_retriever_itm_and_itc_match_hf(hf_retriever, tok, padded):
    hf, d = hf_retriever
    ours = BlipRetriever.from_pretrained(d)
    assert ours.load_report.kept_init == ["temp"]  # HF stores no ITC temperature
    caps = CAPTIONS if padded else ["a dog on the beach", "a cat on the sofa"]
    ids, mask = _batch(tok, caps)
    assert bool((mask == 0).any()) == padded
    px = pixels(len(caps), seed=5)
    with torch.no_grad():
        ref_itm = hf(pixel_values=px, input_ids=ids, attention_mask=mask, use_itm_head=True).itm_score
        ref_itc = hf(pixel_values=px, input_ids=ids, attention_mask=mask, use_itm_head=False).itm_score
        itm = ours(pixel_values=px, input_ids=ids, attention_mask=mask, use_itm_head=True).itm_logits
        itc = ours(pixel_values=px, input_ids=ids, attention_mask=mask, use_itm_head=False).itc_similarity
    assert itm.shape == (len(caps), 2) and itc.shape == (len(caps), len(caps))
    assert (itm - ref_itm).abs().max() <= ATOL
    assert (itc - ref_itc).abs().max() <= ATOL
    assert ref_itc.std() > 1e-2 and ref_itm.std() > 1e-2


def test_hf_config_is_converted(hf_captioner):
    _, d = hf_captioner
    cfg = BlipCaptioner.from_pretrained(d).config
    assert (cfg.vision.patch_size, cfg.vision.image_size, cfg.vision.layer_norm_eps) == (8, 32, 1e-5)
    assert (cfg.text.num_heads, cfg.text.intermediate_size, cfg.text.encoder_width) == (4, 37, 32)
    with pytest.raises(CheckpointError, match="load it with BlipCaptioner, not BlipRetriever"):
        BlipRetriever.from_pretrained(d)


def test_vqa_encoder_and_decoder_match_hf(tmp_path, tok):
    """Question encoder and answer decoder vs HF's sub-modules. The decoder runs without a
    question mask on both sides: HF 5.24's text layers drop ``encoder_attention_mask`` in
    cross-attention, whereas blipx applies it (official training semantics, tested below)."""
    torch.manual_seed(0)
    hf = rerandomize(transformers.BlipForQuestionAnswering(tiny_blip_config()), seed=11)
    hf.save_pretrained(tmp_path)
    ours = BlipVqa.from_pretrained(tmp_path)
    q_ids, q_mask = _batch(tok, ["what is the dog doing?", "how many cats?"])
    a_ids, a_mask = _batch(tok, ["running on the beach", "two"], bos=tok.bos_token_id)
    px = pixels(2, seed=4)
    with torch.no_grad():
        img = hf.vision_model(pixel_values=px).last_hidden_state
        q_ref = hf.text_encoder(input_ids=q_ids, attention_mask=q_mask, encoder_hidden_states=img).last_hidden_state
        ref = hf.text_decoder(input_ids=a_ids, attention_mask=a_mask, encoder_hidden_states=q_ref).logits
        out = ours(pixel_values=px, input_ids=q_ids, attention_mask=q_mask)
        logits = ours.answer_logits(q_ref, None, a_ids, a_mask)
        # With the question mask, padded question positions are invisible to the decoder.
        n = int(q_mask[1].sum())
        masked = ours.answer_logits(q_ref[1:], q_mask[1:], a_ids[1:], a_mask[1:])
        trimmed = ours.answer_logits(q_ref[1:, :n], None, a_ids[1:], a_mask[1:])
    qk, ak = q_mask.bool(), a_mask.bool()
    assert (out.question_embeds[qk] - q_ref[qk]).abs().max() <= ATOL
    assert (logits[ak] - ref[ak]).abs().max() <= ATOL
    assert n < q_ids.shape[1] and (masked - trimmed).abs().max() <= 1e-5


def test_momentum_copies_start_from_online_weights_when_file_has_none(hf_retriever):
    _, d = hf_retriever
    r = BlipRetriever.from_pretrained(d, momentum=True)
    assert torch.equal(r.visual_encoder_m.pos_embed, r.visual_encoder.pos_embed)
    assert torch.equal(r.text_proj_m.weight, r.text_proj.weight)
    assert any(k.startswith("text_encoder_m.") for k in r.load_report.kept_init)


def test_key_maps_cover_hf_layouts_exactly(hf_captioner, hf_retriever):
    from blipx.models.layouts.hf import blipx_key_to_hf, hf_key_to_blipx

    for hf, cls in ((hf_captioner[0], BlipCaptioner), (hf_retriever[0], BlipRetriever)):
        ours = cls.from_pretrained(hf_captioner[1] if cls is BlipCaptioner else hf_retriever[1])
        mapped = {blipx_key_to_hf(k) for k in ours.state_dict() if k != "temp"}
        assert mapped == set(hf.state_dict())
        assert all(hf_key_to_blipx(blipx_key_to_hf(k)) == k for k in ours.state_dict())
