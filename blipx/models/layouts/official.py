"""Salesforce ALBEF / BLIP ``.pth`` layouts -> blipx (the load-time rewrites of salesforce/ALBEF and
salesforce/BLIP ``load_checkpoint``).

blipx keeps the official module names, so the conversion is small: drop the persistent
``position_ids`` buffers, pull out the queues (training state, not model weights), and map
between ``text_encoder.bert.*`` (ALBEF pretrain, a BertForMaskedLM) and ``text_encoder.*``
(ALBEF retrieval, BLIP: a bare BertModel), as the official loaders do.
"""

from __future__ import annotations

import math
import re

import torch

from blipx.layers.configs import TextConfig, VisionConfig
from blipx.models.config import ModelConfig

# Training buffers of the official models; returned to the caller, never loaded as weights.
QUEUE_KEYS = re.compile(r"(image_queue|text_queue|idx_queue|queue_ptr|ptr_queue)")


def split_queues(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    weights = {k: v for k, v in sd.items() if not QUEUE_KEYS.fullmatch(k)}
    queues = {k: v for k, v in sd.items() if QUEUE_KEYS.fullmatch(k)}
    return weights, queues


def state_dict_from_official(sd: dict[str, torch.Tensor], text_encoder_has_bert: bool) -> dict[str, torch.Tensor]:
    """Rename official keys for a model whose ``text_encoder`` is a BertLMHead
    (``text_encoder_has_bert``: ALBEF pretraining) or a BertModel (everything else)."""
    out = {}
    for k, v in sd.items():
        if k.endswith("embeddings.position_ids"):
            continue
        m = re.match(r"^(text_encoder(?:_m)?)\.(.*)$", k)
        if m and not text_encoder_has_bert and m.group(2).startswith("bert."):
            k = f"{m.group(1)}.{m.group(2)[5:]}"
        elif m and text_encoder_has_bert and not m.group(2).startswith(("bert.", "cls.")):
            k = f"{m.group(1)}.bert.{m.group(2)}"
        out[k] = v
    return out


def _count(sd: dict[str, torch.Tensor], pattern: str) -> int:
    idx = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    return max(idx) + 1 if idx else 0


def _heads(width: int, what: str) -> int:
    """Head count of a released model (head size 64); a width that is not a multiple of 64 has
    no such count, and guessing one would build a different network."""
    if width < 64 or width % 64:
        raise ValueError(f"cannot infer the {what} head count from width {width} (released models use a head size "
                         "of 64); pass config= (a name from blipx.models.list_models() or a ModelConfig)")
    return width // 64


def infer_config(sd: dict[str, torch.Tensor]) -> ModelConfig:
    """Architecture from tensor shapes (head size 64, as in every released model)."""
    try:
        width = sd["visual_encoder.cls_token"].shape[-1]
        patch = sd["visual_encoder.patch_embed.proj.weight"].shape[-1]
        grid = math.isqrt(sd["visual_encoder.pos_embed"].shape[1] - 1)
        vision = VisionConfig(
            image_size=grid * patch, patch_size=patch, width=width,
            depth=_count(sd, r"^visual_encoder\.blocks\.(\d+)\."), heads=_heads(width, 'vision'),
            mlp_dim=sd["visual_encoder.blocks.0.mlp.fc1.weight"].shape[0], layer_norm_eps=1e-6,
        )
        prefix = next(
            p for p in ("text_encoder.bert.", "text_encoder.", "text_decoder.bert.")
            if f"{p}embeddings.word_embeddings.weight" in sd
        )
        emb = sd[f"{prefix}embeddings.word_embeddings.weight"]
        layer_re = "^" + re.escape(prefix) + r"encoder\.layer\.(\d+)\."
        n_layers = _count(sd, layer_re)
        cross = sorted(
            int(m.group(1)) for k in sd if (m := re.match(layer_re + r"crossattention\.self\.key\.weight", k))
        )
        tt = sd.get(f"{prefix}embeddings.token_type_embeddings.weight")
        text = TextConfig(
            vocab_size=emb.shape[0], hidden_size=emb.shape[1], num_layers=n_layers, num_heads=_heads(emb.shape[1], 'text'),
            intermediate_size=sd[f"{prefix}encoder.layer.0.intermediate.dense.weight"].shape[0],
            max_position_embeddings=sd[f"{prefix}embeddings.position_embeddings.weight"].shape[0],
            type_vocab_size=0 if tt is None else tt.shape[0], hidden_dropout=0.1, attention_dropout=0.1,
            encoder_width=sd[f"{prefix}encoder.layer.{cross[0]}.crossattention.self.key.weight"].shape[1]
            if cross else width,
            fusion_layer=cross[0] if cross else n_layers,
        )
    except (KeyError, StopIteration) as e:
        raise ValueError(f"cannot infer an ALBEF/BLIP architecture from this checkpoint (no {e}); pass config=") from e
    family = "albef" if text.type_vocab_size > 0 else "blip"
    embed_dim = sd["vision_proj.weight"].shape[0] if "vision_proj.weight" in sd else 256
    return ModelConfig(family=family, vision=vision, text=text, embed_dim=embed_dim)
