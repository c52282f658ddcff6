"""blipx.load / Pipeline: every method on tiny models of both families, with every input type;
results checked against the models' own calls (generate, rank_answers, ITC/ITM heads, gradcam)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import blipx
from blipx.data import ShapesDataset, image_processor, pre_caption
from blipx.models import create_model
from blipx.models.blip import with_first_token
from blipx.tokenizer import tokenizer_for
from blipx.weights.io import CheckpointError

FAMILIES = ("blip", "albef")
TEXTS = ["a small red circle", "a large blue square on the left", "green triangle"]


def _sharpen(model):
    with torch.no_grad():  # sharper logits than the init: outputs depend on the pixels and texts
        for p in model.parameters():
            p.mul_(4.0)
    return model


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    torch.manual_seed(0)
    out = {}
    for fam in FAMILIES:
        model = _sharpen(create_model(f"{fam}_tiny", "pretrain"))
        if fam == "blip":  # captions that end (EOS) after a few tokens: the scores' length rule matters
            with torch.no_grad():
                model.text_decoder.cls.predictions.bias[model.config.text.sep_token_id] += 3.0
        model.save_pretrained(root / fam)
        out[fam] = root / fam
    create_model("blip_tiny", "captioner").save_pretrained(root / "captioner")
    _sharpen(create_model("blip_tiny", "vqa")).save_pretrained(root / "vqa")
    out["captioner"], out["vqa"] = root / "captioner", root / "vqa"
    return out


@pytest.fixture(scope="module")
def pipes(ckpts):
    return {fam: blipx.load(ckpts[fam], device="cpu") for fam in FAMILIES}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Three 32 px scenes (the tiny models' size: every input type gives the same pixels) as PIL
    images, and saved as PNG files."""
    d = tmp_path_factory.mktemp("scenes")
    ds = ShapesDataset("val", num_samples=3, image_size=32)
    pil = [ds.raw(i)["image"].convert("RGB") for i in range(3)]
    paths = []
    for i, im in enumerate(pil):
        im.save(d / f"{i}.png")
        paths.append(d / f"{i}.png")
    return pil, paths


def _as(kind, pil, paths):
    """The three scenes as input type ``kind``."""
    arrays = [np.asarray(im) for im in pil]
    u8 = [torch.from_numpy(a).permute(2, 0, 1).contiguous() for a in arrays]
    return {
        "pil": pil,
        "path": paths,
        "str": [str(p) for p in paths],
        "numpy": arrays,
        "numpy_float": [a.astype(np.float32) / 255 for a in arrays],
        "uint8_chw": u8,
        "float_chw": [t.float() / 255 for t in u8],
        "bchw": torch.stack(u8),
        "float_bchw": torch.stack(u8).float() / 255,
    }[kind]


INPUT_KINDS = ["path", "str", "numpy", "numpy_float", "uint8_chw", "float_chw", "bchw", "float_bchw"]


def _pixels(model, images):
    return image_processor(model.config.family, model.config.vision.image_size)(images)


def _direct_text(model, texts):
    """Tokenized, pre_caption-cleaned texts and their unimodal states, straight from the model."""
    from blipx.evaluation.retrieval import MAX_LENGTH

    fam = model.config.family
    tok = tokenizer_for(fam)([pre_caption(t, 30, fam) for t in texts], padding="max_length", truncation=True,
                             max_length=MAX_LENGTH[fam], return_tensors="pt")
    h = model.encode_text(tok["input_ids"], tok["attention_mask"])
    return tok["input_ids"], tok["attention_mask"], h


def _run_all(p, images, fam):
    out = {
        "features": p.features(images, TEXTS),
        "multimodal": p.features(images, TEXTS, kind="multimodal"),
        "match": p.match(images, TEXTS),
        "grid": p.match(images, TEXTS[:2], grid=True),
        "classify": p.classify(images, ["circle", "square", "triangle"]),
        "answer": p.answer(images, "what shape is it?", answers=["circle", "square"], return_scores=True),
        "gradcam": p.gradcam(images[0] if isinstance(images, list) else images[:1], TEXTS[0]),
    }
    if fam == "blip":
        out["caption"] = p.caption(images, return_scores=True, max_length=10)
    return out


