"""NLVR2 heads against transcriptions of the official code (tests/models/official_nlvr.py), the
official / pretraining / text-assignment layouts loading with nothing missing or unexpected,
the load-time rewrites (BLIP key duplication, ALBEF's 18-layer expansion with shared K/V),
gradients, and degenerate batches."""

from __future__ import annotations

import collections

import pytest
import torch

from blipx.models import (AlbefNlvr, AlbefNlvrPretrainer, BlipNlvr, create_model,
                          from_pretrained)
from blipx.models.albef_nlvr import nlvr_state_dict_from_pretrain
from blipx.models.blip_nlvr import twin_cross_attention_keys
from blipx.train.nlvr import AlbefNlvrTask, AlbefTextAssignmentTask, BlipNlvrTask, sample_text_assignment
from blipx.weights import CheckpointError

from . import official_nlvr as off

# 8 BLIP text layers: layers 0-5 average the two attentions, 6-7 merge them (official threshold 6).
BLIP = dict(hidden_size=32, text_num_heads=4, num_layers=8)
# The official ALBEF split: 6 text layers + 6 fusion layers -> 18 layers.
ALBEF = dict(hidden_size=32, text_num_heads=4, num_layers=12, fusion_layer=6)


def _perturb(m, scale=0.3):
    with torch.no_grad():  # a random model with input-dependent outputs
        for p in m.parameters():
            p.add_(torch.randn_like(p) * scale)
    return m


def _model(name, task, seed=0, **kw):
    torch.manual_seed(seed)
    return _perturb(create_model(name, task, **kw)).eval()


def _batch(b=3, t=6, seed=1, size=32):
    g = torch.Generator().manual_seed(seed)
    px = torch.randn(2 * b, 3, size, size, generator=g)
    ids = torch.randint(1000, 3000, (b, t), generator=g)
    ids[:, 0] = 101
    mask = torch.ones(b, t, dtype=torch.long)
    if b > 1:
        mask[0, -2:] = 0  # a padded statement
        ids[0, -2:] = 0
    labels = torch.arange(b) % 2
    return {"pixel_values": px, "input_ids": ids, "attention_mask": mask, "labels": labels}


def _official_file(tmp_path, sd, name, position_ids=()):
    sd = {k: v.clone() for k, v in sd.items()}
    for prefix in position_ids:
        sd[f"{prefix}embeddings.position_ids"] = torch.arange(64)[None]
    torch.save({"model": sd, "epoch": 0}, tmp_path / name)
    return tmp_path / name


def _clean(report):
    assert report.ignored == [] and report.kept_init == [] and report.mismatched == []


# ---------------------------------------------------------------- forwards and losses vs official


def test_blip_nlvr_matches_official():
    m = _model("blip_tiny", "nlvr", **BLIP)
    assert hasattr(m.text_encoder.encoder.layer[6].crossattention.output, "merge_layer")
    assert not hasattr(m.text_encoder.encoder.layer[5].crossattention.output, "merge_layer")
    x = _batch()
    with torch.no_grad():
        out = m(x["pixel_values"], x["input_ids"], x["attention_mask"])
        ref = off.blip_nlvr_forward(m.state_dict(), m.visual_encoder(x["pixel_values"]), x["input_ids"],
                                    x["attention_mask"], x["labels"], m.config.text.enc_token_id, num_layers=8, heads=4)
    assert out.shape == (3, 2)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    task = BlipNlvrTask(m).eval()
    with torch.no_grad():
        loss = task(x)["loss"]
        ref_loss = off.blip_nlvr_forward(m.state_dict(), m.visual_encoder(x["pixel_values"]), x["input_ids"],
                                         x["attention_mask"], x["labels"], m.config.text.enc_token_id, num_layers=8,
                                         heads=4, train=True)
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-5)


def _momentum_sd(m):
    """The momentum model's weights under the online names (what the official ``*_m`` modules are)."""
    sd = m.state_dict()
    return {k.replace("text_encoder_m.", "text_encoder.").replace("cls_head_m.", "cls_head."): v
            for k, v in sd.items() if k.startswith(("text_encoder_m.", "cls_head_m."))}


