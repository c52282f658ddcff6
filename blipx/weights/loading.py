"""Fill a model from a (converted) state dict, with tied weights and clear errors.

blipx models tie parameters by sharing modules/Parameters (LM head = word embeddings, BLIP's
encoder/decoder sharing), so one tensor may have several names. A checkpoint may hold any
one of them (HF drops ``cls.predictions.decoder.*``; official BLIP files list every name).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from blipx.layers.vit import interpolate_pos_embed
from blipx.weights.io import CheckpointError


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    # Present in the checkpoint, deliberately unused by this model (e.g. a pretrain file's
    # decoder when loading a retriever); listed so nothing is dropped silently.
    ignored: list[str] = field(default_factory=list)
    # Model tensors left at their initial values because allowed (e.g. ``temp`` from HF).
    kept_init: list[str] = field(default_factory=list)
    # Position embeddings resized to the model's image size.
    interpolated: list[str] = field(default_factory=list)
    # With strict=False: checkpoint tensors whose shape does not fit (not loaded; the model
    # tensor keeps its initial value), as "name: checkpoint (..) vs model (..)".
    mismatched: list[str] = field(default_factory=list)
    # What the checkpoint's layout means for the loaded model, in words (e.g. an HF BlipModel
    # folder: ITC only, no ITM head).
    notes: list[str] = field(default_factory=list)


def alias_groups(model: nn.Module) -> list[list[str]]:
    """State-dict names grouped by the tensor they refer to, in state-dict order."""
    groups: dict[int, list[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(t), []).append(name)
    return list(groups.values())


def canonical_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """One entry per distinct tensor (the first name), for safetensors, which refuses aliases."""
    sd = model.state_dict()
    return {g[0]: sd[g[0]] for g in alias_groups(model)}


def _fmt(names: list[str], limit: int = 30) -> str:
    more = f" ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def load_into_model(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    *,
    ignore: tuple[str, ...] = (),
    allow_missing: tuple[str, ...] = (),
    strict: bool = True,
    source: str = "checkpoint",
) -> LoadReport:
    """Copy ``state_dict`` into ``model`` (native key names) in place.

    ``ignore`` / ``allow_missing`` are regexes (``re.fullmatch``) over checkpoint / model names.
    With ``strict``, missing, unexpected and mis-shaped keys raise one :class:`CheckpointError`
    listing all of them; nothing is modified in that case. Position embeddings of another grid
    size are interpolated (as the official loaders do).
    """
    report = LoadReport()
    targets = model.state_dict(keep_vars=True)
    known = set(targets)
    plan: list[tuple[list[str], torch.Tensor]] = []
    missing, mismatched = [], []
    for group in alias_groups(model):
        src = next((n for n in group if n in state_dict), None)
        if src is None:
            if all(any(re.fullmatch(p, n) for p in allow_missing) for n in group):
                report.kept_init.append(group[0])
            else:
                missing.append(group[0])
            continue
        value, target = state_dict[src], targets[group[0]]
        if src.endswith("pos_embed") and value.ndim == 3 and value.shape[1] != target.shape[1]:
            value = interpolate_pos_embed(value, target.shape[1] - 1)
            report.interpolated.append(src)
        if value.shape != target.shape:
            mismatched.append(f"{src}: checkpoint {tuple(value.shape)} vs model {tuple(target.shape)}")
            continue
        plan.append((group, value))
    unexpected = []
    for k in state_dict:
        if k in known:
            continue
        if any(re.fullmatch(p, k) for p in ignore):
            report.ignored.append(k)
        else:
            unexpected.append(k)
    if strict and (missing or unexpected or mismatched):
        parts = [f"{source} does not fit {type(model).__name__}:"]
        if missing:
            parts.append(f"  missing ({len(missing)}): {_fmt(missing)}")
        if unexpected:
            parts.append(f"  unexpected ({len(unexpected)}): {_fmt(unexpected)}")
        if mismatched:
            parts.append(f"  wrong shape ({len(mismatched)}): {_fmt(mismatched)}")
        raise CheckpointError("\n".join(parts))
    with torch.no_grad():
        for group, value in plan:
            targets[group[0]].copy_(value)
            report.loaded.extend(group)
    report.kept_init.extend(missing)
    report.ignored.extend(unexpected)
    report.mismatched.extend(mismatched)
    return report
