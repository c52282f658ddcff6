"""Model configs: architecture-only JSON files in ``blipx/models/configs`` and ``create_model``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from typing import Any

from blipx.layers.configs import TextConfig, VisionConfig



@dataclass
class ModelConfig:
    """``family`` is "blip" or "albef"; ``embed_dim`` is the ITC projection width (256).

    ``momentum``: build the ``*_m`` momentum copies in retrieval models too (pretraining models
    always have them); needed to fine-tune with distillation or to keep them from a checkpoint.
    ``initializer_range``: std of the N(0, std) init of fresh weights (HF's name; 0.02 as BERT
    and ViT). Narrow models trained from scratch need more: at width 96, 0.02 leaves attention
    uniform and the ViT [CLS] feature nearly image-independent, and ITC first collapses every
    feature to one point (measured: blip_mini escapes after ~100 steps at 0.02, ~20 at 0.1).
    ``itm_head``: False for a retriever without an ITM head (HF ``BlipModel`` folders are ITC
    only); every ITM call then raises instead of scoring with an untrained head.
    ``itc_pooling``: what the ITC projections read. "cls": the [CLS] states (official ALBEF/BLIP,
    HF ``BlipForImageTextRetrieval``); "hf_blip_model": HF ``BlipModel``'s ``get_image_features`` /
    ``get_text_features`` (the ViT [CLS] through ``post_layernorm`` once more, the text [CLS]
    through a tanh pooler, bias-free projections).
    """

    family: str = "blip"
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 256
    momentum: bool = False
    initializer_range: float = 0.02
    itm_head: bool = True
    itc_pooling: str = "cls"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        _check_keys(d, cls, "model config")
        vision = d.pop("vision", {})
        text = d.pop("text", {})
        _check_keys(vision, VisionConfig, "vision config")
        _check_keys(text, TextConfig, "text config")
        return cls(vision=VisionConfig(**vision), text=TextConfig(**text), **d)

    def with_overrides(self, **overrides: Any) -> ModelConfig:
        """Flat overrides: a top-level field, a field of exactly one tower (``image_size=384``),
        or a ``vision_``/``text_`` prefixed field (``vision_layer_norm_eps=1e-5``)."""
        top, vis, txt = {}, {}, {}
        vnames = {f.name for f in fields(VisionConfig)}
        tnames = {f.name for f in fields(TextConfig)}
        tops = {f.name for f in fields(ModelConfig)} - {"vision", "text"}
        for k, v in overrides.items():
            if k in tops:
                top[k] = v
            elif k.startswith("vision_") and k[7:] in vnames:
                vis[k[7:]] = v
            elif k.startswith("text_") and k[5:] in tnames:
                txt[k[5:]] = v
            elif k in vnames and k in tnames:
                raise ValueError(f"override {k!r} is ambiguous; use vision_{k} or text_{k}")
            elif k in vnames:
                vis[k] = v
            elif k in tnames:
                txt[k] = v
            else:
                raise ValueError(f"unknown config override {k!r}")
        return replace(self, vision=replace(self.vision, **vis), text=replace(self.text, **txt), **top)


def _check_keys(d: dict[str, Any], cls: type, what: str) -> None:
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown keys in {what}: {sorted(unknown)}")


def _config_dir():
    # A data folder, not a package: resources.files on the parent works for wheels and zips.
    return resources.files("blipx.models") / "configs"


def list_models() -> list[str]:
    """Names of the configs shipped with blipx (``create_model`` accepts them)."""
    files = _config_dir().iterdir()
    return sorted(f.name[:-5] for f in files if f.name.endswith(".json"))


def get_config(name: str, **overrides: Any) -> ModelConfig:
    path = _config_dir() / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    cfg = ModelConfig.from_dict(json.loads(path.read_text()))
    return cfg.with_overrides(**overrides) if overrides else cfg