@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_albef_nlvr_and_distillation_match_official(alpha):
    m = _model("albef_tiny", "nlvr", momentum=True, **ALBEF)
    with torch.no_grad():  # a momentum model that differs from the online one
        for _, mom in m.momentum_pairs():
            for p in mom.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    assert len(m.text_encoder.encoder.layer) == 18
    x = _batch()
    with torch.no_grad():
        out = m(x["pixel_values"], x["input_ids"], x["attention_mask"])
        ref = off.albef_nlvr_forward(m.state_dict(), m.visual_encoder(x["pixel_values"]), x["input_ids"],
                                     x["attention_mask"], x["labels"], num_layers=18, fusion_layer=6, heads=4)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    # The task's EMA step at momentum 1.0 leaves the copies as they are: the official loss with them.
    task = AlbefNlvrTask(m, momentum=1.0, alpha=alpha, copy_momentum=False).eval()
    with torch.no_grad():
        loss = task(x)["loss"]
        ref_loss = off.albef_nlvr_forward(
            m.state_dict(), m.visual_encoder(x["pixel_values"]), x["input_ids"], x["attention_mask"], x["labels"],
            num_layers=18, fusion_layer=6, heads=4, sd_m=_momentum_sd(m),
            image_embeds_m=m.visual_encoder_m(x["pixel_values"]), alpha=alpha, train=True)
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-5)


def test_albef_pairs_share_cross_attention_key_value():
    m = create_model("albef_tiny", "nlvr", momentum=True, **ALBEF)
    for enc in (m.text_encoder, m.text_encoder_m):
        layers = enc.encoder.layer
        for i in range(6):
            a, b = layers[6 + 2 * i].crossattention, layers[7 + 2 * i].crossattention
            for name in ("key", "value"):
                assert getattr(a.self, name).weight is getattr(b.self, name).weight
                assert getattr(a.self, name).bias is getattr(b.self, name).bias
            assert a.self.query.weight is not b.self.query.weight and a.output.dense.weight is not b.output.dense.weight
        assert not hasattr(layers[5], "crossattention")
    # the copies are their own tensors (an EMA target, not an alias of the online tower)
    assert m.text_encoder_m.encoder.layer[7].crossattention.self.key.weight is not \
        m.text_encoder.encoder.layer[7].crossattention.self.key.weight


def test_text_assignment_loss_matches_official():
    """model_pretrain_nlvr.py: the official loop draws the pairs; the same pairs through blipx's
    ``ta_logits`` give the official loss."""
    m = _model("albef_tiny", "nlvr_pretrain", **ALBEF)
    x = _batch(b=5)
    px = x["pixel_values"][:5]
    with torch.no_grad():
        image_embeds = m.visual_encoder(px)
        torch.manual_seed(3)
        pairs, labels = off.text_assignment_pairs(image_embeds, m.image_features(image_embeds))
        ref = off.text_assignment_loss(m.state_dict(), pairs, labels, x["input_ids"], x["attention_mask"],
                                       num_layers=18, fusion_layer=6, heads=4)
        logits = m.ta_logits(pairs[0], pairs[1], x["input_ids"], x["attention_mask"])
    torch.testing.assert_close(torch.nn.functional.cross_entropy(logits, labels), ref, rtol=0, atol=1e-5)


def test_text_assignment_sampling_has_the_official_distribution():
    """Label and pair frequencies of the batched sampler against the official loop (4 images,
    fixed similarities), over 3000 draws each."""
    torch.manual_seed(0)
    feat = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1) * 0.3
    embeds = torch.arange(4.0)[:, None]  # image b's "embedding" is b: the pairs read back as indices
    sim = feat @ feat.t() / 0.07
    n = 3000
    ours, theirs = collections.Counter(), collections.Counter()
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        left, right, labels, valid = sample_text_assignment(sim, g)
        assert valid.all() and (left != right).all()
        ours.update(zip(left.tolist(), right.tolist(), labels.tolist()))
    torch.manual_seed(2)
    for _ in range(n):
        pairs, labels = off.text_assignment_pairs(embeds, feat)
        theirs.update(zip(pairs[0][:, 0].long().tolist(), pairs[1][:, 0].long().tolist(), labels.tolist()))
    for key in set(ours) | set(theirs):
        p, q = ours[key] / (4 * n), theirs[key] / (4 * n)
        assert abs(p - q) < 4 * (max(p, q) / (4 * n)) ** 0.5 + 1e-3, (key, p, q)
    lab = collections.Counter(k[2] for k in ours.elements())
    assert all(abs(lab[c] / (4 * n) - 1 / 3) < 0.02 for c in (0, 1, 2))
    # label 0: the caption's own image (row b) on the left; label 1: on the right; 2: neither
    for (lft, rgt, lbl), _ in ours.items():
        assert lbl != 2 or (lft != rgt)


# ---------------------------------------------------------------- layouts and rewrites


