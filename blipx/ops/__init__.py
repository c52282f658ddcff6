"""blipx's public op API: one thin function per op over ``torch.ops.blipx.*``.

Each op dispatches to its C++ (CPU) or CUDA kernel, or to its reference twin in
:mod:`blipx.ops.reference` when kernels are switched off (``BLIPX_USE_KERNELS=0``) or missing
for the device (with a one-time warning); all-meta calls go to the fake kernels. Both paths
refuse the same arguments with the same ``RuntimeError("blipx.<op>: ...")``: the rules live
once, in csrc/checks.cpp, and the references run them through ``blipx::_check_<op>`` (see
:func:`blipx.ops._checks.check_args`). All tensors of a call must share one device; a meta
tensor mixed with real ones is refused, naming the argument.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from blipx.ops import _fake  # noqa: F401  (fake kernels for torch.compile)
from blipx.ops import reference
from blipx.ops._backend import OP_NAMES, has_kernel, kernel_for, set_use_kernels, use_kernels
from blipx.ops._checks import sampling_args

__all__ = [
    "OP_NAMES",
    "enqueue_",
    "has_kernel",
    "momentum_update_",
    "reference",
    "sample_hard_negatives",
    "sample_tokens",
    "beam_search_step",
    "set_use_kernels",
    "use_kernels",
]


def momentum_update_(ema_params: Sequence[torch.Tensor], params: Sequence[torch.Tensor], momentum: float) -> None:
    """In place over whole lists: ``ema = momentum * ema + (1 - momentum) * param``.

    ema_params / params: equally long lists of same-shape tensors on one device; dtypes
    fp32, fp16 or bf16 (equal per pair), or an fp32 EMA of fp16/bf16 params. momentum in [0, 1].
    No EMA tensor may share memory with another EMA tensor (the same tensor twice, overlapping
    views) or with any param, its own included: the updates run in parallel, so the result would
    depend on the thread count, and an EMA that *is* its parameter is no EMA (a momentum model
    must be a copy). Params may share memory with each other (they are only read).
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
    the device. feats must have the queue's dtype and row shape, and N <= Q; queue, ptr and
    feats must not share memory. Serves the image/text feature queues ([Q, 256]) and the image-id queue ([Q]).
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


def sample_tokens(
    logits: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    top_k: int | torch.Tensor = 0,
    top_p: float | torch.Tensor = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one token per row of ``logits`` [B, V]: LongTensor [B] on logits' device.

    HF's sampling warpers fused: temperature, then top-k (ties with the k-th value kept), then
    top-p (a token is kept when the probability mass strictly above it is < p, so the token that
    crosses p stays; at least one token), then a draw from the renormalised rest -- without
    sorting the vocabulary and without a host sync. logits: fp32/fp16/bf16, any strides.
    Each of temperature / top_k / top_p is a Python scalar (validated: temperature >= 0,
    top_k >= 0, top_p in [0, 1]) or a [B] tensor of per-row values (not validated, that would
    sync: temperature <= 0 means greedy, top_k <= 0 or >= V and top_p >= 1 mean off).
    temperature == 0 is greedy: the first index of the row max, like torch.argmax. NaN logits
    count as -inf; a row with +inf logits draws uniformly among them; a row with no finite or
    +inf logit returns -1. Reproducible for a seeded ``generator`` of logits' device type.
    Reference (the spec): :func:`blipx.ops.reference.sample_tokens_ref`.
    """
    with torch.no_grad():
        if kernel_for("sample_tokens", logits.device):
            return torch.ops.blipx.sample_tokens.default(logits, *sampling_args(temperature, top_k, top_p), generator)
        return reference.sample_tokens_ref(logits, temperature, top_k, top_p, generator)


def beam_search_step(
    logits: torch.Tensor,
    beam_scores: torch.Tensor,
    sequences: torch.Tensor,
    num_beams: int,
    *,
    cur_len: torch.Tensor | int | None = None,
    eos_token_id: int | None = None,
    min_length: int = 0,
    repetition_penalty: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One fused beam-search step: returns (scores [B, 2K] fp32, tokens [B, 2K], source_beams [B, 2K]).

    logits [B*K, V] (fp32/fp16/bf16; rows b*K .. b*K+K-1 are batch row b's K beams);
    beam_scores fp32 [B*K] running scores; sequences int64 [B*K, T], of which the first
    ``cur_len`` columns (default T; a preallocated buffer works) are the tokens so far, prompt
    included. ``cur_len`` is read by the kernel on the device: pass an int64 tensor of one
    element on the logits' device (a decode loop's position, e.g. ``StaticKVCache.pos``), so no
    step needs a host value and one captured CUDA graph serves every step. A Python int is
    accepted for convenience and copied to the device (on a GPU, a host-to-device copy per call).
    On the CPU the value must lie in [0, T]; on a GPU it is not read on the host and is clamped.
    As HF's beam search: log_softmax in fp32, repetition penalty on each distinct
    token of sequences[:, :cur_len] (ids outside [0, V) ignored), ``eos_token_id`` (None: no
    EOS) banned while cur_len < min_length, plus the running score, then the top 2K of each batch
    row's K*V candidates in descending order (ties to the lower beam, then token). Never builds
    the [B, K*V] matrix; no host sync. source_beams are in [0, K) (HF's ``idx // V``).
    Reference: :func:`blipx.ops.reference.beam_search_step_ref`.
    """
    cur = reference.length_tensor(cur_len, logits.device)
    eos = -1 if eos_token_id is None else int(eos_token_id)
    with torch.no_grad():
        if kernel_for("beam_search_step", logits.device):
            return torch.ops.blipx.beam_search_step.default(
                logits, beam_scores, sequences, int(num_beams), cur, eos, int(min_length), float(repetition_penalty)
            )
        return reference.beam_search_step_ref(
            logits, beam_scores, sequences, num_beams, cur, eos, min_length, repetition_penalty
        )


# --- fused cross-attention ----------------------------------------------------------------------
from blipx.ops import _autograd  # noqa: E402,F401  (autograd formula of cross_attention_fwd)
from blipx.ops import dispatch  # noqa: E402

__all__ += ["cross_attention", "dispatch"]


def cross_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Text-to-image attention: ``softmax(q k^T * scale) v`` -> [B*G, H, Lq, D].

    q [B*G, H, Lq, D]; k, v [B, H, Lk, D] (one dtype: fp32, fp16, bf16; fp64 on the CPU). Query
    rows ``b*G .. b*G+G-1`` (beams / return sequences of image b; G = 1 in training) attend to
    K/V row b, so image K/V are never repeated. key_padding_mask: bool [B, Lk], True = ignore;
    a query whose keys are all masked gets zeros. scale defaults to ``D ** -0.5``.
    Differentiable in q, k and v (dk/dv summed over the G groups); the softmax runs in fp32.

    The backend is chosen per (device, dtype, head dim, shape bucket, grad or not) by
    :mod:`blipx.ops.dispatch`: blipx's fused kernel (blocked online softmax, never
    materialising [Lq, Lk]; its output is a transposed view of a [B*G, Lq, H, D] buffer, so
    merging heads needs no copy), its tensor-core kernel where built, or SDPA with the G groups
    folded into the query length -- whichever was fastest when first timed on this device
    (``BLIPX_CROSS_ATTENTION=blipx|sdpa|auto`` forces one). Results agree to rounding whichever
    runs. Reference (the spec): :func:`blipx.ops.reference.cross_attention_ref`.
    """
    return dispatch.cross_attention(q, k, v, key_padding_mask, scale)
