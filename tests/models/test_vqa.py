"""VQA heads against transcriptions of the official code (tests/models/official_vqa.py), and the
official / HF / pretraining checkpoint layouts loading with no missing or unexpected keys."""

from __future__ import annotations

import pytest
import torch

from blipx.models import AlbefPretrainer, AlbefVqa, BlipPretrainer, BlipVqa, create_model
from blipx.models.albef_vqa import vqa_state_dict_from_pretrain

from . import official_vqa as off

# Vision width = text width (32): pretraining decoders then fit the VQA decoders exactly, as
# ViT-B / BERT-base (768 / 768) do.
BLIP = dict(hidden_size=32, text_num_heads=4)
ALBEF = dict(hidden_size=32, text_num_heads=4, num_layers=12, fusion_layer=6)  # the official 6 + 6


def _model(cls, name, seed=0, **kw):
    torch.manual_seed(seed)
    m = create_model(name, "vqa" if cls in (BlipVqa, AlbefVqa) else "pretrain", **kw)
    with torch.no_grad():  # a random model with peaked, input-dependent distributions
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return m.eval()


def _decoder_fn(decoder):
    def run(ids, mask, states, states_mask):
        logits, _ = decoder(ids, mask, encoder_hidden_states=states, encoder_attention_mask=states_mask,
                            is_decoder=True)
        return logits
    return run


def _batch(b=3, tq=6, seed=1, size=32):
    g = torch.Generator().manual_seed(seed)
    px = torch.randn(b, 3, size, size, generator=g)
    ids = torch.randint(1000, 3000, (b, tq), generator=g)
    ids[:, 0] = 101
    mask = torch.ones(b, tq, dtype=torch.long)
    mask[0, -2:] = 0  # a padded question
    ids[0, -2:] = 0
    return px, ids, mask


