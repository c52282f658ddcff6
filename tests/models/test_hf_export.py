"""Hugging Face export: tiny blipx models written with ``save_pretrained(format="hf")`` load in
transformers with no missing/unexpected keys and give blipx's outputs (fp32, <= 1e-4; generated
ids equal); blipx -> HF -> blipx keeps every weight; HF ``BlipModel`` folders (ITC only) load
into blipx with BlipModel's own ITC similarities and refuse ITM."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from blipx.models import (AlbefRetriever, BlipCaptioner, BlipPretrainer, BlipRetriever, BlipVqa,  # noqa: E402
                          create_model, from_pretrained)
from blipx.models.layouts.hf import blipx_key_to_hf, hf_key_to_blipx  # noqa: E402
from blipx.tokenizer import blip_tokenizer  # noqa: E402
from blipx.weights import CheckpointError  # noqa: E402

from .hf_tiny import CAPTIONS, pixels, rerandomize, tiny_blip_config  # noqa: E402

ATOL = 1e-4
HF_CLASSES = {"captioner": "BlipForConditionalGeneration", "retriever": "BlipForImageTextRetrieval",
              "vqa": "BlipForQuestionAnswering"}


@pytest.fixture(scope="module")
def tok():
    return blip_tokenizer()


def _tiny(task: str, seed: int = 0):
    """blip_tiny with text width = vision width (HF's VQA decoder needs it) and 16 patches,
    re-randomised like tests/models/hf_tiny.py (N(0, 0.2), LayerNorm weights around 1)."""
    torch.manual_seed(seed)
    m = create_model("blip_tiny", task, text_hidden_size=32, patch_size=8)
    ln = {id(p) for mod in m.modules() if isinstance(mod, nn.LayerNorm) for p in mod.parameters(recurse=False)
          if p.dim() == 1 and p is mod.weight}
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if id(p) in ln else 0.0))
    return m.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """task -> (blipx model, HF folder, HF model loaded from it)."""
    out = {}
    for i, task in enumerate(HF_CLASSES):
        m = _tiny(task, seed=i)
        d = tmp_path_factory.mktemp(f"hf_{task}")
        m.save_pretrained(d, format="hf")
        hf, info = getattr(transformers, HF_CLASSES[task]).from_pretrained(d, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
        out[task] = (m, d, hf.eval())
    return out


def _batch(tok, texts, first=None):
    enc = tok(texts, padding="longest", return_tensors="pt")
    ids, mask = enc.input_ids, enc.attention_mask
    if first is not None:
        ids[:, 0] = first
    return ids, mask


def test_export_folder_is_an_hf_blip_folder(exported):
    for task, (m, d, _) in exported.items():
        meta = json.loads((d / "config.json").read_text())
        assert meta["architectures"] == [HF_CLASSES[task]] and meta["model_type"] == "blip"
        names = {p.name for p in d.iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt"} <= names
        assert not any(n.endswith(".tmp") for n in names)


def test_exported_processor_matches_blipx_preprocessing(exported, tok):
    """The processor files make the folder usable as HF folders are: BlipProcessor gives blipx's
    token ids (with [DEC] and [ENC] at blipx's ids) and blipx's pixel values."""
    from PIL import Image

    from blipx.data.processing import image_processor

    _, d, _ = exported["captioner"]
    proc = transformers.BlipProcessor.from_pretrained(d)
    assert proc.tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [30522, 30523]
    assert proc.tokenizer.bos_token_id == 30522
    assert proc.tokenizer(CAPTIONS).input_ids == tok(CAPTIONS).input_ids
    x = torch.linspace(0, 255, 64)
    img = torch.stack([x[None, :].expand(48, 64), x[:48, None].expand(48, 64), (255 - x[None, :]).expand(48, 64)], -1)
    pil = Image.fromarray(img.to(torch.uint8).numpy())
    ours = image_processor("blip", 32)(pil)
    theirs = proc(images=pil, return_tensors="pt").pixel_values
    assert theirs.shape == ours.shape == (1, 3, 32, 32)
    # HF's BlipImageProcessor may resize with torchvision rather than PIL: a few 8-bit levels.
    assert (theirs - ours).abs().max() < 4 / 255 / 0.26


@pytest.mark.parametrize("padded", [False, True])
def test_captioner_export_logits_match(exported, tok, padded):
    m, _, hf = exported["captioner"]
    caps = CAPTIONS if padded else [CAPTIONS[0]] * 3
    ids, mask = _batch(tok, caps, first=tok.bos_token_id)
    px = pixels(3)
    with torch.no_grad():
        ref = hf(pixel_values=px, input_ids=ids, attention_mask=mask).logits
        out = m(px, ids, mask).logits
    keep = mask.bool()
    assert (out[keep] - ref[keep]).abs().max() <= ATOL
    assert (ref[0] - ref[1]).abs().max() > 1e-2  # the logits depend on the image


@pytest.mark.parametrize("kw", [dict(max_length=12), dict(num_beams=3, max_length=12, min_length=5)])
def test_captioner_export_generates_the_same_ids(exported, kw):
    m, _, hf = exported["captioner"]
    px = pixels(3, seed=2)
    with torch.no_grad():
        ref = hf.generate(pixel_values=px, **kw)
        ids = m.generate(px, **kw)
    assert ids.shape == ref.shape and torch.equal(ids, ref)
    assert ref.shape[1] > 2 and not torch.equal(ref[0], ref[1])


def test_retriever_export_itm_and_itc_match(exported, tok):
    m, _, hf = exported["retriever"]
    ids, mask = _batch(tok, CAPTIONS)
    px = pixels(3, seed=5)
    with torch.no_grad():
        ref_itm = hf(input_ids=ids, pixel_values=px, attention_mask=mask, use_itm_head=True).itm_score
        ref_itc = hf(input_ids=ids, pixel_values=px, attention_mask=mask, use_itm_head=False).itm_score
        itm = m(px, ids, mask, use_itm_head=True).itm_logits
        itc = m(px, ids, mask, use_itm_head=False).itc_similarity
    assert itm.shape == (3, 2) and itc.shape == (3, 3)
    assert (itm - ref_itm).abs().max() <= ATOL and (itc - ref_itc).abs().max() <= ATOL
    assert ref_itm.std() > 1e-2 and ref_itc.std() > 1e-2


def test_vqa_export_generate_and_decoder_logits_match(exported, tok):
    m, _, hf = exported["vqa"]
    q_ids, q_mask = _batch(tok, ["what is the dog doing?", "how many cats?", "what colour is the bicycle?"])
    a_ids, a_mask = _batch(tok, ["running on the beach", "two", "red"], first=tok.bos_token_id)
    px = pixels(3, seed=4)
    with torch.no_grad():
        for kw in (dict(max_length=8), dict(num_beams=3, max_length=8, min_length=2)):
            ref = hf.generate(input_ids=q_ids, pixel_values=px, attention_mask=q_mask, **kw)
            ids = m.generate(px, q_ids, q_mask, **kw)
            assert ids.shape == ref.shape and torch.equal(ids, ref), kw
        img = hf.vision_model(pixel_values=px).last_hidden_state
        q_ref = hf.text_encoder(input_ids=q_ids, attention_mask=q_mask, encoder_hidden_states=img).last_hidden_state
        ref_logits = hf.text_decoder(input_ids=a_ids, attention_mask=a_mask, encoder_hidden_states=q_ref).logits
        out = m(px, q_ids, q_mask)
        logits = m.answer_logits(out.question_embeds, None, a_ids, a_mask)  # HF: all-ones question mask
    qk, ak = q_mask.bool(), a_mask.bool()
    assert (out.question_embeds[qk] - q_ref[qk]).abs().max() <= ATOL
    assert (logits[ak] - ref_logits[ak]).abs().max() <= ATOL


@pytest.mark.parametrize("task,cls", [("captioner", BlipCaptioner), ("retriever", BlipRetriever), ("vqa", BlipVqa)])
def test_round_trip_blipx_hf_blipx_keeps_every_weight(exported, task, cls):
    m, d, _ = exported[task]
    back = cls.from_pretrained(d)
    ours, theirs = m.state_dict(), back.state_dict()
    assert set(ours) == set(theirs)
    # HF has no ITC temperature: it comes back at its init and is reported, everything else is exact.
    assert back.load_report.kept_init == (["temp"] if task == "retriever" else [])
    for k in ours:
        if k != "temp":
            assert torch.equal(ours[k], theirs[k]), k
    dec = getattr(back, "text_decoder", None)
    if dec is not None:  # the LM head, which HF files omit, is tied again
        assert dec.cls.predictions.decoder.weight is dec.bert.embeddings.word_embeddings.weight


def test_models_without_an_hf_class_are_refused(tmp_path):
    cases = [
        (create_model("albef_tiny", "retriever"), "transformers has no ALBEF"),
        (create_model("blip_tiny", "pretrain"), "task='captioner' | 'retriever' | 'vqa'"),
        # blip_tiny's text width (8) differs from its vision width (32): HF's VQA decoder cannot hold it.
        (create_model("blip_tiny", "vqa"), "answer decoder"),
    ]
    for i, (model, msg) in enumerate(cases):
        d = tmp_path / str(i)
        with pytest.raises(ValueError, match=msg.replace("|", r"\|").replace("(", r"\(")) as e:
            model.save_pretrained(d, format="hf")
        assert "BlipForConditionalGeneration" in str(e.value) or "does not fit" in str(e.value)
        assert not d.exists()  # refused before anything is written
    with pytest.raises(ValueError, match="format must be 'blipx' or 'hf'"):
        create_model("blip_tiny", "captioner").save_pretrained(tmp_path / "x", format="onnx")
    assert isinstance(create_model("albef_tiny", "retriever"), AlbefRetriever)
    assert isinstance(create_model("blip_tiny", "pretrain"), BlipPretrainer)


def test_default_format_is_still_blipx(tmp_path):
    _tiny("captioner").save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["format"] == "blipx"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


# --- HF BlipModel (ITC only) ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_blip_model(tmp_path_factory):
    torch.manual_seed(0)
    m = rerandomize(transformers.BlipModel(tiny_blip_config()), seed=7)
    with torch.no_grad():
        m.logit_scale.fill_(2.5)
    d = tmp_path_factory.mktemp("hf_blip_model")
    m.save_pretrained(d)
    return m, d


def _hf_features(out) -> torch.Tensor:
    # transformers 5.2x returns a model output whose pooler_output is projected; older 5.x a tensor.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _hf_itc(hf, px, ids, mask) -> torch.Tensor:
    img = torch.nn.functional.normalize(_hf_features(hf.get_image_features(pixel_values=px)), dim=-1)
    txt = torch.nn.functional.normalize(_hf_features(hf.get_text_features(input_ids=ids, attention_mask=mask)), dim=-1)
    return img @ txt.t()


def test_blip_model_folder_loads_as_itc_only_retriever(hf_blip_model, tok):
    hf, d = hf_blip_model
    ours = from_pretrained(d)
    assert type(ours) is BlipRetriever and not ours.config.itm_head and not hasattr(ours, "itm_head")
    assert any("ITC only" in n and "no ITM head" in n for n in ours.load_report.notes)
    assert not ours.load_report.kept_init and not ours.load_report.ignored
    ids, mask = _batch(tok, CAPTIONS)
    px = pixels(3, seed=6)
    with torch.no_grad():
        ref = _hf_itc(hf, px, ids, mask)
        out = ours(px, ids, mask, use_itm_head=False)
        logits = hf(input_ids=ids, pixel_values=px, attention_mask=mask).logits_per_image
    assert (out.itc_similarity - ref).abs().max() <= ATOL
    assert ref.std() > 1e-2
    # BlipModel's logits are exp(logit_scale) * cos; blipx keeps temp = exp(-logit_scale).
    assert abs(ours.temp.detach().item() - torch.exp(torch.tensor(-2.5)).item()) < 1e-6
    assert (out.itc_similarity / ours.temp - logits).abs().max() <= 1e-3
    # The ITM head is absent: every ITM call refuses instead of scoring.
    with pytest.raises(RuntimeError, match="no ITM head"):
        ours(px, ids, mask)
    with pytest.raises(RuntimeError, match="no ITM head"):
        ours.itm_logits(out.image_embeds, ids, mask)
    with pytest.raises(CheckpointError, match="holds an HF BlipModel; load it with BlipRetriever"):
        BlipCaptioner.from_pretrained(d)


def test_blip_model_round_trip_writes_a_blip_model_folder(hf_blip_model, tok, tmp_path):
    hf, d = hf_blip_model
    ours = BlipRetriever.from_pretrained(d)
    ours.save_pretrained(tmp_path, format="hf")
    back, info = transformers.BlipModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ids, mask = _batch(tok, CAPTIONS[:2])
    px = pixels(2, seed=8)
    with torch.no_grad():
        assert (_hf_itc(back.eval(), px, ids, mask) - _hf_itc(hf, px, ids, mask)).abs().max() <= 1e-6
    assert abs(back.logit_scale.detach().item() - 2.5) < 1e-6
    theirs = hf.state_dict()
    for k, v in back.state_dict().items():
        if k != "logit_scale" and not k.endswith("position_ids"):
            assert torch.equal(v, theirs[k]), k
    again = BlipRetriever.from_pretrained(tmp_path)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in ours.state_dict().items())
    # The blipx format keeps the ITC-only layout too (config.itm_head / itc_pooling).
    ours.save_pretrained(tmp_path / "blipx")
    bx = from_pretrained(tmp_path / "blipx")
    assert (bx.config.itm_head, bx.config.itc_pooling) == (False, "hf_blip_model")
    assert all(torch.equal(v, bx.state_dict()[k]) for k, v in ours.state_dict().items())


def test_blip_model_key_map_is_its_own_inverse(hf_blip_model):
    hf, _ = hf_blip_model
    ours = BlipRetriever.from_pretrained(hf_blip_model[1])
    hf_keys = {k for k in hf.state_dict() if not k.endswith("position_ids") and k != "logit_scale"}
    mapped = {hf_key_to_blipx(k, "BlipModel") for k in hf_keys}
    assert mapped == set(ours.state_dict()) - {"temp"}
    assert all(blipx_key_to_hf(hf_key_to_blipx(k, "BlipModel"), "BlipModel") == k for k in hf_keys)


def test_cli_export_hf(tmp_path, capsys):
    from blipx.cli import main

    src = tmp_path / "pretrain"
    create_model("blip_tiny", "pretrain").save_pretrained(src)
    out = tmp_path / "hf"
    # A pretraining folder has no HF class as a whole: the message says how to pick a head.
    assert main(["export", "hf", "--model", str(src), "--out", str(out)]) == 2
    assert "task='captioner'" in capsys.readouterr().err and not out.exists()
    assert main(["export", "hf", "--model", str(src), "--out", str(out), "--task", "captioner"]) == 0
    assert "as HF BlipForConditionalGeneration" in capsys.readouterr().out
    hf, info = transformers.BlipForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert main(["export", "hf", "--model", str(src), "--out", str(out), "--task", "captioner"]) == 2  # no overwrite
    assert main(["export", "hf", "--model", str(src), "--out", str(out), "--task", "retriever", "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BlipForImageTextRetrieval"]
    assert main(["export", "hf", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 1