@pytest.fixture(scope="module")
def reference(pipes, scenes):
    with pytest.warns(UserWarning, match="not a fine-tuned VQA model"):  # pretraining folder as VQA
        return {fam: _run_all(pipes[fam], scenes[0], fam) for fam in FAMILIES}


def _same(a, b):
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("kind", INPUT_KINDS)
def test_every_method_every_input_type(pipes, scenes, reference, fam, kind):
    """Each method on each input type gives the PIL images' results (one preprocessing path)."""
    got = _run_all(pipes[fam], _as(kind, *scenes), fam)
    _same(got, reference[fam])


@pytest.mark.parametrize("fam", FAMILIES)
def test_reference_outputs_have_the_documented_shapes(reference, fam):
    r = reference[fam]
    d = 16  # embed_dim of the tiny configs
    assert r["features"]["image"].shape == (3, d) and r["features"]["text"].shape == (3, d)
    assert r["multimodal"]["multimodal"].shape == (3, 8)
    assert r["match"]["itm"].shape == (3,) and r["grid"]["itc"].shape == (3, 2)
    assert r["classify"].shape == (3, 3)
    answers, scores = r["answer"]
    assert set(answers) <= {"circle", "square"} and scores.shape == (3,)
    assert r["gradcam"].shape == (2, 2) and bool((r["gradcam"] >= 0).all())
    if fam == "blip":
        caps, sc = r["caption"]
        assert len(caps) == 3 and all(isinstance(c, str) for c in caps) and sc.shape == (3,)
    # the sharpened tiny models respond to the image: not every scene gets the same features
    assert not torch.allclose(r["features"]["image"][0], r["features"]["image"][1])


def test_odd_sized_image_same_via_pil_path_and_numpy(pipes, tmp_path):
    im = ShapesDataset("val", num_samples=1, image_size=57).raw(0)["image"].convert("RGBA")
    im.save(tmp_path / "odd.png")
    p = pipes["blip"]
    ref = p.features(Image.open(tmp_path / "odd.png"))["image"]
    _same(p.features(tmp_path / "odd.png")["image"], ref)
    _same(p.features(np.asarray(Image.open(tmp_path / "odd.png")))["image"], ref)  # RGBA array


# -- captions ---------------------------------------------------------------------------------------


def test_caption_beam_scores_equal_generate(pipes, scenes):
    p = pipes["blip"]
    model = p.model("captioner")
    pv = _pixels(model, scenes[0])
    kw = dict(num_beams=3, max_length=10, min_length=2)
    caps, scores = p.caption(scenes[0], return_scores=True, **kw)
    out = model.generate(pv, return_dict=True, **kw)
    torch.testing.assert_close(scores, out.sequences_scores.float())
    assert caps == model.caption(pv, **kw)
    caps2, scores2 = p.caption(scenes[0], num_captions=2, return_scores=True, **kw)
    out2 = model.generate(pv, return_dict=True, num_return_sequences=2, **kw)
    assert len(caps2) == 3 and all(len(c) == 2 for c in caps2) and scores2.shape == (3, 2)
    torch.testing.assert_close(scores2.flatten(), out2.sequences_scores.float())
    assert [c for pair in caps2 for c in pair] == model.caption(pv, num_return_sequences=2, **kw)
    # The teacher-forced scorer used for greedy/sampling gives beam search's own scores on its
    # hypotheses (HF's length rule: EOS counted, prompt not).
    from blipx.api import sequence_scores

    tf = sequence_scores(model.text_decoder, model.visual_encoder(pv), None, out2.sequences, 1, 1.0,
                         model.config.text.sep_token_id)
    torch.testing.assert_close(tf, out2.sequences_scores.float(), rtol=1e-4, atol=1e-5)


