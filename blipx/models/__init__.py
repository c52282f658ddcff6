"""ALBEF and BLIP models, their configs and ``create_model``."""

from __future__ import annotations

from typing import Any

from blipx.models.albef import AlbefPretrainer, AlbefRetriever
from blipx.models.base import BlipxModel
from blipx.models.blip import BlipCaptioner, BlipPretrainer, BlipRetriever, with_first_token
from blipx.models.blip_vqa import BlipVqa, VqaOutput
from blipx.models.config import ModelConfig, get_config, list_models
from blipx.models.init import init_weights_
from blipx.models.outputs import CaptionerOutput, MomentumOutput, PretrainOutput, RetrieverOutput

# (family, task) -> model class; "pretrain" is the default task (the superset of weights).
MODEL_CLASSES: dict[tuple[str, str], type[BlipxModel]] = {
    ("blip", "captioner"): BlipCaptioner,
    ("blip", "retriever"): BlipRetriever,
    ("blip", "pretrain"): BlipPretrainer,
    ("blip", "vqa"): BlipVqa,
    ("albef", "pretrain"): AlbefPretrainer,
    ("albef", "retriever"): AlbefRetriever,
}


def create_model(name: str, task: str = "pretrain", **overrides: Any) -> BlipxModel:
    """A randomly initialised model from a shipped config (``list_models()``).

    ``task``: "pretrain", "retriever" or (BLIP) "captioner" / "vqa". ``overrides`` edit the config,
    e.g. ``create_model("blip_base", "captioner", image_size=384)``.
    """
    cfg = get_config(name, **overrides)
    cls = MODEL_CLASSES.get((cfg.family, task))
    if cls is None:
        tasks = sorted(t for f, t in MODEL_CLASSES if f == cfg.family)
        raise ValueError(f"{name} ({cfg.family}) has no task {task!r}; choose from {tasks}")
    model = init_weights_(cls(cfg), std=cfg.initializer_range)
    if getattr(model, "has_momentum", False):
        model.copy_momentum_from_online()  # the copies were made before the init
    return model


__all__ = [
    "AlbefPretrainer",
    "AlbefRetriever",
    "BlipCaptioner",
    "BlipPretrainer",
    "BlipRetriever",
    "BlipVqa",
    "BlipxModel",
    "CaptionerOutput",
    "ModelConfig",
    "MomentumOutput",
    "PretrainOutput",
    "RetrieverOutput",
    "VqaOutput",
    "create_model",
    "get_config",
    "list_models",
    "with_first_token",
]
