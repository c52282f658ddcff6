"""ONNX export of a retrieval model's three graphs (``blipx export onnx``).

Any model with ITC projections exports (BLIP or ALBEF; retrieval or pretraining weights, which
the CLI loads as the family's retriever). Three files, each with a ``batch`` axis and, for text
inputs, a ``text_length`` axis; the image size is fixed by the model's position embedding:

- ``image_encoder.onnx``: ``pixel_values`` float [batch, 3, S, S] (CLIP-normalised, as
  :func:`blipx.data.image_processor` makes them) -> ``image_feat`` [batch, E] (L2-normalised ITC
  feature) and, unless ``image_embeds=False``, ``image_embeds`` [batch, 1 + N, Dv] (the ViT
  states the ITM graph reads);
- ``text_encoder.onnx``: ``input_ids`` int64 [batch, text_length], ``attention_mask`` int64
  [batch, text_length] (1 = token) -> ``text_feat`` [batch, E] (L2-normalised ITC feature);
- ``itm.onnx``: ``image_embeds`` [batch, 1 + N, Dv], ``input_ids``, ``attention_mask`` ->
  ``itm_logits`` [batch, 2] and ``itm_prob`` [batch] (softmax column 1, "match"), row i of the
  texts against row i of the images. BLIP's graph writes [ENC] over the first id itself, as the
  official retrieval code and blipx's evaluation do, so all three take the family tokenizer's
  output as it is (:func:`blipx.tokenizer.tokenizer_for`: BLIP ``[CLS] ... [SEP]``, ALBEF
  ``[CLS] ...``). text_length runs from 1 to ``max_position_embeddings``.

ITC similarity is ``image_feat @ text_feat.T`` (no temperature), as ``forward(use_itm_head=False)``.
The graphs are traced with the compiled ops switched off (:func:`blipx.ops.set_use_kernels`),
so the fused cross-attention is exported as its pure-PyTorch reference (ONNX has no form for a
custom op); the switch is restored afterwards. ``export.json`` beside the files records the
inputs, outputs, axes and opset. Needs ``onnx`` and ``onnxscript`` (torch's exporter).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blipx import ops
from blipx.export import DEFAULT_OPSET, MIN_OPSET
from blipx.models.blip import with_first_token
from blipx.weights.io import atomic_write, write_json

IMAGE_ENCODER, TEXT_ENCODER, ITM = "image_encoder.onnx", "text_encoder.onnx", "itm.onnx"
MANIFEST = "export.json"
BATCH, TEXT_LENGTH = "batch", "text_length"


class ImageEncoderGraph(nn.Module):
    """pixel_values -> image_feat (normalised ITC feature) [, image_embeds]."""

    def __init__(self, model: nn.Module, image_embeds: bool = True) -> None:
        super().__init__()
        self.model, self.with_embeds = model, image_embeds

    def forward(self, pixel_values: torch.Tensor):
        embeds = self.model.visual_encoder(pixel_values)
        feat = self.model.image_features(embeds)
        return (feat, embeds) if self.with_embeds else feat


class TextEncoderGraph(nn.Module):
    """input_ids, attention_mask -> text_feat (normalised ITC feature of the unimodal encoder)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.text_features(self.model.encode_text(input_ids, attention_mask))


class ItmGraph(nn.Module):
    """image_embeds, input_ids, attention_mask -> (itm_logits [B, 2], itm_prob [B])."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        m = self.model
        if m.family == "albef":  # the fusion layers continue from the text-only states
            logits = m.itm_logits(image_embeds, m.encode_text(input_ids, attention_mask), attention_mask)
        else:  # BLIP's image-grounded encoder reads [ENC] first (salesforce/BLIP models/blip_retrieval.py)
            logits = m.itm_logits(image_embeds, with_first_token(input_ids, m.config.text.enc_token_id), attention_mask)
        return logits, logits.float().softmax(dim=-1)[:, 1]


def _check_model(model: nn.Module) -> None:
    needed = ("visual_encoder", "image_features", "text_features", "encode_text", "itm_logits")
    missing = [n for n in needed if not hasattr(model, n)]
    if missing:
        raise ValueError(f"{type(model).__name__} has no ITC/ITM heads ({', '.join(missing)} missing): ONNX export "
                         "takes a retrieval model (load the checkpoint with task='retriever')")


def _example_inputs(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trace inputs: batch 2 and text length 3 (sizes 0 and 1 would be specialised by torch.export)."""
    p = next(model.parameters())
    s, t = model.config.vision.image_size, min(3, model.config.text.max_position_embeddings)
    ids = torch.full((2, t), model.config.text.cls_token_id, dtype=torch.long, device=p.device)
    with torch.no_grad():
        pixels = torch.zeros(2, 3, s, s, dtype=p.dtype, device=p.device)
        embeds = model.visual_encoder(pixels)
    return dict(pixel_values=pixels, image_embeds=embeds, input_ids=ids, attention_mask=torch.ones_like(ids))


