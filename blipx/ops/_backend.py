"""The one switch between blipx's compiled kernels and the pure-PyTorch references.

``BLIPX_USE_KERNELS=0`` (read at import) or ``set_use_kernels(False)`` routes every op to
``blipx.ops.reference``. With kernels on, an op asked for on a device it has no kernel for
(a CPU-only build given CUDA tensors, or no build at all) falls back to the reference with a
one-time warning naming the op and device -- never a silent change of results.
"""

from __future__ import annotations

import os
import warnings

import torch

from blipx import _native
from blipx.ops import _fake  # noqa: F401  (registers the fake (Meta) kernels _AVAILABLE looks up)

_use_kernels = os.environ.get("BLIPX_USE_KERNELS", "1").strip().lower() not in ("0", "false", "no", "off")
_warned: set[tuple[str, str]] = set()

# Every op blipx declares in csrc/registry.cpp, in one list for `blipx info` and the tests.
OP_NAMES = ("momentum_update_", "enqueue_", "sample_hard_negatives", "sample_tokens", "beam_search_step")
OP_NAMES += ("cross_attention_fwd", "cross_attention_bwd", "cross_attention_mma_fwd", "cross_attention_mma_bwd")
# Ops with device kernels only (no CPU kernel, no reference of their own): the tensor-core
# kernels, whose reference is cross_attention_fwd/_bwd's (blipx.ops.dispatch chooses between them).
CUDA_ONLY_OPS = frozenset({"cross_attention_mma_fwd", "cross_attention_mma_bwd"})


def use_kernels() -> bool:
    """True when ops dispatch to the compiled kernels (the default)."""
    return _use_kernels


def set_use_kernels(enabled: bool) -> None:
    """Turn the compiled kernels on or off process-wide (False: run the references)."""
    global _use_kernels
    _use_kernels = bool(enabled)


def has_kernel(op: str, device_type: str) -> bool:
    """Whether the build registered a kernel for ``blipx::op`` on ``device_type`` ('cpu', 'cuda',
    or 'meta': the fake kernel of blipx/ops/_fake.py)."""
    if _native._C is None or not hasattr(torch.ops.blipx, op):
        return False
    key = {"cpu": "CPU", "cuda": "CUDA", "meta": "Meta"}.get(device_type)
    if key is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"blipx::{op}", key)


# Looked up once: torch.compile traces a dict lookup, not the dispatcher query.
# Meta tensors go to the fake kernels, as torch.ops would send them, rather than to the references.
_AVAILABLE = {(op, dev): has_kernel(op, dev) for op in OP_NAMES for dev in ("cpu", "cuda", "meta")}


def kernel_for(op: str, device: torch.device) -> bool:
    """Decide kernel vs reference for one call; warns once per (op, device) on a fallback."""
    if not _use_kernels:
        return False
    key = (op, device.type)
    if _AVAILABLE.get(key, False):
        return True
    if key not in _warned and not torch.compiler.is_compiling():
        _warned.add(key)
        why = _native.load_error or f"this build has no {device.type} kernel for it"
        warnings.warn(
            f"blipx.ops.{op}: no compiled kernel for {device.type} ({why}); "
            "running the pure-PyTorch reference instead",
            RuntimeWarning,
            stacklevel=3,
        )
    return False
