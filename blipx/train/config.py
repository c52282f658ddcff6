"""TrainConfig: every knob of a training run, from a YAML/JSON file plus ``key=value`` overrides.

Every value is checked once, here, when the config is built (``TrainConfig.__post_init__``):
text is parsed by the field's declared type (``resume=no`` is False, ``max_steps=abc`` is an
error naming ``max_steps``), and settings that cannot mean anything (``batch_size=0``,
``amp=fp8``, a NaN learning rate) are refused with a message naming the setting, before any
model is built or file written.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# task -> (model family, model task)
TASKS = {
    "blip_pretrain": ("blip", "pretrain"),
    "albef_pretrain": ("albef", "pretrain"),
    "blip_caption": ("blip", "captioner"),
    "blip_retrieval": ("blip", "retriever"),
    "albef_retrieval": ("albef", "retriever"),
    "blip_vqa": ("blip", "vqa"),
    "albef_vqa": ("albef", "vqa"),
    "blip_nlvr": ("blip", "nlvr"),
    "albef_nlvr": ("albef", "nlvr"),
    "albef_nlvr_pretrain": ("albef", "nlvr_pretrain"),
    "albef_ve": ("albef", "ve"),
    "blip_ve": ("blip", "ve"),
    "albef_grounding": ("albef", "retriever"),
    "blip_grounding": ("blip", "retriever"),
}
AMP = ("none", "bf16", "fp16")
SCHEDULES = ("cosine", "step")
FLIPS = ("auto", "random", "swap", "none")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_NONE = ("null", "none")


class ConfigError(ValueError):
    """A setting that is refused; the message names it."""


class RunError(RuntimeError):
    """A run that must not start or did not train: an output folder holding another run, a
    resume with nothing valid to resume from, a run that took no optimizer step."""


def default_out_dir(task: str) -> str:
    """``runs/<task>``: pretraining and the fine-tunings started from it never share a folder."""
    return f"runs/{task}"


@dataclass
class TrainConfig:
    # what to train
    task: str = "blip_pretrain"  # blip_pretrain | albef_pretrain | blip_caption | blip_retrieval | albef_retrieval
    model: str = "blip_tiny"  # a shipped config name (blipx.models.list_models())
    init: str | None = None  # checkpoint to start from (blipx dir, HF dir or official .pth)
    model_overrides: dict[str, Any] = field(default_factory=dict)
    # data
    data: str = "shapes"  # "shapes" (built-in synthetic), JSON/JSONL annotation file(s) (comma-separated), or WebDataset shards
    image_root: str | None = None
    # Annotation image paths that are absolute or climb out of image_root ("../") are refused
    # (annotation files come from the web); true reads them as given.
    allow_outside_root: bool = False
    data_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"size": 2000, "noise": 0.3}
    flip: str = "auto"  # random | swap (flip + swap left/right in captions) | none; auto: swap for shapes
    randaugment: bool = True
    # RandomResizedCrop area range; None = official ((0.5, 1) fine-tune, (0.2, 1) pretrain-stage
    # transforms) except on shapes, whose captions name positions that a crop would falsify: (1, 1).
    crop_scale: list[float] | None = None
    max_text_len: int = 30
    prompt: str = "a picture of "  # captioning fine-tuning only
    num_workers: int = 0
    # optimisation
    batch_size: int = 8  # per rank
    epochs: int = 1
    max_steps: int = 0  # > 0 stops early (optimizer steps)
    grad_accum: int = 1
    lr: float = 1e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.02
    decay_norm_and_bias: bool = False  # BLIP's official recipe decays every parameter; ALBEF's does not
    schedule: str = "cosine"  # cosine | step
    step_decay: float = 0.9  # per epoch, schedule=step (BLIP pretraining)
    warmup_steps: int = 0
    warmup_lr: float = 1e-6
    grad_clip: float = 0.0
    # Model modules kept as loaded (no gradient, no update), e.g. ["visual_encoder"]; their
    # momentum copies, if any, then stay equal to them.
    freeze: list[str] = field(default_factory=list)
    amp: str = "none"  # none | bf16 | fp16
    grad_checkpointing: bool = False
    # objectives
    queue_size: int = 57600
    momentum: float = 0.995
    alpha: float = 0.4
    alpha_warmup_steps: int = 0  # ALBEF: one epoch of steps, BLIP: two
    # ITM hard negatives are drawn from softmax(hardness * ITC sims); hardness ramps 0 -> 1 over
    # these steps (0 = official: hard from the first step). From-scratch models need the ramp:
    # before ITC separates anything, the hardest negatives are indistinguishable and ITM stays at
    # its prior (blip_mini on shapes: ITM loss 0.636 flat for 150 steps; 0.30 with random negatives).
    itm_hardness_warmup_steps: int = 0
    label_smoothing: float = 0.1  # LM loss (official BLIP)
    # bookkeeping
    out_dir: str | None = None  # None: runs/<task>
    overwrite: bool = False  # replace a run already in out_dir (its checkpoints, model, metrics)
    seed: int = 42
    log_every: int = 10
    ckpt_every: int = 0  # optimizer steps; 0 = only at the end
    keep_checkpoints: int = 2
    resume: bool = False  # continue the run in out_dir from its newest valid checkpoint
    device: str = "auto"

    def __post_init__(self) -> None:
        hints = _field_types()
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce(f.name, getattr(self, f.name), hints[f.name]))
        if self.out_dir is None:
            self.out_dir = default_out_dir(self.task)
        _check_ranges(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _type_name(tp: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", dict: "a JSON object",
            list: "a JSON list"}.get(typing.get_origin(tp) or tp, str(tp))


def coerce(key: str, value: Any, tp: Any) -> Any:
    """``value`` as the declared type ``tp`` of setting ``key``, or :class:`ConfigError`.

    Text (``key=value`` on the command line, or a quoted value in a file) is parsed: booleans
    accept true/false, yes/no, on/off, 1/0 in any case; integers and numbers as Python writes
    them; JSON for objects and lists; ``null``/``none`` for a setting that may be None. A value
    that already has a type (from YAML/JSON or Python) must have the declared one (an integer
    is fine for a number; a boolean is never a number)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp):
        if value is None or isinstance(value, str) and value.strip().lower() in _NONE:
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    base = typing.get_origin(tp) or tp
    text = value.strip() if isinstance(value, str) else None
    if base is bool:
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        if type(value) is int and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}={value!r}: expected a boolean, one of {'/'.join(_TRUE + _FALSE)} (any case)")
    if base in (int, float):
        if type(value) is int or base is float and type(value) is float:
            return base(value)
        if text is not None:
            try:
                return base(text)
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r}: expected {_type_name(base)}")
    if base is str:
        if isinstance(value, str):
            # A JSON string ('prompt="a picture of "', as the README's JSON values were written
            # before typed parsing) is its content; anything else is taken as is, not stripped:
            # a prompt's trailing space is part of it.
            if len(value) >= 2 and value[0] == value[-1] == '"':
                try:
                    return json.loads(value)
                except json.JSONDecodeError:
                    pass
            return value
        if isinstance(value, os.PathLike):  # paths (out_dir, data, init) given as Path objects
            return os.fspath(value)
        raise ConfigError(f"{key}={value!r}: expected a string, got {type(value).__name__}")
    if base in (dict, list):
        if text is not None:
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{key}={text!r}: expected {_type_name(base)} (JSON): {e.msg}") from None
        if not isinstance(value, base):
            raise ConfigError(f"{key}={value!r}: expected {_type_name(base)}, got {type(value).__name__}")
        if base is list and typing.get_args(tp) == (float,):
            return [coerce(f"{key}[{i}]", v, float) for i, v in enumerate(value)]
        return value
    raise TypeError(f"TrainConfig.{key}: no parser for {tp}")  # a field added with a new type


