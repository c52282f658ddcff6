"""Hugging Face ``transformers`` BLIP folders <-> blipx (config fields and key names), both ways.

HF BLIP = the Salesforce network with renamed vision keys (transformers'
``convert_blip_original_pytorch_to_hf.py``); text keys are the MED names blipx uses, except in
``BlipModel``, which names its text tower ``text_model`` (with a tanh pooler) and its bias-free
projections ``visual_projection`` / ``text_projection``, and stores ``logit_scale`` where blipx
keeps the temperature. HF ``save_pretrained`` drops the tied ``cls.predictions.decoder.*``; the
loader re-ties them through blipx's alias groups, and the exporter (which writes each tied tensor
once, under its first name) writes exactly the names HF writes.

Reading needs no transformers import; writing the tokenizer / processor files of an export does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import torch

from blipx.layers.configs import TextConfig, VisionConfig
from blipx.models.config import ModelConfig

# HF class defaults (transformers 5.x), used when a config.json omits a field.
_HF_TEXT = dict(
    vocab_size=30524, hidden_size=768, encoder_hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=8, max_position_embeddings=512, hidden_act="gelu", layer_norm_eps=1e-12,
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, bos_token_id=30522, pad_token_id=0, sep_token_id=102,
)
_HF_VISION = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=384,
    patch_size=16, hidden_act="gelu", layer_norm_eps=1e-5,
)

# HF architecture -> the blipx class that loads it (and, inverted, the HF class a blipx head is
# written as). ``BlipModel`` is ITC only: it loads as a BlipRetriever without an ITM head.
HF_ARCHITECTURES = {
    "BlipForConditionalGeneration": "BlipCaptioner",
    "BlipForImageTextRetrieval": "BlipRetriever",
    "BlipForQuestionAnswering": "BlipVqa",
    "BlipModel": "BlipRetriever",
}
BLIP_MODEL = "BlipModel"


def is_hf_config(cfg: dict[str, Any]) -> bool:
    return "vision_config" in cfg or cfg.get("model_type") == "blip"


def config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
    t = {**_HF_TEXT, **cfg.get("text_config", {})}
    v = {**_HF_VISION, **cfg.get("vision_config", {})}
    for what, act in (("text", t["hidden_act"]), ("vision", v["hidden_act"])):
        if act != "gelu":
            raise ValueError(f"HF BLIP {what} hidden_act {act!r} is not supported (blipx uses exact gelu)")
    vision = VisionConfig(
        image_size=v["image_size"], patch_size=v["patch_size"], width=v["hidden_size"],
        depth=v["num_hidden_layers"], heads=v["num_attention_heads"], mlp_dim=v["intermediate_size"],
        layer_norm_eps=v["layer_norm_eps"],
    )
    text = TextConfig(
        vocab_size=t["vocab_size"], hidden_size=t["hidden_size"], num_layers=t["num_hidden_layers"],
        num_heads=t["num_attention_heads"], intermediate_size=t["intermediate_size"],
        max_position_embeddings=t["max_position_embeddings"], type_vocab_size=0,
        layer_norm_eps=t["layer_norm_eps"], hidden_dropout=t["hidden_dropout_prob"],
        attention_dropout=t["attention_probs_dropout_prob"],
        # BlipConfig forces encoder_hidden_size = vision width.
        encoder_width=v["hidden_size"], fusion_layer=0, pad_token_id=t["pad_token_id"],
        sep_token_id=t["sep_token_id"], bos_token_id=t["bos_token_id"],
    )
    if (cfg.get("architectures") or [None])[0] == BLIP_MODEL:
        # BlipModel projects to projection_dim (not image_text_hidden_size) and has no ITM head.
        return ModelConfig(family="blip", vision=vision, text=text, embed_dim=cfg.get("projection_dim", 512),
                           itm_head=False, itc_pooling="hf_blip_model")
    return ModelConfig(family="blip", vision=vision, text=text, embed_dim=cfg.get("image_text_hidden_size", 256))


# --- key names: one table per architecture of (HF prefix, blipx prefix); "{i}" is a layer index.
# Both directions are compiled from it (first matching rule wins, so longer prefixes come first).
_VISION_NAMES = [
    ("vision_model.embeddings.class_embedding", "visual_encoder.cls_token"),
    ("vision_model.embeddings.position_embedding", "visual_encoder.pos_embed"),
    ("vision_model.embeddings.patch_embedding.", "visual_encoder.patch_embed.proj."),
    ("vision_model.post_layernorm.", "visual_encoder.norm."),
    ("vision_model.encoder.layers.{i}.self_attn.projection.", "visual_encoder.blocks.{i}.attn.proj."),
    ("vision_model.encoder.layers.{i}.self_attn.qkv.", "visual_encoder.blocks.{i}.attn.qkv."),
    ("vision_model.encoder.layers.{i}.layer_norm1.", "visual_encoder.blocks.{i}.norm1."),
    ("vision_model.encoder.layers.{i}.layer_norm2.", "visual_encoder.blocks.{i}.norm2."),
    ("vision_model.encoder.layers.{i}.mlp.", "visual_encoder.blocks.{i}.mlp."),
]
# transformers models/blip/modeling_blip.py BlipModel: text_model (BlipTextModel with pooler),
# visual_projection / text_projection (bias=False).
_BLIP_MODEL_NAMES = [
    ("text_model.pooler.", "text_pooler."),
    ("text_model.", "text_encoder."),
    ("visual_projection.", "vision_proj."),
    ("text_projection.", "text_proj."),
]


@dataclass(frozen=True)
class _Value:
    """A tensor stored differently: ``hf`` name <-> ``blipx`` name, with the value converted."""

    hf: str
    blipx: str
    to_blipx: Callable[[torch.Tensor], torch.Tensor]
    to_hf: Callable[[torch.Tensor], torch.Tensor]


# BlipModel's logits are ``exp(logit_scale) * cos``; blipx divides by ``temp``: temp = exp(-logit_scale).
_VALUES = {BLIP_MODEL: [_Value("logit_scale", "temp", lambda t: torch.exp(-t), lambda t: -torch.log(t))]}


def _rules(pairs: list[tuple[str, str]]) -> list[tuple[re.Pattern, str]]:
    """(source prefix, target prefix) -> (compiled ^pattern, re.sub replacement)."""
    return [(re.compile("^" + re.escape(src).replace(r"\{i\}", r"(\d+)")), dst.replace("{i}", r"\1"))
            for src, dst in pairs]


def _names(architecture: str | None) -> list[tuple[str, str]]:
    return _VISION_NAMES + (_BLIP_MODEL_NAMES if architecture == BLIP_MODEL else [])


_TO_BLIPX = {a: _rules(_names(a)) for a in (None, *HF_ARCHITECTURES)}
_TO_HF = {a: _rules([(b, h) for h, b in _names(a)]) for a in (None, *HF_ARCHITECTURES)}


def _rename(key: str, rules: list[tuple[re.Pattern, str]]) -> str:
    for pat, rep in rules:
        new, n = pat.subn(rep, key)
        if n:
            return new
    return key


def hf_key_to_blipx(key: str, architecture: str | None = None) -> str:
    """An HF state-dict name -> blipx's (``architecture`` None: the three task heads' layout)."""
    return _rename(key, _TO_BLIPX.get(architecture, _TO_BLIPX[None]))


def blipx_key_to_hf(key: str, architecture: str | None = None) -> str:
    """Inverse of :func:`hf_key_to_blipx` (export uses it; the tests check the round trip)."""
    return _rename(key, _TO_HF.get(architecture, _TO_HF[None]))


def state_dict_from_hf(sd: dict[str, torch.Tensor], architecture: str | None = None) -> dict[str, torch.Tensor]:
    values = {v.hf: v for v in _VALUES.get(architecture or "", [])}
    out = {}
    for k, t in sd.items():
        if k.endswith("position_ids"):  # non-persistent in HF, but old files carry them; blipx computes them
            continue
        if k in values:
            out[values[k].blipx] = values[k].to_blipx(t)
        else:
            out[hf_key_to_blipx(k, architecture)] = t
    return out


def load_notes(architecture: str | None) -> list[str]:
    """What loading an HF folder of ``architecture`` means for the blipx model (``load_report.notes``)."""
    if architecture != BLIP_MODEL:
        return []
    return ["HF BlipModel is ITC only: this model has no ITM head (config.itm_head=False; itm_logits and "
            "forward(use_itm_head=True) raise)",
            "ITC features as BlipModel.get_image_features / get_text_features compute them "
            "(config.itc_pooling='hf_blip_model'); temp = exp(-logit_scale)"]


# --- export ---------------------------------------------------------------------------------------
# blipx keys HF has no place for: momentum copies (training state) and, except in BlipModel,
# the ITC temperature (BlipForImageTextRetrieval stores none).
_MOMENTUM = re.compile(r"\w+_m\.")


def export_architecture(class_name: str, config: ModelConfig) -> str:
    """The HF class a blipx model is written as, or ValueError saying what can be."""
    possible = ("format='hf' is possible for BlipCaptioner (-> BlipForConditionalGeneration), BlipRetriever "
                "(-> BlipForImageTextRetrieval, or BlipModel when ITC only) and BlipVqa (-> BlipForQuestionAnswering); "
                "format='blipx' saves every model")
    if config.family != "blip":
        raise ValueError(f"{class_name} cannot be saved in Hugging Face format: transformers has no ALBEF. {possible}")
    if class_name == "BlipPretrainer":
        raise ValueError(
            "a BlipPretrainer as a whole has no Hugging Face class: save it with format='blipx' and export each "
            "head (from_pretrained(path, task='captioner' | 'retriever' | 'vqa').save_pretrained(out, format='hf')). "
            + possible)
    if class_name == "BlipRetriever":
        if config.itc_pooling == "hf_blip_model":
            if config.itm_head:
                raise ValueError("a BlipRetriever with BlipModel ITC pooling and an ITM head fits no HF class "
                                 "(BlipModel has no ITM head)")
            return BLIP_MODEL
        if not config.itm_head:
            raise ValueError("a BlipRetriever without an ITM head cannot be written as BlipForImageTextRetrieval "
                             "(transformers would fill the head with random weights)")
        return "BlipForImageTextRetrieval"
    arch = {"BlipCaptioner": "BlipForConditionalGeneration", "BlipVqa": "BlipForQuestionAnswering"}.get(class_name)
    if arch is None:
        raise ValueError(f"{class_name} has no Hugging Face class. {possible}")
    return arch


def config_to_hf(config: ModelConfig, architecture: str) -> dict[str, Any]:
    """The ``config.json`` of an HF folder (inverse of :func:`config_from_hf`); ValueError when
    the architecture does not fit HF BLIP's fixed structure."""
    v, t = config.vision, config.text
    problems = []
    if t.type_vocab_size != 0:
        problems.append(f"text.type_vocab_size={t.type_vocab_size} (HF BLIP has no token types)")
    if t.fusion_layer != 0:
        problems.append(f"text.fusion_layer={t.fusion_layer} (HF BLIP cross-attends in every layer)")
    if t.encoder_width != v.width:
        problems.append(f"text.encoder_width={t.encoder_width} != vision.width={v.width} (BlipConfig ties them)")
    if architecture == "BlipForQuestionAnswering" and t.hidden_size != v.width:
        # HF's answer decoder is built from the same text config, so its cross-attention reads
        # vision-width states, while the question states it is given are text-width.
        problems.append(f"text.hidden_size={t.hidden_size} != vision.width={v.width} (HF BlipForQuestionAnswering's "
                        "answer decoder cross-attends with the vision width)")
    if problems:
        raise ValueError(f"this model does not fit HF {architecture}: " + "; ".join(problems))
    text_config = dict(
        model_type="blip_text_model", vocab_size=t.vocab_size, hidden_size=t.hidden_size,
        encoder_hidden_size=v.width, intermediate_size=t.intermediate_size, num_hidden_layers=t.num_layers,
        num_attention_heads=t.num_heads, max_position_embeddings=t.max_position_embeddings, hidden_act="gelu",
        layer_norm_eps=t.layer_norm_eps, hidden_dropout_prob=t.hidden_dropout,
        attention_probs_dropout_prob=t.attention_dropout, initializer_range=config.initializer_range,
        bos_token_id=t.bos_token_id, pad_token_id=t.pad_token_id, sep_token_id=t.sep_token_id,
        is_decoder=True, use_cache=True, tie_word_embeddings=True,
    )
    vision_config = dict(
        model_type="blip_vision_model", hidden_size=v.width, intermediate_size=v.mlp_dim,
        num_hidden_layers=v.depth, num_attention_heads=v.heads, image_size=v.image_size, patch_size=v.patch_size,
        hidden_act="gelu", layer_norm_eps=v.layer_norm_eps, attention_dropout=0.0,
        initializer_range=config.initializer_range,
    )
    out: dict[str, Any] = dict(
        architectures=[architecture], model_type="blip", text_config=text_config, vision_config=vision_config,
        image_text_hidden_size=config.embed_dim, initializer_range=config.initializer_range,
        tie_word_embeddings=True,
    )
    if architecture == BLIP_MODEL:
        out["projection_dim"] = config.embed_dim
    return out