def test_official_blip_nlvr_layout_loads(tmp_path):
    """model_base_nlvr.pth: visual_encoder + the two-attention text_encoder + cls_head (+ position_ids)."""
    m = _model("blip_tiny", "nlvr", **BLIP)
    path = _official_file(tmp_path, m.state_dict(), "model_base_nlvr.pth", ("text_encoder.",))
    ours = BlipNlvr.from_pretrained(path, config=m.config)
    _clean(ours.load_report)
    x = _batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(x["pixel_values"], x["input_ids"], x["attention_mask"]),
                                   m(x["pixel_values"], x["input_ids"], x["attention_mask"]), rtol=0, atol=0)


def test_official_nlvr_layouts_infer_their_config(tmp_path):
    """Without config=: shapes are inferred (head size 64); BLIP's fusion layer and key width come
    from ``self0`` and ALBEF's 18 layers fold back to 6 + 6."""
    for name, task, kw in (("blip_tiny", "nlvr", {}), ("albef_tiny", "nlvr", dict(num_layers=12, fusion_layer=6))):
        m = _model(name, task, hidden_size=64, text_num_heads=1, vision_width=64, heads=1, encoder_width=64, **kw)
        path = _official_file(tmp_path, m.state_dict(), f"{name}.pth", ("text_encoder.",))
        ours = from_pretrained(str(path), task="nlvr")
        _clean(ours.load_report)
        assert ours.config.text.num_layers == m.config.text.num_layers
        assert ours.config.text.fusion_layer == m.config.text.fusion_layer
        assert ours.config.text.encoder_width == 64


def test_blip_pretrain_file_converts_like_load_checkpoint(tmp_path):
    """A BLIP pretraining file: every crossattention.self / output.dense key duplicated into
    self0/self1 and dense0/dense1 (official load_checkpoint); merge_layer and cls_head are fresh,
    the decoder, projections, ITM head, momentum copies and queues are not used."""
    pre = _model("blip_tiny", "pretrain", **BLIP)
    sd = {**pre.state_dict(), "image_queue": torch.zeros(16, 8), "text_queue": torch.zeros(16, 8),
          "queue_ptr": torch.zeros(1, dtype=torch.long)}
    path = _official_file(tmp_path, sd, "model_base.pth", ("text_encoder.", "text_decoder.bert."))
    nlvr = BlipNlvr.from_pretrained(path, config=pre.config)
    rep = nlvr.load_report
    assert rep.mismatched == []
    assert sorted(rep.kept_init) == sorted(k for k in nlvr.state_dict() if k.startswith("cls_head.")
                                           or ".merge_layer." in k)
    assert all(k.split(".")[0] in {"text_decoder", "vision_proj", "text_proj", "itm_head", "temp"} or "_m." in k
               for k in rep.ignored)
    # exactly what the official rewrite + load_state_dict(strict=False) fills
    official = off.blip_load_checkpoint_rewrite(pre.state_dict())
    ours = nlvr.state_dict()
    filled = {k for k in ours if k in official}
    assert filled == set(ours) - set(rep.kept_init)
    for k in filled:
        assert torch.equal(ours[k], official[k]), k
    enc = pre.text_encoder.encoder.layer[7].crossattention
    for i in (0, 1):
        tw = nlvr.text_encoder.encoder.layer[7].crossattention
        assert torch.equal(getattr(tw, f"self{i}").value.weight, enc.self.value.weight)
        assert torch.equal(getattr(tw.output, f"dense{i}").bias, enc.output.dense.bias)
    assert torch.equal(nlvr.text_encoder.encoder.layer[7].crossattention.output.LayerNorm.weight,
                       enc.output.LayerNorm.weight)


def test_blip_pretraining_folder_loads_as_nlvr(tmp_path):
    """The demo's path: a blipx BlipPretrainer folder (shared tensors stored once) as BlipNlvr."""
    pre = _model("blip_tiny", "pretrain", **BLIP)
    pre.save_pretrained(tmp_path / "pre")
    nlvr = from_pretrained(str(tmp_path / "pre"), task="nlvr")
    assert isinstance(nlvr, BlipNlvr) and nlvr.load_report.mismatched == []
    assert all(k.startswith("cls_head.") or ".merge_layer." in k for k in nlvr.load_report.kept_init)
    src = pre.text_decoder.bert.encoder.layer[2].crossattention  # stored under the decoder's name too
    assert torch.equal(nlvr.text_encoder.encoder.layer[2].crossattention.self1.key.weight, src.self.key.weight)
    assert torch.equal(nlvr.text_encoder.encoder.layer[3].attention.self.query.weight,
                       pre.text_encoder.encoder.layer[3].attention.self.query.weight)
    # the conversion is the duplication rule: the same twin names as the official loop gives
    sd = twin_cross_attention_keys({"text_encoder.encoder.layer.0.crossattention.self.query.weight": 1,
                                    "text_encoder.encoder.layer.0.crossattention.output.dense.bias": 2})
    ref = off.blip_load_checkpoint_rewrite({"text_encoder.encoder.layer.0.crossattention.self.query.weight": 1,
                                            "text_encoder.encoder.layer.0.crossattention.output.dense.bias": 2})
    assert set(sd) == set(ref) - {"text_encoder.encoder.layer.0.crossattention.self.query.weight",
                                  "text_encoder.encoder.layer.0.crossattention.output.dense.bias"}