def test_caption_greedy_scores_equal_generate_per_step_scores(pipes, scenes):
    p = pipes["blip"]
    model = p.model("captioner")
    pv = _pixels(model, scenes[0])
    kw = dict(num_beams=1, max_length=12, min_length=0)  # no EOS ban: HF's scores are the log-probs' logits
    caps, scores = p.caption(scenes[0], return_scores=True, **kw)
    out = model.generate(pv, return_dict=True, output_scores=True, **kw)
    logp = torch.stack(out.scores, 1).log_softmax(-1)  # [B, new, V]
    gen = out.sequences[:, 1:]
    tok_lp = logp.gather(-1, gen[..., None]).squeeze(-1)
    eos = (gen == model.config.text.sep_token_id).int()
    valid = (eos.cumsum(1) - eos) == 0
    want = (tok_lp * valid).sum(1) / valid.sum(1)
    assert bool(eos.any())  # captions end with EOS: the length rule (EOS counted) matters
    torch.testing.assert_close(scores, want, rtol=1e-4, atol=1e-5)
    assert caps == model.caption(pv, **kw)


def test_caption_sampling_and_prompt(pipes, scenes):
    p = pipes["blip"]
    g = torch.Generator().manual_seed(3)
    caps, scores = p.caption(scenes[0], num_captions=3, return_scores=True, do_sample=True, top_p=0.9, top_k=0,
                             max_length=10, generator=g)
    assert len(caps) == 3 and all(len(c) == 3 for c in caps) and scores.shape == (3, 3)
    assert bool((scores <= 0).all()) and bool(torch.isfinite(scores).all())
    model = p.model("captioner")
    pv = _pixels(model, scenes[0])
    assert p.caption(scenes[0], prompt="a picture of ", max_length=12) == model.caption(
        pv, "a picture of ", num_beams=3, max_length=12, min_length=5)


# -- dtype and device -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16),
                                               (torch.bfloat16, torch.bfloat16), ("fp32", torch.float32)])
def test_dtype_and_device_are_honoured(ckpts, scenes, dtype, torch_dtype):
    p = blipx.load(ckpts["blip"], device="cpu", dtype=dtype)
    assert p.device == torch.device("cpu") and p.dtype == torch_dtype
    ref = blipx.load(ckpts["blip"], device=torch.device("cpu"))
    got = p.match(scenes[0], TEXTS)
    for task in ("retriever", "captioner"):
        params = list(p.model(task).parameters())
        assert {q.dtype for q in params} == {torch_dtype} and {q.device.type for q in params} == {"cpu"}
    want = ref.match(scenes[0], TEXTS)
    tol = 0 if torch_dtype == torch.float32 else 5e-2
    torch.testing.assert_close(got["itc"], want["itc"], rtol=0, atol=tol)
    assert got["itm"].dtype == torch.float32  # results are float32 whatever the model dtype
    caps = p.caption(scenes[0], max_length=8)
    assert len(caps) == 3


def test_default_device_and_bad_dtype_device(ckpts):
    p = blipx.load(ckpts["blip"])
    assert p.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="dtype"):
        blipx.load(ckpts["blip"], dtype="int8")
    with pytest.raises(ValueError, match="dtype"):
        blipx.load(ckpts["blip"], dtype=torch.int32)
    with pytest.raises(ValueError, match="device"):
        blipx.load(ckpts["blip"], device="not-a-device")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda'"):
            blipx.load(ckpts["blip"], device="cuda")


@pytest.mark.cuda
def test_cuda_bf16(ckpts, scenes):
    p = blipx.load(ckpts["blip"], device="cuda", dtype="bf16")
    ref = blipx.load(ckpts["blip"], device="cpu")
    torch.testing.assert_close(p.features(scenes[0])["image"], ref.features(scenes[0])["image"], rtol=0, atol=5e-2)
    assert next(p.model("retriever").parameters()).is_cuda
    assert len(p.caption(scenes[0])) == 3


# -- match, features, classify ----------------------------------------------------------------------


