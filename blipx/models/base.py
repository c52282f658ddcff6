"""Shared save/load for blipx models: blipx dirs, HF BLIP dirs and official ``.pth`` files."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from blipx.models.config import ModelConfig, get_config
from blipx.weights import hf, official
from blipx.weights.io import CheckpointError, read_state_dict, write_json, write_safetensors
from blipx.weights.loading import LoadReport, canonical_state_dict, load_into_model

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_TAG = "blipx"
_MOMENTUM_KEY = re.compile(r"\w+_m\.")


def _resolve(path: str | os.PathLike) -> Path:
    """A local path, or a hub id downloaded with huggingface_hub (only if the path is absent)."""
    p = Path(path)
    if p.exists():
        return p
    s = str(path)
    if s.count("/") == 1 and not s.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download
        except ImportError as e:
            raise FileNotFoundError(f"{s} is not a local path, and huggingface_hub is not installed") from e
        return Path(snapshot_download(s, allow_patterns=["*.json", "*.safetensors"]))
    raise FileNotFoundError(f"no such checkpoint file or directory: {s}")


def _read_dir_weights(d: Path) -> dict[str, torch.Tensor]:
    index = d / f"{WEIGHTS_NAME}.index.json"
    if index.is_file():  # sharded HF save
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd: dict[str, torch.Tensor] = {}
        for f in files:
            sd.update(read_state_dict(d / f))
        return sd
    for name in (WEIGHTS_NAME, "pytorch_model.bin"):
        if (d / name).is_file():
            return read_state_dict(d / name)
    raise CheckpointError(f"no {WEIGHTS_NAME} (or pytorch_model.bin) in {d}")


class BlipxModel(nn.Module):
    """Base of every blipx model: holds ``config`` and the (de)serialisation logic.

    Subclasses set ``family`` and the regexes of checkpoint keys they legitimately ignore.
    """

    family: ClassVar[str] = "blip"
    # Checkpoint keys from other heads of the same family that this model does not use.
    _ignore_keys: ClassVar[tuple[str, ...]] = ()
    # Model tensors a checkpoint may lack (kept at init), e.g. ``temp``, which HF does not store.
    _optional_keys: ClassVar[tuple[str, ...]] = ()
    # True when ``text_encoder`` is a BertLMHead (``text_encoder.bert.*``: ALBEF pretraining).
    _text_encoder_is_lm: ClassVar[bool] = False

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.family != self.family:
            raise ValueError(f"{type(self).__name__} needs a {self.family!r} config, got {config.family!r}")
        self.config = config
        self.load_report: LoadReport | None = None
        # Queues etc. found in an official checkpoint: training state for the trainer to adopt.
        self.checkpoint_extras: dict[str, torch.Tensor] = {}

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write ``config.json`` + ``model.safetensors`` (tied tensors stored once), atomically."""
        d = Path(save_directory)
        d.mkdir(parents=True, exist_ok=True)
        write_safetensors(d / WEIGHTS_NAME, canonical_state_dict(self), metadata={"format": "pt"})
        write_json(d / CONFIG_NAME, {"format": FORMAT_TAG, "architecture": type(self).__name__,
                                     "config": self.config.to_dict()})

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        config: str | ModelConfig | None = None,
        strict: bool = True,
        **overrides: Any,
    ):
        """Load a blipx directory, an HF BLIP directory (``save_pretrained`` output) or an
        official Salesforce ``.pth``/``.safetensors`` file; returns the model in eval mode.

        ``config`` (a name from :func:`list_models` or a ModelConfig) replaces the stored or
        inferred architecture; ``overrides`` edit it (e.g. ``image_size=384`` resizes the
        position embedding). ``strict`` raises on missing/unexpected/mis-shaped keys.
        """
        p = _resolve(path)
        queues: dict[str, torch.Tensor] = {}
        if p.is_dir():
            if not (p / CONFIG_NAME).is_file():
                raise CheckpointError(f"{p} has no {CONFIG_NAME}")
            meta = json.loads((p / CONFIG_NAME).read_text())
            sd = _read_dir_weights(p)
            if meta.get("format") == FORMAT_TAG:
                stored, source = ModelConfig.from_dict(meta["config"]), f"blipx checkpoint {p}"
                if meta.get("architecture") != cls.__name__:
                    raise CheckpointError(f"{p} holds a {meta.get('architecture')}, not a {cls.__name__}")
            elif hf.is_hf_config(meta):
                arch = (meta.get("architectures") or [None])[0]
                if arch in hf.HF_ARCHITECTURES and hf.HF_ARCHITECTURES[arch] != cls.__name__:
                    raise CheckpointError(
                        f"{p} holds an HF {arch}; load it with {hf.HF_ARCHITECTURES[arch]}, not {cls.__name__}"
                    )
                stored, source = hf.config_from_hf(meta), f"HF BLIP checkpoint {p}"
                sd = hf.state_dict_from_hf(sd)
            else:
                raise CheckpointError(f"{p / CONFIG_NAME} is neither a blipx nor an HF BLIP config")
        else:
            sd, queues = official.split_queues(read_state_dict(p))
            stored = None if config is not None else official.infer_config(sd)
            sd = official.state_dict_from_official(sd, cls._text_encoder_is_lm)
            source = f"official checkpoint {p}"
        if isinstance(config, str):
            config = get_config(config)
        cfg = (config or stored).with_overrides(**overrides)
        model = cls(cfg)
        ignore, optional = model._ignore_keys, model._optional_keys
        # A file without momentum copies (HF, fine-tuned heads) still initialises a model that
        # has them: they start as copies of the online weights, as ALBEF's ``copy_params`` does.
        init_momentum = model.has_momentum and not any(_MOMENTUM_KEY.match(k) for k in sd)
        if not model.has_momentum:
            ignore = ignore + (_MOMENTUM_KEY.pattern + ".*",)
        elif init_momentum:
            optional = optional + (_MOMENTUM_KEY.pattern + ".*",)
        model.load_report = load_into_model(
            model, sd, ignore=ignore, allow_missing=optional, strict=strict, source=source
        )
        if init_momentum:
            model.copy_momentum_from_online()
        model.checkpoint_extras = queues
        return model.eval()

    @property
    def has_momentum(self) -> bool:
        return hasattr(self, "visual_encoder_m")