def test_albef_pretrain_rewrite_matches_official_loop():
    pre = _model("albef_tiny", "pretrain", **ALBEF)
    sd = dict(pre.state_dict())
    ref = off.pretrain_nlvr_rewrite(sd)
    ours = nlvr_state_dict_from_pretrain(sd, 6)
    assert ours.keys() == ref.keys()
    assert all(ours[k] is ref[k] for k in ref)


def test_official_albef_pretrain_file_converts_to_18_layers(tmp_path):
    """ALBEF.pth into the text-assignment model (Pretrain_nlvr.py) and the NLVR model: fusion layer
    n feeds layers 6 + 2(n - 6) and 7 + 2(n - 6), which share their (loaded) K/V."""
    pre = _model("albef_tiny", "pretrain", **ALBEF)
    sd = {**pre.state_dict(), "image_queue": torch.zeros(16, 8), "text_queue": torch.zeros(16, 8),
          "queue_ptr": torch.zeros(1, dtype=torch.long)}
    path = _official_file(tmp_path, sd, "ALBEF.pth", ("text_encoder.bert.", "text_encoder_m.bert."))
    enc = pre.text_encoder.bert.encoder.layer
    ta = AlbefNlvrPretrainer.from_pretrained(path, config=pre.config)
    assert ta.load_report.kept_init == ["ta_head.weight", "ta_head.bias"] and ta.load_report.mismatched == []
    assert torch.equal(ta.vision_proj.weight, pre.vision_proj.weight)
    nlvr = AlbefNlvr.from_pretrained(path, config=pre.config.with_overrides(momentum=True))
    assert sorted(nlvr.load_report.kept_init) == sorted(k for k in nlvr.state_dict() if k.startswith("cls_head"))
    for model in (ta, nlvr):
        layers = model.text_encoder.encoder.layer
        for n in range(6, 12):
            for j in (0, 1):
                dst = layers[6 + 2 * (n - 6) + j]
                assert torch.equal(dst.attention.self.query.weight, enc[n].attention.self.query.weight)
                assert torch.equal(dst.crossattention.self.key.weight, enc[n].crossattention.self.key.weight)
                assert torch.equal(dst.output.dense.weight, enc[n].output.dense.weight)
        assert torch.equal(layers[3].attention.self.key.weight, enc[3].attention.self.key.weight)
    # the momentum tower comes from the file's, the head's copy starts equal to the (fresh) head
    assert torch.equal(nlvr.text_encoder_m.encoder.layer[9].output.dense.weight,
                       pre.text_encoder_m.bert.encoder.layer[7].output.dense.weight)
    for p, q in zip(nlvr.cls_head.parameters(), nlvr.cls_head_m.parameters(), strict=True):
        assert torch.equal(p, q)


def test_text_assignment_layout_loads_into_both_models(tmp_path):
    """The Pretrain_nlvr.py checkpoint (18 layers + vision_proj, text_proj, temp, ta_head) loads
    into the text-assignment model as is, and into the NLVR model (NLVR.py) with a fresh
    cls_head; the momentum copies start as the loaded weights."""
    ta = _model("albef_tiny", "nlvr_pretrain", **ALBEF)
    path = _official_file(tmp_path, ta.state_dict(), "ta.pth", ("text_encoder.",))
    _clean(AlbefNlvrPretrainer.from_pretrained(path, config=ta.config).load_report)
    nlvr = AlbefNlvr.from_pretrained(path, config=ta.config.with_overrides(momentum=True))
    rep = nlvr.load_report
    assert set(rep.ignored) == {"vision_proj.weight", "vision_proj.bias", "text_proj.weight", "text_proj.bias",
                                "temp", "ta_head.weight", "ta_head.bias"}
    assert all(k.startswith("cls_head") or "_m." in k for k in rep.kept_init) and rep.mismatched == []
    assert torch.equal(nlvr.text_encoder_m.encoder.layer[13].crossattention.self.value.weight,
                       ta.text_encoder.encoder.layer[13].crossattention.self.value.weight)


