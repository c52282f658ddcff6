"""ALBEF and BLIP models, their configs and ``create_model``."""

from __future__ import annotations

from typing import Any

from blipx.models.albef import AlbefPretrainer, AlbefRetriever
from blipx.models.albef_nlvr import AlbefNlvr, AlbefNlvrPretrainer
from blipx.models.albef_vqa import AlbefVqa
from blipx.models.base import BlipxModel, Checkpoint, read_checkpoint
from blipx.models.blip_nlvr import BlipNlvr
from blipx.models.blip import BlipCaptioner, BlipPretrainer, BlipRetriever, with_first_token
from blipx.models.blip_vqa import BlipVqa, RankOutput, VqaOutput
from blipx.models.config import ModelConfig, get_config, list_models
from blipx.models.init import init_weights_
from blipx.models.outputs import CaptionerOutput, MomentumOutput, PretrainOutput, RetrieverOutput
from blipx.models.ve import AlbefVe, BlipVe, VeOutput

# (family, task) -> model class; "pretrain" is the default task (the superset of weights).
MODEL_CLASSES: dict[tuple[str, str], type[BlipxModel]] = {
    ("blip", "captioner"): BlipCaptioner,
    ("blip", "retriever"): BlipRetriever,
    ("blip", "pretrain"): BlipPretrainer,
    ("blip", "vqa"): BlipVqa,
    ("albef", "pretrain"): AlbefPretrainer,
    ("albef", "retriever"): AlbefRetriever,
    ("albef", "vqa"): AlbefVqa,
    ("blip", "nlvr"): BlipNlvr,
    ("albef", "nlvr"): AlbefNlvr,
    ("albef", "nlvr_pretrain"): AlbefNlvrPretrainer,
    ("albef", "ve"): AlbefVe,
    ("blip", "ve"): BlipVe,
}


def model_class(family: str, task: str) -> type[BlipxModel]:
    """The class of ``task`` ("pretrain", "retriever", "captioner", "vqa") in ``family``."""
    cls = MODEL_CLASSES.get((family, task))
    if cls is None:
        tasks = sorted(t for f, t in MODEL_CLASSES if f == family)
        raise ValueError(f"{family} has no task {task!r}; choose from {tasks}")
    return cls


def from_pretrained(path: str, task: str | None = None, **kwargs: Any) -> BlipxModel:
    """Load any checkpoint as the model of ``task`` in the checkpoint's own family (ALBEF or
    BLIP, read from its config), without knowing the class: ``task=None`` keeps the architecture
    the folder was saved as. ``kwargs`` as :meth:`BlipxModel.from_pretrained`."""
    from blipx.models.layouts.hf import HF_ARCHITECTURES

    ckpt = read_checkpoint(path, kwargs.get("config"))
    if task is None:
        name = ckpt.architecture if ckpt.format == "blipx" else HF_ARCHITECTURES.get(ckpt.architecture or "")
        cls = next((c for c in MODEL_CLASSES.values() if c.__name__ == name), None)
        if cls is None:
            raise ValueError(f"{path}: cannot tell which model it holds ({ckpt.format} checkpoint); pass task= "
                             f"(one of {sorted({t for _, t in MODEL_CLASSES})})")
    else:
        config = kwargs.get("config")
        family = (get_config(config) if isinstance(config, str) else config or ckpt.config).family
        cls = model_class(family, task)
    return cls.from_checkpoint(ckpt, **kwargs)


def create_model(name: str, task: str = "pretrain", **overrides: Any) -> BlipxModel:
    """A randomly initialised model from a shipped config (``list_models()``).

    ``task``: "pretrain", "retriever" or (BLIP) "captioner" / "vqa". ``overrides`` edit the config,
    e.g. ``create_model("blip_base", "captioner", image_size=384)``.
    """
    cfg = get_config(name, **overrides)
    cls = model_class(cfg.family, task)
    model = init_weights_(cls(cfg), std=cfg.initializer_range)
    if getattr(model, "has_momentum", False):
        model.copy_momentum_from_online()  # the copies were made before the init
    return model


__all__ = [
    "AlbefNlvr",
    "AlbefNlvrPretrainer",
    "AlbefPretrainer",
    "AlbefRetriever",
    "AlbefVe",
    "AlbefVqa",
    "BlipCaptioner",
    "BlipNlvr",
    "BlipPretrainer",
    "BlipRetriever",
    "BlipVe",
    "BlipVqa",
    "BlipxModel",
    "Checkpoint",
    "CaptionerOutput",
    "ModelConfig",
    "MomentumOutput",
    "PretrainOutput",
    "RankOutput",
    "RetrieverOutput",
    "VeOutput",
    "VqaOutput",
    "create_model",
    "from_pretrained",
    "model_class",
    "read_checkpoint",
    "get_config",
    "list_models",
    "with_first_token",
]