def _answers(a=7, seed=2):
    """Answer list [A, Ta] of lengths 1..3 words: [CLS] w.. [SEP] [PAD].."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(a, 5, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i in range(a):
        n = 1 + i % 3
        ids[i, 0], ids[i, 1:n + 1], ids[i, n + 1] = 101, torch.randint(1000, 3000, (n,), generator=g), 102
        mask[i, :n + 2] = 1
    return ids, mask


@pytest.mark.parametrize("k", [3, 7])
def test_blip_rank_matches_official(k):
    m = _model(BlipVqa, "blip_tiny", **BLIP)
    px, ids, mask = _batch()
    a_ids, a_mask = _answers()
    out = m.rank_answers(px, ids, mask, a_ids, a_mask, k_test=k)
    q_ids, dec_ids = ids.clone(), a_ids.clone()
    q_ids[:, 0], dec_ids[:, 0] = m.config.text.enc_token_id, m.config.text.bos_token_id  # as train_vqa.py
    with torch.no_grad():
        q = m.encode_question(m.visual_encoder(px), q_ids, mask)
        ref = off.rank_answer(_decoder_fn(m.text_decoder), q, mask, dec_ids, a_mask, k, 0, albef=False)
    assert out.indices.shape == (3, k)
    assert torch.equal(out.best, ref)
    # the scores are the label-smoothed (0.1) sequence log-likelihoods of med.py, sorted
    with torch.no_grad():
        rows = out.indices.reshape(-1)
        logits = _decoder_fn(m.text_decoder)(dec_ids[rows], a_mask[rows], off.tile(q, 0, k), off.tile(mask, 0, k))
        want = -off.decoder_loss(logits, dec_ids[rows].masked_fill(dec_ids[rows] == 0, -100), 0.1).view(3, k)
    assert torch.allclose(out.scores, want, atol=1e-4)
    assert torch.all(out.scores[:, :-1] >= out.scores[:, 1:])


@pytest.mark.parametrize("k", [2, 7])
def test_albef_rank_matches_official(k):
    m = _model(AlbefVqa, "albef_tiny", **ALBEF)
    px, ids, mask = _batch()
    a_ids, a_mask = _answers()
    out = m.rank_answers(px, ids, mask, a_ids, a_mask, k_test=k)
    with torch.no_grad():
        q = m.encode_question(px, ids, mask).question_embeds
        ref_ids, ref_probs = off.rank_answer(_decoder_fn(m.text_decoder), q, mask, a_ids, a_mask, k, 0, albef=True)
    assert torch.equal(out.indices, ref_ids)
    # ALBEF reports softmax over the k re-ranked log-likelihoods: the same ordering and values
    assert torch.allclose(out.scores.softmax(dim=1), ref_probs, atol=1e-5)


def test_rank_shares_question_kv_without_tiling(monkeypatch):
    """The k candidate rows of a question read its K/V through the grouped op: the question
    states are projected once ([Q, ...] K/V) and never repeated to Q*k rows."""
    import blipx.layers.attention as attn

    m = _model(BlipVqa, "blip_tiny", **BLIP)
    px, ids, mask = _batch()
    a_ids, a_mask = _answers()
    seen = []
    orig = attn.cross_attention

    def spy(q, k, v, key_padding_mask=None, scale=None):
        seen.append((q.shape[0], k.shape[0]))
        return orig(q, k, v, key_padding_mask=key_padding_mask, scale=scale)

    monkeypatch.setattr(attn, "cross_attention", spy)
    with torch.no_grad():
        q = m.encode_question(m.visual_encoder(px), ids, mask)
    seen.clear()
    from blipx.models.blip_vqa import rank_answers
    rank_answers(m.text_decoder, q, mask, a_ids, a_mask, 5)
    assert seen and all(kv == 3 for _, kv in seen)  # K/V rows = questions
    assert {qr for qr, _ in seen} == {3, 15}  # first-token step, then 5 candidates per question


def _train_batch(m, seed=3):
    px, ids, mask = _batch(seed=seed)
    a_ids, a_mask = _answers(6, seed=seed)
    counts = torch.tensor([1, 3, 2])
    weights = torch.tensor([1.0, 0.5, 0.3, 0.2, 0.6, 0.4])
    return px, ids, mask, a_ids, a_mask, weights, counts


def test_blip_answer_loss_matches_official():
    m = _model(BlipVqa, "blip_tiny", **BLIP)
    px, ids, mask, a_ids, a_mask, w, n = _train_batch(m)
    loss = m.answer_loss(px, ids, mask, a_ids, a_mask, w, n)
    q_ids, dec_ids = ids.clone(), a_ids.clone()
    q_ids[:, 0], dec_ids[:, 0] = m.config.text.enc_token_id, m.config.text.bos_token_id
    q = m.encode_question(m.visual_encoder(px), q_ids, mask)
    ref = off.vqa_train_loss(_decoder_fn(m.text_decoder), q, mask, dec_ids, a_mask, w, n.tolist(), 0, 0.1)
    assert torch.allclose(loss, ref, rtol=1e-5)
    loss.backward()
    assert m.visual_encoder.patch_embed.proj.weight.grad.abs().sum() > 0  # gradients reach the image


@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_albef_answer_loss_and_distillation_match_official(alpha):
    m = _model(AlbefVqa, "albef_tiny", momentum=True, **ALBEF)
    with torch.no_grad():  # a momentum model that differs from the online one
        for _, mom in m.momentum_pairs():
            for p in mom.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    px, ids, mask, a_ids, a_mask, w, n = _train_batch(m)
    calls = []
    loss = m.answer_loss(px, ids, mask, a_ids, a_mask, w, n, alpha=alpha, momentum_step=lambda: calls.append(1))
    assert calls == [1]  # the EMA hook runs once, between the online and momentum forwards
    q = m.encode_question(px, ids, mask).question_embeds
    with torch.no_grad():
        q_m = m.encode_question(px, ids, mask, momentum=True).question_embeds
        states_m = torch.stack([q_m[b] for b, k in enumerate(n.tolist()) for _ in range(k)])
        mask_rows = torch.stack([mask[b] for b, k in enumerate(n.tolist()) for _ in range(k)])
        logits_m = _decoder_fn(m.text_decoder_m)(a_ids, a_mask, states_m, mask_rows)
    ref = off.vqa_train_loss(_decoder_fn(m.text_decoder), q, mask, a_ids, a_mask, w, n.tolist(), 0, 0.0,
                             logits_m=logits_m if alpha else None, alpha=alpha)
    assert torch.allclose(loss, ref, rtol=1e-5)


# ---------------------------------------------------------------- layouts


def _official_file(tmp_path, sd, name, extra_buffers=()):
    """An official-style ``.pth``: {'model': state_dict} with the persistent position_ids."""
    sd = {k: v.clone() for k, v in sd.items()}
    for prefix in extra_buffers:
        sd[f"{prefix}embeddings.position_ids"] = torch.arange(64)[None]
    path = tmp_path / name
    torch.save({"model": sd, "epoch": 0}, path)
    return path


def _clean(report):
    assert report.ignored == [] and report.kept_init == [] and report.mismatched == []


def test_official_blip_vqa_layout_loads(tmp_path):
    """model_base_vqa_capfilt_large.pth: visual_encoder + text_encoder + text_decoder (+ position_ids)."""
    m = _model(BlipVqa, "blip_tiny", **BLIP)
    path = _official_file(tmp_path, m.state_dict(), "model_base_vqa.pth", ("text_encoder.", "text_decoder.bert."))
    ours = BlipVqa.from_pretrained(path, config=m.config)
    _clean(ours.load_report)
    px, ids, mask = _batch()
    a_ids, a_mask = _answers()
    assert torch.equal(ours.rank_answers(px, ids, mask, a_ids, a_mask, 4).indices,
                       m.rank_answers(px, ids, mask, a_ids, a_mask, 4).indices)


def test_blip_pretrain_file_converts_to_vqa(tmp_path):
    """A BLIP pretraining file loads as VQA (salesforce/BLIP blip_vqa + load_checkpoint): the
    pretraining encoder / decoder become the question encoder / answer decoder; heads, momentum
    copies and queues are reported as ignored, nothing is missing."""
    pre = _model(BlipPretrainer, "blip_tiny", **BLIP)
    sd = {**pre.state_dict(), "image_queue": torch.zeros(16, 8), "text_queue": torch.zeros(16, 8),
          "queue_ptr": torch.zeros(1, dtype=torch.long)}
    path = _official_file(tmp_path, sd, "model_base.pth", ("text_encoder.", "text_decoder.bert."))
    vqa = BlipVqa.from_pretrained(path, config=pre.config)
    rep = vqa.load_report
    assert rep.kept_init == [] and rep.mismatched == []
    assert all(k.split(".")[0] in {"vision_proj", "text_proj", "itm_head", "temp"} or "_m." in k for k in rep.ignored)
    assert torch.equal(vqa.text_decoder.bert.encoder.layer[1].crossattention.self.key.weight,
                       pre.text_decoder.bert.encoder.layer[1].crossattention.self.key.weight)
    assert torch.equal(vqa.text_encoder.encoder.layer[1].attention.self.query.weight,
                       pre.text_encoder.encoder.layer[1].attention.self.query.weight)


def test_pretrain_folder_with_other_vision_width_redraws_decoder_cross_kv(tmp_path):
    """blip_tiny (vision 32, text 8): the pretraining decoder's cross-attention key/value read 32
    wide vectors, the VQA decoder's read the 8 wide question states: exactly those weights are
    re-drawn (official: shape-mismatched tensors are dropped), the rest loads."""
    for pre, cls in ((create_model("blip_tiny"), BlipVqa), (create_model("albef_tiny"), AlbefVqa)):
        d = tmp_path / cls.__name__
        pre.save_pretrained(d)
        vqa = cls.from_pretrained(d)
        fresh = vqa.load_report.kept_init
        layers = len(vqa.text_decoder.bert.encoder.layer)
        assert len(fresh) == 2 * layers and all("text_decoder.bert" in k and "crossattention.self" in k for k in fresh)
        assert vqa.load_report.mismatched == []
    # with momentum copies, each re-drawn weight and its momentum twin start equal (as copy_params)
    vqa = AlbefVqa.from_pretrained(tmp_path / "AlbefVqa", momentum=True)
    for lo, lm in zip(vqa.text_decoder.bert.encoder.layer, vqa.text_decoder_m.bert.encoder.layer):
        assert torch.equal(lo.crossattention.self.key.weight, lm.crossattention.self.key.weight)


def test_hf_blip_vqa_folder_loads(tmp_path):
    transformers = pytest.importorskip("transformers")
    from .hf_tiny import tiny_blip_config

    hf = transformers.BlipForQuestionAnswering(tiny_blip_config())
    hf.save_pretrained(tmp_path)
    _clean(BlipVqa.from_pretrained(tmp_path).load_report)


def test_albef_pretrain_rewrite_matches_official_loop():
    pre = _model(AlbefPretrainer, "albef_tiny", **ALBEF, momentum=True)
    sd = {k: v for k, v in pre.state_dict().items()}
    ref = off.albef_vqa_load_rewrite(sd)
    ours = vqa_state_dict_from_pretrain(sd, 6)
    assert ours.keys() == ref.keys()
    assert all(ours[k] is ref[k] for k in ref)


def test_official_albef_pretrain_file_converts_to_vqa(tmp_path):
    pre = _model(AlbefPretrainer, "albef_tiny", **ALBEF)
    sd = {**pre.state_dict(), "image_queue": torch.zeros(16, 8), "text_queue": torch.zeros(16, 8),
          "queue_ptr": torch.zeros(1, dtype=torch.long)}
    path = _official_file(tmp_path, sd, "ALBEF.pth", ("text_encoder.bert.", "text_encoder_m.bert."))
    cfg = pre.config.with_overrides(momentum=True)
    vqa = AlbefVqa.from_pretrained(path, config=cfg)
    rep = vqa.load_report
    assert rep.kept_init == [] and rep.mismatched == []
    assert set(rep.ignored) == {k for k in sd if k.split(".")[0] in {"vision_proj", "text_proj", "itm_head", "temp",
                                                                      "vision_proj_m", "text_proj_m"}}
    enc, dec = pre.text_encoder.bert.encoder.layer, vqa.text_decoder.bert.encoder.layer
    assert len(dec) == 6
    assert torch.equal(dec[0].crossattention.self.query.weight, enc[6].crossattention.self.query.weight)
    assert torch.equal(dec[5].output.dense.weight, enc[11].output.dense.weight)
    assert torch.equal(vqa.text_decoder.cls.predictions.transform.dense.weight,
                       pre.text_encoder.cls.predictions.transform.dense.weight)
    assert torch.equal(vqa.text_decoder_m.bert.encoder.layer[2].attention.self.key.weight,
                       pre.text_encoder_m.bert.encoder.layer[8].attention.self.key.weight)
    assert torch.equal(vqa.text_encoder.encoder.layer[3].attention.self.key.weight,
                       enc[3].attention.self.key.weight)


def test_official_albef_vqa_layout_without_text_decoder_m_loads(tmp_path):
    """The released ALBEF VQA file has every momentum copy but text_decoder_m (ALBEF#101): with
    momentum, those are recreated as copies of text_decoder; nothing is missing or unexpected."""
    m = _model(AlbefVqa, "albef_tiny", momentum=True, **ALBEF)
    sd = {k: v for k, v in m.state_dict().items() if not k.startswith("text_decoder_m.")}
    path = _official_file(tmp_path, sd, "vqa.pth", ("text_encoder.", "text_decoder.bert.", "text_encoder_m."))
    for momentum in (True, False):
        ours = AlbefVqa.from_pretrained(path, config=m.config.with_overrides(momentum=momentum))
        assert ours.load_report.kept_init == [] and ours.load_report.mismatched == []
        if momentum:
            assert ours.load_report.ignored == []
            for p, q in zip(ours.text_decoder.parameters(), ours.text_decoder_m.parameters(), strict=True):
                assert torch.equal(p, q)
            assert torch.equal(ours.text_encoder_m.encoder.layer[7].crossattention.self.key.weight,
                               m.text_encoder_m.encoder.layer[7].crossattention.self.key.weight)
        else:
            assert all("_m." in k for k in ours.load_report.ignored)