@pytest.mark.parametrize("fam", FAMILIES)
def test_pairs_and_grid_agree(pipes, scenes, fam):
    p = pipes[fam]
    pairs = p.match(scenes[0], TEXTS)
    grid = p.match(scenes[0], TEXTS, grid=True)
    assert grid["itm"].shape == (3, 3)
    torch.testing.assert_close(grid["itm"].diagonal(), pairs["itm"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grid["itc"].diagonal(), pairs["itc"], rtol=1e-5, atol=1e-6)
    f = p.features(scenes[0], TEXTS)
    torch.testing.assert_close(grid["itc"], f["image"] @ f["text"].t(), rtol=1e-5, atol=1e-6)
    # the grid in ITM chunks of one image-text pair per forward gives the same probabilities
    import blipx.api as api

    old, api.ITM_ROWS = api.ITM_ROWS, 1
    try:
        torch.testing.assert_close(p.match(scenes[0], TEXTS, grid=True, batch_size=1)["itm"], grid["itm"])
    finally:
        api.ITM_ROWS = old
    # one image against many texts, one text against many images: broadcast pairs
    one = p.match(scenes[0][0], TEXTS)
    torch.testing.assert_close(one["itm"], grid["itm"][0], rtol=1e-5, atol=1e-6)
    col = p.match(scenes[0], TEXTS[1])
    torch.testing.assert_close(col["itc"], grid["itc"][:, 1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fam", FAMILIES)
def test_features_equal_the_models_itc_and_fused_states(pipes, scenes, fam):
    p = pipes[fam]
    model = p.model("retriever")
    pv = _pixels(model, scenes[0])
    with torch.no_grad():
        emb = model.visual_encoder(pv)
        ids, mask, h = _direct_text(model, TEXTS)
        img_feat = F.normalize(model.vision_proj(emb[:, 0]), dim=-1)
        txt_feat = F.normalize(model.text_proj(h[:, 0]), dim=-1)
        if fam == "blip":
            fused = model.text_encoder(with_first_token(ids, model.config.text.enc_token_id), mask,
                                       encoder_hidden_states=emb).last_hidden_state[:, 0]
        else:
            fused = model.fuse(h, mask, emb)[:, 0]
        itm = model.itm_head(fused).softmax(-1)[:, 1]
    f = p.features(scenes[0], TEXTS)
    torch.testing.assert_close(f["image"], img_feat, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(f["text"], txt_feat, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(f["image"].norm(dim=-1), torch.ones(3))
    mm = p.features(scenes[0], TEXTS, kind="multimodal")["multimodal"]
    torch.testing.assert_close(mm, fused, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(p.match(scenes[0], TEXTS)["itm"], itm, rtol=1e-5, atol=1e-6)
    assert p.features(texts=TEXTS).keys() == {"text"} and p.features(scenes[0]).keys() == {"image"}


@pytest.mark.parametrize("fam", FAMILIES)
def test_classify_is_a_softmax_over_itc(pipes, scenes, fam):
    p = pipes[fam]
    model = p.model("retriever")
    labels = ["circle", "square", "triangle", "diamond"]
    probs = p.classify(scenes[0], labels, template="a {} shape")
    with torch.no_grad():
        img = model.image_features(model.visual_encoder(_pixels(model, scenes[0])))
        txt = model.text_features(_direct_text(model, [f"a {c} shape" for c in labels])[2])
        want = (img @ txt.t() / model.temp).softmax(-1)
    torch.testing.assert_close(probs, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    rr = p.classify(scenes[0], labels, template="a {} shape", rerank=True, rerank_k=2)
    torch.testing.assert_close(rr.sum(-1), torch.ones(3))
    assert bool(((rr > 0).sum(-1) <= 2).all())
    kept = rr > 0
    top2 = torch.zeros_like(kept).scatter_(1, probs.topk(2, dim=1).indices, True)
    assert bool((kept <= top2).all())  # re-ranking only reorders the ITC top k


# -- answers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fam", FAMILIES)
def test_answer_rank_and_generate_equal_the_models(ckpts, pipes, scenes, fam):
    from blipx.data.vqa import pre_question, tokenize_answers

    p = blipx.load(ckpts["vqa"] if fam == "blip" else ckpts[fam], device="cpu")
    if fam == "albef":
        with pytest.warns(UserWarning, match="not a fine-tuned VQA model"):
            model = p.model("vqa")
    else:
        model = p.model("vqa")
    tok = tokenizer_for(fam)
    qs = ["What shape is it?", "what colour is the shape", "is it small?"]
    cands = ["circle", "square", "red", "yes", "no"]
    got, scores = p.answer(scenes[0], qs, answers=cands, return_scores=True, k_test=3)
    pv = _pixels(model, scenes[0])
    q = tok([pre_question(x, fam) for x in qs], padding="longest", return_tensors="pt")
    a_ids, a_mask = tokenize_answers(tok, cands, fam)
    ranked = model.rank_answers(pv, q["input_ids"], q["attention_mask"], a_ids, a_mask, 3)
    assert got == [cands[i] for i in ranked.best.tolist()]
    torch.testing.assert_close(scores, ranked.scores[:, 0].float())
    gen, gscores = p.answer(scenes[0], qs, return_scores=True)
    ids = q["input_ids"]
    extra = {}
    if fam == "blip":
        ids, extra = with_first_token(ids, model.config.text.enc_token_id), {"mask_question_padding": True}
    out = model.generate(pv, ids, q["attention_mask"], return_dict=True, num_beams=3, max_length=10, min_length=1,
                         **extra)
    assert gen == [s.strip() for s in tok.batch_decode(out.sequences.tolist(), skip_special_tokens=True)]
    torch.testing.assert_close(gscores, out.sequences_scores.float())
    assert p.answer(scenes[0], qs) == gen  # return_scores=False: the answers alone


def test_vqa_checkpoint_answers_without_warning(ckpts, scenes, recwarn):
    p = blipx.load(ckpts["vqa"], device="cpu", task="vqa")
    assert not [w for w in recwarn if "VQA" in str(w.message)]
    assert len(p.answer(scenes[0][0], "what is it?", max_length=5)) == 1


# -- Grad-CAM ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fam", FAMILIES)
def test_gradcam_equals_models_gradcam(pipes, scenes, fam):
    from blipx.models.gradcam import gradcam

    p = pipes[fam]
    model = p.model("retriever")
    heat = p.gradcam(scenes[1][0], TEXTS[0])
    ids, mask, _ = _direct_text(model, TEXTS[:1])
    want = gradcam(model, _pixels(model, scenes[0][:1]), ids, mask)[0]
    torch.testing.assert_close(heat, want, rtol=1e-4, atol=1e-7)
    layer0 = p.gradcam(scenes[0][0], TEXTS[0], layer=model.config.text.fusion_layer)
    assert layer0.shape == heat.shape
    with pytest.raises(ValueError, match="one image"):
        p.gradcam(scenes[0], TEXTS[0])


# -- batching, progress, degenerate inputs ----------------------------------------------------------


def test_batching_and_progress_bar(ckpts, scenes, capsys):
    p = blipx.load(ckpts["blip"], device="cpu", batch_size=1)
    imgs = scenes[0] + scenes[0][:2]  # 5 images, 5 batches > 3: a bar
    one = p.features(imgs)["image"]
    assert "features" in capsys.readouterr().err
    big = p.features(imgs, batch_size=16)["image"]
    assert "features" not in capsys.readouterr().err  # one batch: no bar
    torch.testing.assert_close(one, big, rtol=1e-5, atol=1e-6)
    p.features(imgs, progress=False)
    assert "features" not in capsys.readouterr().err
    assert p.caption(imgs, max_length=8, progress=False) == p.caption(imgs, max_length=8, batch_size=16)


def test_degenerate_inputs(pipes, scenes):
    p = pipes["blip"]
    assert p.caption([]) == []
    caps, sc = p.caption([], return_scores=True)
    assert caps == [] and sc.shape == (0,)
    assert p.match([], []).keys() == {"itm", "itc"} and p.match([], [])["itm"].shape == (0,)
    assert p.match([], TEXTS, grid=True)["itm"].shape == (0, 3)
    assert p.classify([], ["a", "b"]).shape == (0, 2)
    assert p.features([])["image"].shape == (0, 16)
    assert p.answer([], []) == [] and p.answer([], "what?") == []
    assert p.match(scenes[0][0], [])["itm"].shape == (0,)
    one = p.classify(scenes[0][0], ["only"])  # one image, one class
    torch.testing.assert_close(one, torch.ones(1, 1))


# -- errors -----------------------------------------------------------------------------------------


def test_errors_name_the_method_and_what_the_checkpoint_holds(ckpts, pipes, scenes, tmp_path):
    with pytest.raises(CheckpointError, match=r"Pipeline\.caption\(\).*AlbefPretrainer"):
        pipes["albef"].caption(scenes[0])
    cap = blipx.load(ckpts["captioner"], device="cpu")
    assert len(cap.caption(scenes[0][0], max_length=6)) == 1
    for method, call in (("match", lambda: cap.match(scenes[0], TEXTS)),
                         ("classify", lambda: cap.classify(scenes[0], ["a"])),
                         ("features", lambda: cap.features(scenes[0])),
                         ("answer", lambda: cap.answer(scenes[0], TEXTS))):
        with pytest.raises(CheckpointError, match=rf"Pipeline\.{method}\(\).*BlipCaptioner"):
            call()
    assert not cap.supports("match") and cap.supports("caption")
    vqa = blipx.load(ckpts["vqa"], device="cpu")
    with pytest.raises(CheckpointError, match=r"Pipeline\.caption\(\).*BlipVqa"):
        vqa.caption(scenes[0])
    with pytest.raises(CheckpointError, match="captioner"):  # task= loads now: fails at load
        blipx.load(ckpts["vqa"], task="captioner")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        blipx.load(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="task"):
        blipx.load(ckpts["blip"], task="caption")


def test_errors_name_the_argument(pipes, scenes, tmp_path):
    p = pipes["blip"]
    with pytest.raises(TypeError, match="texts"):
        p.match(scenes[0], 3)
    with pytest.raises(ValueError, match="3 images and 2 texts"):
        p.match(scenes[0], TEXTS[:2])
    with pytest.raises(ValueError, match=r"images\[1\].*\[0, 1\]"):
        p.features([torch.rand(3, 32, 32), torch.randn(3, 32, 32) * 3])
    with pytest.raises(ValueError, match=r"images\[0\].*permute"):
        p.features(torch.zeros(32, 32, 3, dtype=torch.uint8))
    with pytest.raises(TypeError, match=r"images\[0\].*int16"):
        p.features(np.zeros((8, 8, 3), np.int16))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"images\[1\].*bad\.png.*corrupt"):
        p.features([scenes[1][0], tmp_path / "bad.png"])
    with pytest.raises(TypeError, match="images"):
        p.features(42)
    with pytest.raises(ValueError, match="labels"):
        p.classify(scenes[0], [])
    with pytest.raises(ValueError, match="template"):
        p.classify(scenes[0], ["a"], template="no slot")
    with pytest.raises(ValueError, match="kind"):
        p.features(scenes[0], kind="fused")
    with pytest.raises(ValueError, match="needs both"):
        p.features(scenes[0], kind="multimodal")
    with pytest.raises(ValueError, match="num_captions"):
        p.caption(scenes[0], num_captions=0)
    with pytest.raises(TypeError, match="num_return_sequences"):
        p.caption(scenes[0], num_return_sequences=2)
    with pytest.raises(ValueError, match="max_length"):
        p.caption(scenes[0], max_length=0)  # generate's own check, by name
    with pytest.raises(TypeError, match="num_beams"):
        p.answer(scenes[0], "q", answers=["a"], num_beams=2)
    with pytest.raises(ValueError, match="batch_size"):
        p.features(scenes[0], batch_size=0)


def test_lazy_exports():
    import blipx.api

    assert blipx.load is blipx.api.load and blipx.Pipeline is blipx.api.Pipeline
    assert "load" in blipx.__all__