def test_official_albef_nlvr_layout_loads(tmp_path):
    """NLVR.py's checkpoint (distill: True, so with visual_encoder_m / text_encoder_m / cls_head_m)."""
    m = _model("albef_tiny", "nlvr", momentum=True, **ALBEF)
    path = _official_file(tmp_path, m.state_dict(), "nlvr.pth", ("text_encoder.", "text_encoder_m."))
    ours = AlbefNlvr.from_pretrained(path, config=m.config)
    _clean(ours.load_report)
    x = _batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(x["pixel_values"], x["input_ids"], x["attention_mask"], momentum=True),
                                   m(x["pixel_values"], x["input_ids"], x["attention_mask"], momentum=True),
                                   rtol=0, atol=0)
    plain = AlbefNlvr.from_pretrained(path, config=m.config.with_overrides(momentum=False))
    assert plain.load_report.kept_init == [] and all("_m." in k for k in plain.load_report.ignored)


def test_nlvr_folders_round_trip(tmp_path):
    for name, task, kw in (("blip_tiny", "nlvr", BLIP), ("albef_tiny", "nlvr", dict(ALBEF, momentum=True)),
                           ("albef_tiny", "nlvr_pretrain", ALBEF)):
        m = _model(name, task, **kw)
        m.save_pretrained(tmp_path / task / name)
        back = from_pretrained(str(tmp_path / task / name))
        assert type(back) is type(m)
        _clean(back.load_report)
        for k, v in m.state_dict().items():
            assert torch.equal(back.state_dict()[k], v), k
    # a truncated NLVR file is refused, naming what is missing
    m = _model("blip_tiny", "nlvr", **BLIP)
    sd = {k: v for k, v in m.state_dict().items() if ".layer.1.crossattention.self1." not in k}
    with pytest.raises(CheckpointError, match="self1"):
        BlipNlvr.from_pretrained(_official_file(tmp_path, sd, "bad.pth"), config=m.config)


# ---------------------------------------------------------------- gradients and degenerate batches


def test_gradients_reach_every_branch():
    for m, task in ((create_model("blip_tiny", "nlvr", **BLIP), BlipNlvrTask),
                    (create_model("albef_tiny", "nlvr", momentum=True, **ALBEF), AlbefNlvrTask)):
        t = task(m)
        t(_batch())["loss"].backward()
        names = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert "visual_encoder.patch_embed.proj.weight" in names and "cls_head.0.weight" in names
        if isinstance(m, BlipNlvr):
            assert {"text_encoder.encoder.layer.7.crossattention.self1.key.weight",
                    "text_encoder.encoder.layer.7.crossattention.output.merge_layer.weight",
                    "text_encoder.encoder.layer.2.crossattention.output.dense0.weight"} <= names
        else:  # the shared key gets the gradient of both layers of its pair; no grad into the copies
            key = m.text_encoder.encoder.layer[17].crossattention.self.key.weight
            assert key is m.text_encoder.encoder.layer[16].crossattention.self.key.weight and key.grad.abs().sum() > 0
            assert not any(n.startswith(("visual_encoder_m", "text_encoder_m", "cls_head_m")) for n in names)


def test_degenerate_batches():
    """B = 1 statements; text assignment with B = 1 (no pair: loss 0, no crash) and B = 2 (no
    "neither": two other images do not exist), where the official multinomial raises."""
    x = _batch(b=1)
    for m, task in ((create_model("blip_tiny", "nlvr", **BLIP), BlipNlvrTask),
                    (create_model("albef_tiny", "nlvr", momentum=True, **ALBEF), AlbefNlvrTask)):
        out = task(m)(x)
        assert torch.isfinite(out["loss"])
        out["loss"].backward()
    m = create_model("albef_tiny", "nlvr_pretrain", **ALBEF)
    t = AlbefTextAssignmentTask(m)
    batch = {k: v[:1] for k, v in _batch(b=1).items() if k != "labels"}
    loss = t(batch)["loss"]
    assert loss.item() == 0.0
    loss.backward()  # a graph-connected zero
    feat = torch.randn(2, 4)
    for _ in range(50):
        left, right, labels, valid = sample_text_assignment(feat @ feat.t())
        assert valid.all() and (labels != 2).all() and set(zip(left.tolist(), right.tolist())) <= {(0, 1), (1, 0)}
    with pytest.raises(ValueError, match="2 \\* B"):
        create_model("blip_tiny", "nlvr")(torch.randn(3, 3, 32, 32), x["input_ids"], x["attention_mask"])