def _check_ranges(cfg: TrainConfig) -> None:
    """Refuse settings that cannot mean anything, naming the first one found."""

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"{key}={getattr(cfg, key)!r}: must be {what}")

    def choice(key: str, options) -> None:
        need(getattr(cfg, key) in options, key, "one of " + ", ".join(options))

    choice("task", TASKS)
    choice("amp", AMP)
    choice("schedule", SCHEDULES)
    choice("flip", FLIPS)
    for key in ("batch_size", "grad_accum", "log_every", "epochs", "keep_checkpoints", "max_text_len"):
        need(getattr(cfg, key) >= 1, key, "an integer >= 1")
    for key in ("max_steps", "ckpt_every", "num_workers", "warmup_steps", "queue_size", "alpha_warmup_steps",
                "itm_hardness_warmup_steps", "seed"):
        need(getattr(cfg, key) >= 0, key, "an integer >= 0")
    need(math.isfinite(cfg.lr) and cfg.lr > 0, "lr", "a finite number > 0")
    for key in ("min_lr", "warmup_lr", "weight_decay", "grad_clip"):
        need(math.isfinite(getattr(cfg, key)) and getattr(cfg, key) >= 0, key, "a finite number >= 0")
    need(math.isfinite(cfg.step_decay) and 0 < cfg.step_decay <= 1, "step_decay", "in (0, 1]")
    for key in ("momentum", "alpha"):
        need(0 <= getattr(cfg, key) <= 1, key, "in [0, 1]")  # NaN fails both comparisons
    need(0 <= cfg.label_smoothing < 1, "label_smoothing", "in [0, 1)")
    if cfg.crop_scale is not None:
        lo_hi = cfg.crop_scale
        need(len(lo_hi) == 2 and 0 < lo_hi[0] <= lo_hi[1] <= 1, "crop_scale", "[low, high] with 0 < low <= high <= 1")
    need(all(isinstance(n, str) and n.strip(".") for n in cfg.freeze), "freeze", "a list of module names")
    need(bool(cfg.data), "data", "'shapes', annotation file(s) or WebDataset shards")
    need(bool(cfg.out_dir), "out_dir", "a folder path")
    if cfg.device != "auto":
        import torch

        try:
            torch.device(cfg.device)
        except (RuntimeError, ValueError):
            need(False, "device", "auto, cpu, cuda or cuda:<index>")
    if cfg.resume and cfg.overwrite:
        raise ConfigError("resume=true and overwrite=true contradict each other: continue the run, or replace it")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings of a YAML (``.yaml``/``.yml``) or JSON file, unchecked."""
    text = Path(path).read_text(encoding="utf-8")
    if str(path).endswith((".yaml", ".yml")):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of TrainConfig settings, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                defaults: dict[str, Any] | None = None, **kwargs: Any) -> TrainConfig:
    """A TrainConfig from ``defaults``, then a YAML/JSON file, then ``key=value`` overrides, then
    keyword arguments. Each value is parsed and checked by :class:`TrainConfig` (ConfigError)."""
    values: dict[str, Any] = dict(defaults or {})
    if path is not None:
        values.update(read_config_file(path))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, value = item.split("=", 1)
        values[key.strip()] = value  # text: parsed by the field's type in TrainConfig
    values.update(kwargs)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}; known: {sorted(known)}")
    return TrainConfig(**values)
