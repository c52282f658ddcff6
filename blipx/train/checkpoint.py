"""Training checkpoints: everything a bit-exact resume needs, in safetensors + a small JSON.

Layout of ``<out_dir>/checkpoint-<step>/``:
    task.safetensors       model, momentum copies, queues (the task module's state dict)
    optimizer.safetensors  optimizer tensors (exp_avg, exp_avg_sq, step) keyed by param index
    rng.safetensors        torch CPU (and CUDA) generator states
    state.json             step, epoch, batch-in-epoch, scheduler state, optimizer hyper-params, config
and ``<out_dir>/latest`` names the newest one. A checkpoint is written to a temporary folder and
renamed into place, and ``latest`` is replaced atomically, so a crash mid-write never leaves a
half checkpoint behind a valid pointer. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from blipx.weights.io import atomic_write


def _write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(out_dir: str | Path, *, task: nn.Module, optimizer, scheduler, step: int, epoch: int,
                    batch_in_epoch: int, config: dict, keep: int = 2) -> Path:
    """Write ``checkpoint-<step>`` atomically and point ``latest`` at it; keep the newest ``keep``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / f"checkpoint-{step}"
    tmp = out / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(task, str(tmp / "task.safetensors"))  # de-duplicates tied (shared) weights
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda{i}"] = s
    save_file(rng, str(tmp / "rng.safetensors"))
    state = {
        "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "optimizer": opt_meta, "config": config,
    }
    _write_text_atomic(tmp / "state.json", json.dumps(state, indent=1, default=str))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _write_text_atomic(out / "latest", final.name)
    older = sorted((p for p in out.glob("checkpoint-*") if p != final), key=lambda p: int(p.name.split("-")[1]))
    for p in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    pointer = Path(out_dir) / "latest"
    if not pointer.is_file():
        return None
    path = Path(out_dir) / pointer.read_text(encoding="utf-8").strip()
    return path if (path / "state.json").is_file() else None


def load_checkpoint(path: str | Path, *, task: nn.Module, optimizer, scheduler) -> dict:
    """Restore task, optimizer, scheduler and RNG states in place; returns state.json's dict."""
    path = Path(path)
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    missing, unexpected = load_model(task, str(path / "task.safetensors"), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {path} does not fit this task: missing {missing[:8]}, unexpected {unexpected[:8]}")
    # load_state_dict moves each state tensor to its parameter's device (and keeps 'step' where
    # the optimizer's fused/capturable policy wants it).
    _restore_optimizer(optimizer, load_file(str(path / "optimizer.safetensors")), state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    rng = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(rng["cpu"])
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all([rng[k] for k in sorted(k for k in rng if k.startswith("cuda"))])
    return state
