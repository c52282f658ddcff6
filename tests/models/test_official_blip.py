"""Official Salesforce BLIP layouts.

An official captioning/retrieval state dict is built from an HF one by the documented renames
(transformers' ``convert_blip_original_pytorch_to_hf.py``, applied in reverse: HF vision names -> timm ``visual_encoder.*``, plus the
persistent ``position_ids`` buffers and the LM head's tied duplicates that official files
carry); loading it must reproduce the HF numbers. Pretraining files (with ``_m`` copies and
queues) load into every BLIP head.
"""

from __future__ import annotations

import pytest
import torch

from blipx.models import BlipCaptioner, BlipPretrainer, BlipRetriever, create_model
from blipx.models.layouts.hf import hf_key_to_blipx
from blipx.models.layouts.official import infer_config

from .hf_tiny import CAPTIONS, pixels, rerandomize, tiny_blip_config

transformers = pytest.importorskip("transformers")


def _official_from_hf(hf_model) -> dict:
    sd = {hf_key_to_blipx(k): v.clone() for k, v in hf_model.state_dict().items()}
    for prefix in ("text_decoder.bert.", "text_encoder."):
        if f"{prefix}embeddings.word_embeddings.weight" in sd:
            sd[f"{prefix}embeddings.position_ids"] = torch.arange(64)[None]
    return sd


