"""Downstream models from pretraining checkpoints saved in the blipx format."""

from __future__ import annotations

import json
from pathlib import Path


def load_model_as(cls, model_path: str, **overrides):
    """``cls.from_pretrained`` that also accepts a blipx folder of a pretraining model: its
    weights are a superset of every downstream model's (official key names are shared).
    ``overrides`` edit the config (e.g. ``momentum=True`` keeps the momentum copies)."""
    from blipx.models import MODEL_CLASSES

    cfg_file = Path(model_path) / "config.json"
    meta = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    arch = meta.get("architecture")
    if meta.get("format") != "blipx" or arch in (None, cls.__name__):
        return cls.from_pretrained(model_path, **overrides)
    source = next((c for c in MODEL_CLASSES.values() if c.__name__ == arch), None)
    if source is None or "Pretrainer" not in arch:
        raise ValueError(f"{model_path} holds a {arch}; cannot evaluate it as a {cls.__name__}")
    src = source.from_pretrained(model_path)
    model = cls(src.config.with_overrides(**overrides) if overrides else src.config)
    missing, _ = model.load_state_dict(src.state_dict(), strict=False)
    if missing:
        raise ValueError(f"{arch} -> {cls.__name__}: weights missing for {missing[:8]}")
    return model