def _export(module: nn.Module, args: tuple, names: list[str], outputs: list[str], axes: dict[str, dict[int, Any]],
            path: Path, opset: int) -> None:
    dynamic = tuple(axes.get(n, {}) for n in names)
    with warnings.catch_warnings():
        # One Dim shared by several inputs is reported once per extra use; the names do survive.
        warnings.filterwarnings("ignore", message=".*will not be used, since it shares the same shape constraints")
        program = torch.onnx.export(module.eval(), args, dynamo=True, input_names=names, output_names=outputs,
                                    dynamic_shapes=dynamic, opset_version=opset, verbose=False)
    got = next((o.version for o in program.model_proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        raise RuntimeError(f"torch.onnx wrote opset {got} for {path.name}, not the requested {opset}")
    atomic_write(path, lambda tmp: program.save(tmp, external_data=False))


def export_onnx(model: nn.Module, out_dir: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                image_embeds: bool = True) -> dict[str, Any]:
    """Write ``image_encoder.onnx``, ``text_encoder.onnx`` and ``itm.onnx`` (see the module doc)
    plus ``export.json``, and return that manifest. The model is exported as it is (device,
    dtype); ``image_embeds=False`` drops that output of the image graph, and with it the ITM
    graph, which reads it. An ITC-only model (``config.itm_head=False``) writes no ITM graph."""
    _check_model(model)
    if int(opset) != opset or opset < MIN_OPSET:
        raise ValueError(f"opset must be an integer >= {MIN_OPSET} (torch.onnx emits no older opset), got {opset!r}")
    cfg = model.config
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    max_len = cfg.text.max_position_embeddings
    batch = torch.export.Dim(BATCH, min=1)
    length = torch.export.Dim(TEXT_LENGTH, min=1, max=max_len)
    text_axes = {0: batch, 1: length}
    x = _example_inputs(model)
    s, n_tok = cfg.vision.image_size, x["image_embeds"].shape[1]
    dv = x["image_embeds"].shape[2]
    fl = str(x["pixel_values"].dtype).removeprefix("torch.")
    files: dict[str, Any] = {}
    image_outputs = {"image_feat": [BATCH, cfg.embed_dim]}
    if image_embeds:
        image_outputs["image_embeds"] = [BATCH, n_tok, dv]
    text_inputs = {"input_ids": ["int64", BATCH, TEXT_LENGTH], "attention_mask": ["int64", BATCH, TEXT_LENGTH]}
    notes = []
    was_training, kernels = model.training, ops.use_kernels()
    model.eval()
    ops.set_use_kernels(False)  # the fused ops have no ONNX form: trace their references
    try:
        with torch.no_grad():
            _export(ImageEncoderGraph(model, image_embeds), (x["pixel_values"],), ["pixel_values"],
                    list(image_outputs), {"pixel_values": {0: batch}}, out / IMAGE_ENCODER, opset)
            files[IMAGE_ENCODER] = {"inputs": {"pixel_values": [fl, BATCH, 3, s, s]}, "outputs": image_outputs}
            _export(TextEncoderGraph(model), (x["input_ids"], x["attention_mask"]), ["input_ids", "attention_mask"],
                    ["text_feat"], {"input_ids": text_axes, "attention_mask": text_axes}, out / TEXT_ENCODER, opset)
            files[TEXT_ENCODER] = {"inputs": text_inputs, "outputs": {"text_feat": [BATCH, cfg.embed_dim]}}
            if not image_embeds:
                notes.append("itm.onnx not written: image_embeds=False drops the image states it reads")
            elif not cfg.itm_head:
                notes.append("itm.onnx not written: the model has no ITM head (ITC only)")
            else:
                names = ["image_embeds", "input_ids", "attention_mask"]
                _export(ItmGraph(model), tuple(x[n] for n in names), names, ["itm_logits", "itm_prob"],
                        {"image_embeds": {0: batch}, "input_ids": text_axes, "attention_mask": text_axes},
                        out / ITM, opset)
                files[ITM] = {"inputs": {"image_embeds": [fl, BATCH, n_tok, dv], **text_inputs},
                              "outputs": {"itm_logits": [BATCH, 2], "itm_prob": [BATCH]}}
    finally:
        ops.set_use_kernels(kernels)
        model.train(was_training)
    manifest = {
        "format": "blipx-onnx", "family": cfg.family, "architecture": type(model).__name__, "opset": opset,
        "image_size": s, "max_text_length": max_len, "embed_dim": cfg.embed_dim,
        "tokenizer": "BLIP: bert-base-uncased + [DEC] + [ENC], '[CLS] ... [SEP]'" if cfg.family == "blip"
        else "ALBEF: bert-base-uncased, '[CLS] ...' (no [SEP])",
        "dynamic_axes": {BATCH: ">= 1", TEXT_LENGTH: f"1 .. {max_len}"},
        "itc_similarity": "image_feat @ text_feat.T",
        "files": files, "notes": notes,
    }
    write_json(out / MANIFEST, manifest)
    return manifest
