"""AdamW with the official parameter groups, and the official LR schedules as LambdaLR."""

from __future__ import annotations

import math

import torch
from torch import nn

from blipx.train.config import ConfigError, TrainConfig


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """ALBEF (timm's create_optimizer): no weight decay for 1-D parameters and biases (the 0-dim
    ``temp`` is decayed). BLIP: ``AdamW(model.parameters())`` decays everything."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue  # momentum copies
        if not decay_norm_and_bias and (p.ndim == 1 or name.endswith(".bias")):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def freeze_modules(model: nn.Module, names: list[str]) -> None:
    """Turn off the gradient of every parameter of the modules ``names`` of ``model`` (dotted
    paths, e.g. ``visual_encoder`` or ``text_encoder.encoder.layer.0``); :func:`param_groups`
    then leaves them out of the optimizer."""
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            top = ", ".join(n for n, _ in model.named_children())
            raise ConfigError(f"freeze: {type(model).__name__} has no module {name!r} (its modules: {top})") from None
        for p in module.parameters():
            p.requires_grad_(False)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    groups = param_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias)
    # fused AdamW on CUDA: one kernel for the whole update instead of one per tensor.
    fused = next(model.parameters()).is_cuda
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused or None)


def lr_factor(step: int, cfg: TrainConfig, steps_per_epoch: int, total_steps: int) -> float:
    """Multiplier of cfg.lr at optimizer step ``step``: linear warm-up from warmup_lr, then
    cosine to min_lr over the run (ALBEF/BLIP fine-tuning) or a per-epoch step decay (BLIP
    pretraining: ``max(min_lr, lr * decay^epoch)``)."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        start = cfg.warmup_lr / cfg.lr
        return start + (1.0 - start) * step / cfg.warmup_steps
    floor = cfg.min_lr / cfg.lr
    if cfg.schedule == "step":
        epoch = step // max(1, steps_per_epoch)
        return max(floor, cfg.step_decay**epoch)
    if cfg.schedule != "cosine":
        raise ValueError(f"schedule must be 'cosine' or 'step', got {cfg.schedule!r}")
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, cfg: TrainConfig, steps_per_epoch: int, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg, steps_per_epoch, total_steps)
    )
