"""Fingerprints that tell whether a CapFilt output folder was written by the same run: the
models' weights and the input file's content, not their paths or sizes (a re-exported file of the
same size, or another checkpoint at the same path, would otherwise resume into the old chunks)."""

from __future__ import annotations

import hashlib
import json
import os

import torch

_BLOCK = 1 << 20


def file_fingerprint(path: str | os.PathLike) -> dict:
    """``{"bytes", "sha256"}`` of a file's content, read in 1 MiB blocks (memory flat)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
            size += len(block)
    return {"bytes": size, "sha256": h.hexdigest()}


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the model's class, config and every state-dict tensor (name, dtype, shape and
    bytes, in sorted name order): equal exactly when the model computes the same function,
    whatever file or format it was loaded from, and whichever device it sits on."""
    h = hashlib.sha256(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if hasattr(config, "to_dict"):
        h.update(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach()
        h.update(f"\n{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # Host copy, one tensor at a time, once per run (not a hot path): hashlib reads host bytes.
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()
