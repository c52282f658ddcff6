"""Training checkpoints: everything a bit-exact resume needs, in safetensors + a small JSON.

Layout of ``<out_dir>/checkpoint-<step>/``:
    task.safetensors       model, momentum copies, queues (the task module's state dict)
    optimizer.safetensors  optimizer tensors (exp_avg, exp_avg_sq, step) keyed by param index
    rng.safetensors        torch CPU (and CUDA) generator states
    state.json             step, epoch, batch-in-epoch, scheduler state, optimizer hyper-params, config
and ``<out_dir>/latest`` names the newest one. Nothing is ever unpickled.

A save survives a kill at any moment. It is written into ``.checkpoint-<step>.tmp``, renamed into
place in one step (a folder rename is atomic), then ``latest`` is replaced atomically, and only
then are checkpoints beyond ``keep`` deleted: no checkpoint is deleted before its replacement is
complete and in place. A folder already named ``checkpoint-<step>`` (a damaged one: the trainer
never saves a step twice) is renamed aside, not deleted, until the new one is in.

Resume (:func:`find_resume_checkpoint`) takes the newest *valid* checkpoint, whatever ``latest``
says, and reports what it passed over: a ``latest`` naming a missing or incomplete folder, a
newer checkpoint that was completed just before the kill that stopped ``latest`` from being
updated, damaged ``checkpoint-*`` folders. Temporary folders are never resumed from (the
checkpoint they would have become was not yet in place, so the previous one still is).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from blipx.weights.io import atomic_write

FILES = ("task.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json")
_NAME = re.compile(r"checkpoint-(\d+)")
_SCRATCH = (".checkpoint-*.tmp", ".checkpoint-*.old")  # a save's temporary and set-aside folders


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


def checkpoint_step(path: Path) -> int | None:
    """N of a ``checkpoint-N`` folder name, else None."""
    m = _NAME.fullmatch(path.name)
    return int(m.group(1)) if m else None


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """The ``checkpoint-N`` folders of ``out_dir``, newest (highest N) first, valid or not."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    found = [p for p in out.iterdir() if checkpoint_step(p) is not None and p.is_dir()]
    return sorted(found, key=checkpoint_step, reverse=True)


def read_state(path: str | Path) -> dict:
    return json.loads((Path(path) / "state.json").read_text(encoding="utf-8"))


def checkpoint_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be resumed from ('missing', 'incomplete (no state.json)', ...), or None."""
    path = Path(path)
    if not path.is_dir():
        return "missing"
    absent = [f for f in FILES if not (path / f).is_file()]
    if absent:
        return f"incomplete (no {', '.join(absent)})"
    try:
        state = read_state(path)
        step = state["step"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable (state.json: {type(e).__name__}: {e})"
    if checkpoint_step(path) not in (None, step):
        return f"inconsistent (state.json says step {step})"
    for f in FILES[:3]:
        try:
            with safe_open(str(path / f), framework="pt") as h:  # the header only, no tensor read
                h.keys()
        except Exception as e:  # safetensors raises its own error types for a damaged header
            return f"unreadable ({f}: {e})"
    return None


def save_checkpoint(out_dir: str | Path, *, task: nn.Module, optimizer, scheduler, step: int, epoch: int,
                    batch_in_epoch: int, config: dict, keep: int = 2) -> Path:
    """Write ``checkpoint-<step>``, point ``latest`` at it, then keep the newest ``keep``.

    Each filesystem step leaves ``out_dir`` resumable (see the module docstring)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for pattern in _SCRATCH:  # left by a save that was killed: never the only copy of anything
        for p in out.glob(pattern):
            shutil.rmtree(p)
    final = out / f"checkpoint-{step}"
    tmp = out / f".checkpoint-{step}.tmp"
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
    aside = out / f".checkpoint-{step}.old"
    if final.exists():  # a damaged folder of this step: out of the way, deleted once the new one is in
        os.replace(final, aside)
    os.replace(tmp, final)  # the commit point of the checkpoint
    _write_text_atomic(out / "latest", final.name)
    # The newest `keep` up to this step stay. A folder of a later step can only be a damaged one
    # the run resumed from before: it stays until this run saves that step (and sets it aside).
    older = [p for p in list_checkpoints(out) if checkpoint_step(p) < step]
    for p in older[max(0, keep - 1):]:
        shutil.rmtree(p)
    if aside.exists():
        shutil.rmtree(aside)
    return final


def find_resume_checkpoint(out_dir: str | Path) -> tuple[Path | None, list[str]]:
    """(the newest valid checkpoint of ``out_dir`` or None, notes on what was passed over).

    A note is written for a ``latest`` that names something other than the checkpoint chosen
    (missing, incomplete, or older than a checkpoint completed after it) and for every damaged
    ``checkpoint-*`` folder newer than the one chosen."""
    out = Path(out_dir)
    notes: list[str] = []
    pointer = out / "latest"
    named = None
    if pointer.is_file():
        named = pointer.read_text(encoding="utf-8").strip()
    elif pointer.exists():
        notes.append(f"{pointer} is not a file")
    chosen = None
    for p in list_checkpoints(out):
        why = checkpoint_problem(p)
        if why is None:
            chosen = p
            break
        notes.append(f"{p.name} is {why}")
    if named is not None and (chosen is None or named != chosen.name):
        target = out / named
        if _NAME.fullmatch(named) is None:
            notes.insert(0, f"{pointer} names {named!r}, which is not a checkpoint folder name")
        elif not target.is_dir():
            notes.insert(0, f"{pointer} names {named}, which is missing")
        elif chosen is not None and checkpoint_problem(target) is None:
            notes.insert(0, f"{pointer} names {named}, but {chosen.name} is newer and complete "
                            "(the save was interrupted before it updated the pointer)")
    return chosen, notes


def load_checkpoint(path: str | Path, *, task: nn.Module, optimizer, scheduler) -> dict:
    """Restore task, optimizer, scheduler and RNG states in place; returns state.json's dict."""
    path = Path(path)
    state = read_state(path)
    missing, unexpected = load_model(task, str(path / "task.safetensors"), strict=False)
    if missing or unexpected:  # sets: sorted for a stable, readable message
        raise RuntimeError(f"checkpoint {path} does not fit this task ({type(task).__name__}): "
                           f"{len(missing)} missing, e.g. {sorted(missing)[:8]}; "
                           f"{len(unexpected)} unexpected, e.g. {sorted(unexpected)[:8]}")
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