def test_official_caption_layout_matches_hf(tmp_path):
    from blipx.tokenizer import blip_tokenizer

    torch.manual_seed(0)
    hf = rerandomize(transformers.BlipForConditionalGeneration(tiny_blip_config()))
    sd = _official_from_hf(hf)
    assert "visual_encoder.blocks.1.attn.qkv.weight" in sd and "text_decoder.cls.predictions.decoder.weight" in sd
    torch.save({"model": sd, "epoch": 3}, tmp_path / "model_caption.pth")
    cfg = BlipCaptioner.from_pretrained(_hf_dir(hf, tmp_path)).config
    ours = BlipCaptioner.from_pretrained(tmp_path / "model_caption.pth", config=cfg)
    tok = blip_tokenizer()
    enc = tok(CAPTIONS, padding="longest", return_tensors="pt")
    ids, mask = enc.input_ids, enc.attention_mask
    ids[:, 0] = tok.bos_token_id
    px = pixels(3)
    with torch.no_grad():
        ref = hf(pixel_values=px, input_ids=ids, attention_mask=mask).logits
        out = ours(pixel_values=px, input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    assert (out[keep] - ref[keep]).abs().max() <= 1e-4


def _hf_dir(hf, tmp_path):
    d = tmp_path / "hf"
    hf.save_pretrained(d)
    return d


def test_official_retrieval_layout_matches_hf(tmp_path):
    torch.manual_seed(0)
    hf = rerandomize(transformers.BlipForImageTextRetrieval(tiny_blip_config()), seed=7)
    sd = _official_from_hf(hf)
    sd["temp"] = torch.tensor(0.05)
    sd["idx_queue"] = torch.full((1, 8), -100)
    sd["ptr_queue"] = torch.zeros(1, dtype=torch.long)
    torch.save({"model": sd}, tmp_path / "model_retrieval.pth")
    cfg = BlipRetriever.from_pretrained(_hf_dir(hf, tmp_path)).config
    ours = BlipRetriever.from_pretrained(tmp_path / "model_retrieval.pth", config=cfg)
    assert float(ours.temp.detach()) == pytest.approx(0.05)
    assert set(ours.checkpoint_extras) == {"idx_queue", "ptr_queue"}
    ids = torch.randint(1000, 3000, (2, 7))
    px = pixels(2, seed=9)
    with torch.no_grad():
        for flag in (True, False):
            ref = hf(pixel_values=px, input_ids=ids, use_itm_head=flag).itm_score
            out = ours(pixel_values=px, input_ids=ids, use_itm_head=flag)
            got = out.itm_logits if flag else out.itc_similarity
            assert (got - ref).abs().max() <= 1e-4


@pytest.fixture(scope="module")
def official_pretrain(tmp_path_factory):
    """A BLIP pretrain checkpoint in the official layout (module names are the official ones)."""
    torch.manual_seed(0)
    m = create_model("blip_tiny", "pretrain", vision_width=64, vision_heads=1, text_hidden_size=64, text_num_heads=1,
                     text_encoder_width=64).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    sd = dict(m.state_dict())
    for p in ("text_encoder.", "text_decoder.bert.", "text_encoder_m."):
        sd[f"{p}embeddings.position_ids"] = torch.arange(64)[None]
    sd.update(image_queue=torch.randn(16, 12), text_queue=torch.randn(16, 12), queue_ptr=torch.zeros(1).long())
    path = tmp_path_factory.mktemp("blip_pt") / "model_base.pth"
    torch.save({"model": sd, "config": {"note": "ignored"}}, path)
    return m, path


def test_pretrain_checkpoint_infers_config_and_round_trips(official_pretrain):
    m, path = official_pretrain
    cfg = infer_config(torch.load(path, weights_only=True)["model"])
    assert cfg.text.num_layers == 2 and cfg.text.fusion_layer == 0 and cfg.embed_dim == 16
    assert (cfg.vision.width, cfg.vision.heads, cfg.text.vocab_size) == (64, 1, 30524)
    back = BlipPretrainer.from_pretrained(path)
    assert set(back.checkpoint_extras) == {"image_queue", "text_queue", "queue_ptr"}
    ids = torch.randint(1000, 3000, (2, 6))
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = m(px, ids), back(px, ids)
        torch.testing.assert_close(b.lm_logits, a.lm_logits)
        torch.testing.assert_close(b.itm_logits, a.itm_logits)
        torch.testing.assert_close(back.momentum_features(px, ids).text_feat, m.momentum_features(px, ids).text_feat)


def test_pretrain_checkpoint_loads_into_heads(official_pretrain):
    m, path = official_pretrain
    cap = BlipCaptioner.from_pretrained(path)
    ret = BlipRetriever.from_pretrained(path)
    ret_m = BlipRetriever.from_pretrained(path, momentum=True)
    assert any(k.startswith("text_encoder.") for k in cap.load_report.ignored)
    assert any(k.startswith("visual_encoder_m.") for k in ret.load_report.ignored)
    assert not any("_m." in k for k in ret_m.load_report.ignored)
    ids = torch.randint(1000, 3000, (2, 6))
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        img = m.visual_encoder(px)
        ids_dec = ids.clone()
        ids_dec[:, 0] = m.config.text.bos_token_id  # lm_logits puts [DEC] first; the captioner does not
        torch.testing.assert_close(cap(px, ids_dec).logits, m.lm_logits(img, ids))
        ids_enc = ids.clone()
        ids_enc[:, 0] = m.config.text.enc_token_id
        torch.testing.assert_close(ret(px, ids_enc).itm_logits, m.itm_logits(img, ids))


def test_pretrainer_sharing_follows_tie_encoder_decoder():
    m = create_model("blip_tiny", "pretrain")
    enc, dec = m.text_encoder, m.text_decoder.bert
    assert enc.embeddings is dec.embeddings
    for le, ld in zip(enc.encoder.layer, dec.encoder.layer):
        assert le.crossattention is ld.crossattention and le.intermediate is ld.intermediate
        assert le.output is ld.output and le.attention is not ld.attention
    assert m.text_decoder.cls.predictions.decoder.weight is enc.embeddings.word_embeddings.weight
    assert m.text_encoder_m.embeddings is not enc.embeddings


def test_image_size_override_interpolates_pos_embed(official_pretrain):
    _, path = official_pretrain
    cap = BlipCaptioner.from_pretrained(path, image_size=64)
    assert cap.load_report.interpolated == ["visual_encoder.pos_embed"]
    assert cap.visual_encoder.pos_embed.shape[1] == 17
