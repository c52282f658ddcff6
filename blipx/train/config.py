"""TrainConfig: every knob of a training run, from a YAML/JSON file plus ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
    out_dir: str = "runs/blipx"
    seed: int = 42
    log_every: int = 10
    ckpt_every: int = 0  # optimizer steps; 0 = only at the end
    keep_checkpoints: int = 2
    resume: bool = False
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _parse_value(text: str) -> Any:
    """``key=value`` values: JSON when it parses (numbers, true/false, null, {...}), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                defaults: dict[str, Any] | None = None, **kwargs: Any) -> TrainConfig:
    """A TrainConfig from ``defaults``, then a YAML/JSON file, then ``key=value`` overrides, then
    keyword arguments."""
    values: dict[str, Any] = dict(defaults or {})
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
        if str(path).endswith((".yaml", ".yml")):
            import yaml

            values.update(yaml.safe_load(text) or {})
        else:
            values.update(json.loads(text))
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        key, value = item.split("=", 1)
        values[key.strip()] = _parse_value(value.strip())
    values.update(kwargs)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; known: {sorted(known)}")
    return TrainConfig(**values)
