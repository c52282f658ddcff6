"""blipx's public op API: one thin function per op over ``torch.ops.blipx.*``.

Each op dispatches to its C++ (CPU) or CUDA kernel, or to its reference twin in
:mod:`blipx.ops.reference` when kernels are switched off (``BLIPX_USE_KERNELS=0``) or missing
for the device (with a one-time warning).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from blipx.ops import _fake  # noqa: F401  (fake kernels for torch.compile)
from blipx.ops import reference
from blipx.ops._backend import OP_NAMES, has_kernel, kernel_for, set_use_kernels, use_kernels

__all__ = [
    "OP_NAMES",
    "enqueue_",
    "has_kernel",
    "momentum_update_",
    "reference",
    "sample_hard_negatives",
    "set_use_kernels",
    "use_kernels",
]


def momentum_update_(ema_params: Sequence[torch.Tensor], params: Sequence[torch.Tensor], momentum: float) -> None:
    """In place over whole lists: ``ema = momentum * ema + (1 - momentum) * param``.

    ema_params / params: equally long lists of same-shape tensors on one device; dtypes
    fp32, fp16 or bf16 (equal per pair), or an fp32 EMA of fp16/bf16 params. momentum in [0, 1].
    On CUDA: one multi-tensor launch per dtype pair (and per ~960 tensors), no host sync,
    capturable in a CUDA graph. Never part of autograd.
    """
    ema_params = list(ema_params)
    params = list(params)
    if not ema_params and not params:
        return  # nothing to dispatch on (the dispatcher needs a tensor)
    device = ema_params[0].device if ema_params else torch.device("cpu")
    with torch.no_grad():
        if kernel_for("momentum_update_", device):
            torch.ops.blipx.momentum_update_.default(ema_params, params, float(momentum))
        else:
            reference.momentum_update_ref(ema_params, params, momentum)


def enqueue_(queue: torch.Tensor, ptr: torch.Tensor, feats: torch.Tensor) -> None:
    """Write ``feats`` [N, ...] into the ring ``queue`` [Q, ...] at the device-side ``ptr``.

    Rows ``(ptr + i) % Q`` get ``feats[i]`` (wrapping around; Q need not be a multiple of N),
    then ``ptr`` (int64, one element, on the queue's device) advances to ``(ptr + N) % Q`` on
    the device. feats must have the queue's dtype and row shape, and N <= Q. Serves the
    image/text feature queues ([Q, 256]) and the image-id queue ([Q]).
    """
    with torch.no_grad():
        if kernel_for("enqueue_", queue.device):
            torch.ops.blipx.enqueue_.default(queue, ptr, feats)
        else:
            reference.enqueue_ref(queue, ptr, feats)


def sample_hard_negatives(
    sim: torch.Tensor,
    positive_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one hard negative per row: LongTensor [B] of column indices, -1 where none exists.

    Row i picks column j with probability proportional to ``exp(sim[i, j])`` (a softmax over
    the row, so pass logits such as ``sim / temp``) among the columns that are not positives
    and not NaN. sim: [B, N] fp32/fp16/bf16/fp64, any strides (e.g. ``sim_i2t.t()``).
    positive_mask: bool [B, N] (True = positive, never drawn), required when sim is not square
    (local rows vs gathered candidates [B, W*B]); None means the diagonal. -inf columns have
    probability 0; a row with valid +inf columns draws uniformly among them; a row with no
    column of positive probability returns -1 (drop it from the ITM loss). Reproducible for a
    seeded ``generator`` (of sim's device type); one launch on CUDA, no host sync. Not
    differentiable (integer output).
    """
    with torch.no_grad():
        if kernel_for("sample_hard_negatives", sim.device):
            return torch.ops.blipx.sample_hard_negatives.default(sim, positive_mask, generator)
        return reference.sample_hard_negatives_ref(sim, positive_mask, generator)
