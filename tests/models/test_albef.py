"""ALBEF: official-layout round trip, fusion-layer placement, momentum copies, formulas.

Formulas checked (salesforce/ALBEF ``models/model_pretrain.py``), each against an independent composition of the towers:
1. ITC features: ``image_feat = normalize(vision_proj(ViT(img)[:, 0]))``,
   ``text_feat = normalize(text_proj(text_layers_0..f-1(ids)[:, 0]))``; similarity = cosine.
2. ITM: fusion layers f..N-1 on the *reused* text-mode states == one full multimodal pass;
   ``itm_logits = itm_head(fusion_cls)``.
3. MLM: ``cls(all layers with cross-attention on masked ids)``, decoder tied to word embeddings.
4. Text mode never sees the image; embeddings add the type-0 token-type vector.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from blipx import MomentumEMA
from blipx.models import AlbefPretrainer, AlbefRetriever, create_model


def _model():
    torch.manual_seed(0)
    m = create_model("albef_tiny", "pretrain", vision_width=64, vision_heads=1, text_hidden_size=64,
                     text_num_heads=1, text_encoder_width=64).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    m = _model()
    sd = dict(m.state_dict())
    for p in ("text_encoder.bert.", "text_encoder_m.bert."):
        sd[f"{p}embeddings.position_ids"] = torch.arange(64)[None]
    sd.update(image_queue=torch.randn(16, 32), text_queue=torch.randn(16, 32), queue_ptr=torch.zeros(1).long())
    path = tmp_path_factory.mktemp("albef") / "ALBEF_4M.pth"
    torch.save({"model": sd, "epoch": 29}, path)
    return m, path


def _inputs():
    ids = torch.randint(1000, 3000, (2, 7))
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return torch.randn(2, 3, 32, 32), ids, mask


def test_official_key_layout():
    keys = set(_model().state_dict())
    assert {"visual_encoder.cls_token", "visual_encoder.pos_embed", "visual_encoder.blocks.0.attn.qkv.weight",
            "text_encoder.bert.embeddings.token_type_embeddings.weight", "text_encoder.cls.predictions.bias",
            "text_encoder.cls.predictions.decoder.weight", "vision_proj.weight", "text_proj.weight",
            "itm_head.weight", "temp", "visual_encoder_m.norm.weight", "text_encoder_m.cls.predictions.bias",
            "vision_proj_m.bias", "text_proj_m.bias"} <= keys
    online = {k for k in keys if not re.match(r"\w+_m\.", k)}
    momentum = {re.sub(r"^(\w+)_m\.", r"\1.", k) for k in keys if re.match(r"\w+_m\.", k)}
    assert momentum == online - {"itm_head.weight", "itm_head.bias", "temp"}


def test_fusion_layer_placement():
    m = _model()
    f, n = m.config.text.fusion_layer, m.config.text.num_layers
    assert (f, n) == (2, 4)
    keys = m.state_dict()
    for i in range(n):
        has = f"text_encoder.bert.encoder.layer.{i}.crossattention.self.key.weight" in keys
        assert has == (i >= f)


def test_official_round_trip(official, tmp_path):
    m, path = official
    back = AlbefPretrainer.from_pretrained(path)
    cfg = back.config
    assert (cfg.family, cfg.text.fusion_layer, cfg.text.type_vocab_size, cfg.text.vocab_size) == ("albef", 2, 2, 30522)
    assert set(back.checkpoint_extras) == {"image_queue", "text_queue", "queue_ptr"}
    px, ids, mask = _inputs()
    masked = ids.clone()
    masked[:, 2] = 103
    with torch.no_grad():
        a = m(px, ids, mask, masked_input_ids=masked)
        b = back(px, ids, mask, masked_input_ids=masked)
        for k, v in vars(a).items():
            torch.testing.assert_close(getattr(b, k), v, rtol=0, atol=0, msg=k)
        torch.testing.assert_close(back.momentum_features(px, ids, mask).text_feat, m.momentum_features(px, ids, mask).text_feat)
    back.save_pretrained(tmp_path)
    again = AlbefPretrainer.from_pretrained(tmp_path)
    for (k, v), w in zip(back.state_dict().items(), again.state_dict().values()):
        assert torch.equal(v, w), k


def test_retriever_loads_pretrain_layout(official):
    m, path = official
    r = AlbefRetriever.from_pretrained(path)
    assert any(k.startswith("text_encoder.cls.") for k in r.load_report.ignored)
    px, ids, mask = _inputs()
    with torch.no_grad():
        pre = m(px, ids, mask)
        torch.testing.assert_close(r(px, ids, mask).itm_logits, pre.itm_logits)
        torch.testing.assert_close(r(px, ids, mask, use_itm_head=False).itc_similarity, pre.image_feat @ pre.text_feat.t())


def test_formulas():
    m = _model()
    px, ids, mask = _inputs()
    bert = m.text_encoder.bert
    with torch.no_grad():
        out = m(px, ids, mask, masked_input_ids=ids)
        img = m.visual_encoder(px)
        # 1. ITC features
        torch.testing.assert_close(out.image_feat, F.normalize(m.vision_proj(img[:, 0]), dim=-1))
        txt = bert(ids, mask, mode="text").last_hidden_state
        torch.testing.assert_close(out.text_feat, F.normalize(m.text_proj(txt[:, 0]), dim=-1))
        # 2. ITM on reused text states == one multimodal pass
        full = bert(ids, mask, encoder_hidden_states=img, mode="multimodal").last_hidden_state
        torch.testing.assert_close(out.itm_logits, m.itm_head(full[:, 0]))
        # 3. MLM
        torch.testing.assert_close(out.mlm_logits, m.text_encoder.cls(full))
        assert m.text_encoder.cls.predictions.decoder.weight is bert.embeddings.word_embeddings.weight
        # 4. text mode ignores the image; token type 0 is added
        assert torch.equal(out.text_embeds, m(torch.randn(2, 3, 32, 32), ids, mask).text_embeds)
        emb = bert.embeddings
        x = emb.word_embeddings(ids) + emb.position_embeddings.weight[:7] + emb.token_type_embeddings.weight[0]
        torch.testing.assert_close(emb(ids), emb.LayerNorm(x))
    assert (out.itm_logits[0] - out.itm_logits[1]).abs().max() > 1e-3


def test_momentum_copies_are_frozen_and_ema_updates_them():
    m = create_model("albef_tiny", "pretrain")
    assert all(not p.requires_grad for n, p in m.named_parameters() if "_m." in n)
    ema = MomentumEMA(m.momentum_pairs(), momentum=0.5)
    with torch.no_grad():
        m.vision_proj.weight.add_(1.0)
    before = m.vision_proj_m.weight.clone()
    ema.update()
    torch.testing.assert_close(m.vision_proj_m.weight, 0.5 * before + 0.5 * m.vision_proj.weight)
