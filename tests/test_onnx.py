"""ONNX export (``blipx export onnx``): onnxruntime runs the three graphs at several batch sizes
and text lengths (the dynamic axes are really dynamic) and matches PyTorch within 1e-4 (fp32)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

# torch.onnx's exporter needs onnx + onnxscript; onnxruntime runs the graphs.
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from blipx import ops  # noqa: E402
from blipx.cli import main  # noqa: E402
from blipx.export.onnx import export_onnx  # noqa: E402
from blipx.models import create_model, from_pretrained, with_first_token  # noqa: E402

ATOL = 1e-4
SHAPES = [(1, 5), (1, 11), (3, 5), (3, 11)]  # (batch, text length): neither is the traced (2, 3)


def _perturbed(name: str, seed: int = 0):
    """N(0, 0.2) weights, LayerNorm weights around 1: outputs far from their init's near-constants."""
    torch.manual_seed(seed)
    m = create_model(name, "retriever")
    ln = {id(mod.weight) for mod in m.modules() if isinstance(mod, nn.LayerNorm)}
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if id(p) in ln else 0.0))
    return m.eval()


def _inputs(model, b: int, t: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    s, tc = model.config.vision.image_size, model.config.text
    px = torch.randn(b, 3, s, s, generator=g)
    ids = torch.randint(1000, 3000, (b, t), generator=g)
    ids[:, 0] = tc.cls_token_id
    mask = torch.ones_like(ids)
    mask[-1, t - 2:] = 0  # right padding in the last row (all rows when b = 1)
    ids[-1, t - 2:] = tc.pad_token_id
    return px, ids, mask


def _reference(model, px, ids, mask):
    """PyTorch outputs through the model's own methods (kernels as configured, not forced off)."""
    with torch.no_grad():
        embeds = model.visual_encoder(px)
        text = model.encode_text(ids, mask)
        if model.family == "albef":
            itm = model.itm_logits(embeds, text, mask)
        else:  # [ENC] first, as the official retrieval code scores ITM
            itm = model.itm_logits(embeds, with_first_token(ids, model.config.text.enc_token_id), mask)
        return dict(image_feat=model.image_features(embeds), image_embeds=embeds,
                    text_feat=model.text_features(text), itm_logits=itm, itm_prob=itm.softmax(-1)[:, 1])


def _run(out, model, shapes):
    sessions = {f: ort.InferenceSession(str(out / f), providers=["CPUExecutionProvider"])
                for f in ("image_encoder.onnx", "text_encoder.onnx", "itm.onnx")}
    worst = 0.0
    for i, (b, t) in enumerate(shapes):
        px, ids, mask = _inputs(model, b, t, seed=i)
        ref = _reference(model, px, ids, mask)
        feat, embeds = sessions["image_encoder.onnx"].run(None, {"pixel_values": px.numpy()})
        text = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        (text_feat,) = sessions["text_encoder.onnx"].run(None, text)
        itm, prob = sessions["itm.onnx"].run(None, {"image_embeds": ref["image_embeds"].numpy(), **text})
        got = dict(image_feat=feat, image_embeds=embeds, text_feat=text_feat, itm_logits=itm, itm_prob=prob)
        for k, v in got.items():
            assert v.shape == tuple(ref[k].shape), (k, b, t)
            diff = float((torch.from_numpy(v) - ref[k]).abs().max())
            assert diff <= ATOL, (k, b, t, diff)
            worst = max(worst, diff)
        if b > 1:  # the comparison can fail: outputs differ between rows
            assert ref["itm_logits"].std(0).min() > 2e-3 and ref["text_feat"].std(0).max() > 2e-3
    return worst


@pytest.fixture(scope="module")
def blip_export(tmp_path_factory):
    """A tiny BLIP retriever saved as a blipx folder and exported through the CLI."""
    d = tmp_path_factory.mktemp("blip_model")
    _perturbed("blip_tiny").save_pretrained(d)
    out = tmp_path_factory.mktemp("blip_onnx")
    kernels = ops.use_kernels()
    assert main(["export", "onnx", "--model", str(d), "--out", str(out)]) == 0
    assert ops.use_kernels() == kernels  # the export's switch to the references is undone
    return from_pretrained(d, task="retriever"), out


def test_blip_onnx_matches_pytorch_at_dynamic_shapes(blip_export):
    model, out = blip_export
    worst = _run(out, model, SHAPES)
    print(f"blip_tiny onnxruntime vs PyTorch: max abs diff {worst:.2e}")


def test_onnx_graphs_name_their_dynamic_axes(blip_export):
    model, out = blip_export
    s = model.config.vision.image_size

    def dims(values):
        return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}

    img = onnx.load(str(out / "image_encoder.onnx")).graph
    assert dims(img.input) == {"pixel_values": ["batch", 3, s, s]}
    assert dims(img.output)["image_feat"] == ["batch", model.config.embed_dim]
    txt = onnx.load(str(out / "text_encoder.onnx")).graph
    assert dims(txt.input) == {"input_ids": ["batch", "text_length"], "attention_mask": ["batch", "text_length"]}
    itm = onnx.load(str(out / "itm.onnx"))
    assert dims(itm.graph.output) == {"itm_logits": ["batch", 2], "itm_prob": ["batch"]}
    assert {o.version for o in itm.opset_import if o.domain in ("", "ai.onnx")} == {18}
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["opset"] == 18 and set(manifest["files"]) == {"image_encoder.onnx", "text_encoder.onnx", "itm.onnx"}
    assert manifest["dynamic_axes"]["text_length"] == f"1 .. {model.config.text.max_position_embeddings}"
    # An export already there is not replaced without --overwrite.
    assert main(["export", "onnx", "--model", "unused", "--out", str(out)]) == 2


def test_onnx_export_refuses_what_it_cannot_write(tmp_path):
    with pytest.raises(ValueError, match="no ITC/ITM heads"):
        export_onnx(create_model("blip_tiny", "captioner"), tmp_path)
    with pytest.raises(ValueError, match="opset must be an integer >= 18"):
        export_onnx(create_model("blip_tiny", "retriever"), tmp_path, opset=17)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_albef_onnx_matches_pytorch_at_dynamic_shapes(tmp_path):
    """ALBEF's ITM graph is different (text-only layers, then fusion layers on their states)."""
    model = _perturbed("albef_tiny", seed=1)
    export_onnx(model, tmp_path)
    worst = _run(tmp_path, model, SHAPES)
    print(f"albef_tiny onnxruntime vs PyTorch: max abs diff {worst:.2e}")