def state_dict_to_hf(sd: dict[str, torch.Tensor], architecture: str) -> dict[str, torch.Tensor]:
    """blipx tensors (each tied tensor once) -> HF names; what HF has no place for is left out."""
    values = {v.blipx: v for v in _VALUES.get(architecture, [])}
    out = {}
    for k, t in sd.items():
        if _MOMENTUM.match(k):
            continue
        if k in values:
            out[values[k].hf] = values[k].to_hf(t.detach())
        elif k == "temp":
            continue
        else:
            out[blipx_key_to_hf(k, architecture)] = t
    return out


def processor_files(config: ModelConfig) -> dict[str, bytes]:
    """The tokenizer and processor files transformers' ``BlipProcessor.from_pretrained`` reads
    (file name -> contents), written by transformers itself: blipx's BLIP tokenizer (the shipped
    bert-base-uncased vocab + [DEC] as bos + [ENC]) and a ``BlipImageProcessor`` that does what
    :func:`blipx.data.image_processor` does (bicubic resize to the model's size, CLIP mean/std).

    Raises ImportError without transformers, ValueError when the model's vocabulary is not
    BLIP's (the tokenizer would not fit it)."""
    import tempfile
    from pathlib import Path

    from blipx.tokenizer import BERT_VOCAB_SIZE, blip_tokenizer, vocab_path

    if config.text.vocab_size != BERT_VOCAB_SIZE + 2:
        raise ValueError(f"text.vocab_size is {config.text.vocab_size}, not BLIP's {BERT_VOCAB_SIZE + 2} "
                         "(bert-base-uncased + [DEC] + [ENC]): no tokenizer fits it")
    from transformers import BlipImageProcessor, BlipProcessor

    from blipx.data.processing import CLIP_MEAN, CLIP_STD

    tok = blip_tokenizer()
    tok.model_max_length = config.text.max_position_embeddings
    size = config.vision.image_size
    images = BlipImageProcessor(size={"height": size, "width": size}, resample=3, image_mean=list(CLIP_MEAN),
                                image_std=list(CLIP_STD), do_convert_rgb=True)
    with tempfile.TemporaryDirectory(prefix="blipx-hf-processor-") as tmp:
        BlipProcessor(image_processor=images, tokenizer=tok).save_pretrained(tmp)
        images.save_pretrained(tmp)  # preprocessor_config.json too, as Hub folders have it
        files = {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}
    # The plain WordPiece vocab as well, as Hub BLIP folders ship it (for readers of vocab.txt;
    # transformers reads tokenizer.json, which also holds [DEC] and [ENC]).
    files.setdefault("vocab.txt", vocab_path().read_bytes())
    return files
