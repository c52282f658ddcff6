"""VE heads against a transcription of salesforce/ALBEF models/model_ve.py (tests/models/official_ve.py),
and the official VE / pretraining checkpoint layouts loading with no missing or unexpected keys."""

from __future__ import annotations

import pytest
import torch

from blipx.models import AlbefPretrainer, AlbefVe, BlipPretrainer, BlipVe, create_model, from_pretrained

from . import official_ve as off


def _model(cls, name, seed=0, **kw):
    torch.manual_seed(seed)
    task = "ve" if cls in (AlbefVe, BlipVe) else "pretrain"
    m = create_model(name, task, **kw)
    with torch.no_grad():  # a random model with input-dependent, peaked outputs
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return m.eval()


def _batch(b=3, t=6, seed=1, size=32):
    g = torch.Generator().manual_seed(seed)
    px = torch.randn(b, 3, size, size, generator=g)
    ids = torch.randint(1000, 3000, (b, t), generator=g)
    ids[:, 0] = 101
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, -2:] = 0
    ids[0, -2:] = 0
    return px, ids, mask


def _text_fn(enc):
    def run(ids, mask, image_embeds):
        return enc(ids, mask, encoder_hidden_states=image_embeds).last_hidden_state
    return run


def _official_head(m):
    head = off.cls_head(m.config.text.hidden_size)
    head.load_state_dict({k[len("cls_head."):]: v for k, v in m.state_dict().items() if k.startswith("cls_head.")})
    return head


def test_albef_ve_logits_match_official():
    m = _model(AlbefVe, "albef_tiny")
    px, ids, mask = _batch()
    with torch.no_grad():
        ours = m(px, ids, mask).logits
        ref = off.ve_forward(m.visual_encoder, _text_fn(m.text_encoder), _official_head(m), px, ids, mask)
    assert ours.shape == (3, 3)
    assert torch.allclose(ours, ref, atol=1e-6)
    # every text layer runs (multi_modal): the fusion layers see the image
    px2 = px.clone()
    px2[1] += 1.0
    with torch.no_grad():
        assert not torch.allclose(m(px2, ids, mask).logits[1], ours[1])


def test_blip_ve_reads_enc_token():
    m = _model(BlipVe, "blip_tiny")
    px, ids, mask = _batch()
    enc_ids = ids.clone()
    enc_ids[:, 0] = m.config.text.enc_token_id
    with torch.no_grad():
        ours = m(px, ids, mask).logits
        ref = off.ve_forward(m.visual_encoder, _text_fn(m.text_encoder), _official_head(m), px, enc_ids, mask)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_empty_and_single_batches():
    m = _model(AlbefVe, "albef_tiny")
    for b in (0, 1):
        px, ids, mask = _batch(b=max(b, 1))
        out = m(px[:b], ids[:b], mask[:b]).logits
        assert out.shape == (b, 3)


def _official_file(tmp_path, sd, name, buffers=()):
    sd = {k: v.clone() for k, v in sd.items()}
    for prefix in buffers:
        sd[f"{prefix}embeddings.position_ids"] = torch.arange(64)[None]
    path = tmp_path / name
    torch.save({"model": sd, "epoch": 0}, path)
    return path


def _clean(report):
    assert report.ignored == [] and report.kept_init == [] and report.mismatched == []


@pytest.mark.parametrize("momentum", [True, False])
def test_official_albef_ve_layout_loads(tmp_path, momentum):
    """The checkpoint VE.py saves (model_without_ddp.state_dict(), distill: True -> *_m copies;
    position_ids buffers) loads with nothing missing, unexpected or re-drawn."""
    m = _model(AlbefVe, "albef_tiny", momentum=momentum)
    bufs = ("text_encoder.", "text_encoder_m.") if momentum else ("text_encoder.",)
    path = _official_file(tmp_path, m.state_dict(), "ve.pth", bufs)
    ours = AlbefVe.from_pretrained(path, config=m.config)
    _clean(ours.load_report)
    assert {k.split(".")[0] for k in m.state_dict()} == (
        {"visual_encoder", "text_encoder", "cls_head"} | ({"visual_encoder_m", "text_encoder_m", "cls_head_m"}
                                                          if momentum else set()))
    px, ids, mask = _batch()
    with torch.no_grad():
        assert torch.equal(ours(px, ids, mask).logits, m(px, ids, mask).logits)


