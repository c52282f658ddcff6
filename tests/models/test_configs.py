"""Shipped configs, ``create_model`` and its overrides."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from blipx.models import (
    AlbefPretrainer,
    AlbefRetriever,
    BlipCaptioner,
    BlipPretrainer,
    BlipRetriever,
    create_model,
    get_config,
    list_models,
)


def test_shipped_configs_are_listed_and_valid():
    names = list_models()
    assert {"albef_base", "blip_base", "blip_large", "blip_tiny", "albef_tiny"} <= set(names)
    for n in names:
        raw = json.loads((resources.files("blipx.models") / "configs" / f"{n}.json").read_text())
        assert get_config(n).to_dict()["vision"]["width"] == raw["vision"]["width"]


@pytest.mark.parametrize(
    "name,task,cls",
    [
        ("blip_tiny", "captioner", BlipCaptioner),
        ("blip_tiny", "retriever", BlipRetriever),
        ("blip_tiny", "pretrain", BlipPretrainer),
        ("albef_tiny", "pretrain", AlbefPretrainer),
        ("albef_tiny", "retriever", AlbefRetriever),
    ],
)
def test_create_model_tiny_is_small(name, task, cls):
    m = create_model(name, task)
    assert type(m) is cls
    n = sum(p.numel() for p in m.parameters())
    assert 1e5 < n < 1e6


def test_base_architectures_match_the_papers():
    b, l, a = get_config("blip_base"), get_config("blip_large"), get_config("albef_base")
    assert (b.vision.width, b.vision.depth, b.text.num_layers, b.text.fusion_layer) == (768, 12, 12, 0)
    assert (l.vision.width, l.vision.depth, l.vision.heads, l.text.encoder_width) == (1024, 24, 16, 1024)
    assert (a.text.fusion_layer, a.text.type_vocab_size, a.text.vocab_size, a.vision.image_size) == (6, 2, 30522, 256)
    assert b.vision.layer_norm_eps == 1e-6 and b.text.vocab_size == 30524


def test_overrides():
    cfg = get_config("blip_base", image_size=384, vision_layer_norm_eps=1e-5, text_num_layers=6, momentum=True)
    assert (cfg.vision.image_size, cfg.vision.layer_norm_eps, cfg.text.num_layers, cfg.momentum) == (384, 1e-5, 6, True)
    assert cfg.text.layer_norm_eps == 1e-12
    with pytest.raises(ValueError, match="ambiguous"):
        get_config("blip_base", layer_norm_eps=1e-5)
    with pytest.raises(ValueError, match="unknown config override"):
        get_config("blip_base", widht=3)
    with pytest.raises(ValueError, match="unknown model"):
        create_model("blip_huge")
    with pytest.raises(ValueError, match="no task"):
        create_model("albef_tiny", "captioner")


def test_retriever_momentum_copies_are_optional_and_frozen():
    m = create_model("blip_tiny", "retriever", momentum=True)
    assert all(not p.requires_grad for p in m.visual_encoder_m.parameters())
    assert not hasattr(create_model("blip_tiny", "retriever"), "visual_encoder_m")


def test_initializer_range_sets_the_fresh_init():
    """``initializer_range`` (HF's name) is the std of fresh Linear/Embedding weights: 0.02 by
    default, 0.1 for blip_mini (narrow, trained from scratch by the demo); the ViT position
    embedding takes the vision config's ``pos_embed_init_std`` where set (blip_mini: 0.5)."""
    import torch

    from blipx.models import create_model, get_config

    assert get_config("blip_tiny").initializer_range == 0.02
    assert get_config("blip_tiny").vision.pos_embed_init_std is None
    for name, std, pos_std in (("blip_tiny", 0.02, 0.02), ("blip_mini", 0.1, 0.5)):
        model = create_model(name, "captioner")
        w = model.text_decoder.bert.embeddings.word_embeddings.weight
        # Tied to the LM head's Linear, so truncated at 2 std as well: ~0.88 of the nominal std.
        assert 0.8 * std < float(w.std()) < std, (name, float(w.std()))
        vit = model.visual_encoder  # truncated at 2 std: ~0.88 of the nominal std
        w = vit.blocks[0].attn.qkv.weight
        assert 0.8 * std < float(w.std()) < std, (name, float(w.std()))
        assert 0.75 * pos_std < float(vit.pos_embed.std()) < pos_std, (name, float(vit.pos_embed.std()))
    # A momentum copy starts equal to its online module after the re-init.
    m = create_model("blip_mini", "pretrain")
    assert torch.equal(m.text_proj.weight, m.text_proj_m.weight)