def test_official_albef_pretrain_file_converts_to_ve(tmp_path):
    """ALBEF.pth -> VE as VE.py loads it: bert. dropped (momentum tower too), the MLM head,
    projections, ITM head and temp unused, the 3-way head fresh (cls_head_m a copy of it)."""
    pre = _model(AlbefPretrainer, "albef_tiny")
    sd = {**pre.state_dict(), "image_queue": torch.zeros(16, 8), "text_queue": torch.zeros(16, 8),
          "queue_ptr": torch.zeros(1, dtype=torch.long)}
    path = _official_file(tmp_path, sd, "ALBEF.pth", ("text_encoder.bert.", "text_encoder_m.bert."))
    ve = AlbefVe.from_pretrained(path, config=pre.config.with_overrides(momentum=True))
    rep = ve.load_report
    assert rep.mismatched == []
    heads = ["cls_head.0.weight", "cls_head.0.bias", "cls_head.2.weight", "cls_head.2.bias"]
    assert sorted(rep.kept_init) == sorted(heads + [h.replace("cls_head", "cls_head_m") for h in heads])
    assert set(rep.ignored) == {k for k in sd if k.split(".")[0] in {
        "vision_proj", "text_proj", "itm_head", "temp", "vision_proj_m", "text_proj_m"} or ".cls." in k}
    # every loaded tensor is where the official rewrite puts it
    ref = off.ve_load_rewrite(pre.state_dict())
    ours = ve.state_dict()
    loaded = [k for k in ours if not k.startswith(("cls_head", "cls_head_m"))]
    assert loaded and all(torch.equal(ours[k], ref[k]) for k in loaded)
    for p, q in zip(ve.cls_head.parameters(), ve.cls_head_m.parameters(), strict=True):
        assert torch.equal(p, q)
    assert ve.cls_head[2].weight.abs().sum() > 0  # a real N(0, std) draw, not zeros


def test_blip_pretrain_folder_loads_as_ve(tmp_path):
    """The demo's path: a blipx BLIP pretraining folder -> BlipVe (encoder with its shared
    cross-attention, ViT; decoder, projections, ITM head ignored; head fresh)."""
    pre = _model(BlipPretrainer, "blip_tiny")
    pre.save_pretrained(tmp_path)
    ve = from_pretrained(str(tmp_path), task="ve")
    assert isinstance(ve, BlipVe)
    assert sorted(ve.load_report.kept_init) == ["cls_head.0.bias", "cls_head.0.weight", "cls_head.2.bias",
                                                "cls_head.2.weight"]
    assert torch.equal(ve.text_encoder.encoder.layer[1].crossattention.self.key.weight,
                       pre.text_encoder.encoder.layer[1].crossattention.self.key.weight)
    assert torch.equal(ve.text_encoder.encoder.layer[0].attention.self.query.weight,
                       pre.text_encoder.encoder.layer[0].attention.self.query.weight)
    # saved and reloaded as itself: nothing fresh any more
    ve.save_pretrained(tmp_path / "ve")
    again = from_pretrained(str(tmp_path / "ve"))
    assert isinstance(again, BlipVe)
    _clean(again.load_report)
    px, ids, mask = _batch()
    with torch.no_grad():
        assert torch.equal(again(px, ids, mask).logits, ve(px, ids, mask).logits)


def test_strict_refuses_a_foreign_head(tmp_path):
    m = _model(AlbefVe, "albef_tiny")
    sd = dict(m.state_dict())
    sd["cls_head.2.weight"] = torch.zeros(2, m.config.text.hidden_size)  # an NLVR-like 2-way head
    path = _official_file(tmp_path, sd, "bad.pth", ("text_encoder.",))
    from blipx.weights.io import CheckpointError

    with pytest.raises(CheckpointError, match="cls_head.2.weight"):
        AlbefVe.from_pretrained(path, config=m.config)
