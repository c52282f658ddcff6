"""Pure-PyTorch reference twins of every blipx op: the specification.

Kernels are tested against these, benchmarks use them as the baseline, and
``BLIPX_USE_KERNELS=0`` makes the library run them instead of the compiled kernels. They favour
obviously-right over fast, but stay host-sync-free like the kernels they specify.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def momentum_update_ref(ema_params: Sequence[torch.Tensor], params: Sequence[torch.Tensor], momentum: float) -> None:
    """In place, for every pair: ``ema = momentum * ema + (1 - momentum) * param``.

    Computed in float32 and rounded once to the EMA's dtype (fp32, fp16 or bf16; an fp32 EMA
    may track fp16/bf16 params). Shapes of each pair must match.
    """
    m = float(momentum)
    with torch.no_grad():
        for e, p in zip(ema_params, params, strict=True):
            e.copy_((e.float() * m + p.float() * (1.0 - m)).to(e.dtype))


def enqueue_ref(queue: torch.Tensor, ptr: torch.Tensor, feats: torch.Tensor) -> None:
    """Ring write of a feature (or id) queue with a device-side pointer.

    queue: [Q, ...]; ptr: int64, one element, on queue's device; feats: [N, ...] with N <= Q.
    Rows ``(ptr + i) % Q`` receive ``feats[i]``; then ``ptr = (ptr + N) % Q``. Unlike the
    official ALBEF/BLIP code, Q need not be a multiple of N, and the pointer is never read on
    the host.
    """
    q = queue.shape[0]
    n = feats.shape[0]
    with torch.no_grad():
        start = torch.remainder(ptr.reshape(1), q)
        idx = torch.remainder(start + torch.arange(n, device=ptr.device, dtype=torch.long), q)
        queue.index_copy_(0, idx, feats)
        ptr.copy_(torch.remainder(start + n, q).reshape(ptr.shape))


def cross_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Text-to-image cross-attention where G query rows share one K/V row.

    q: [B*G, H, Lq, D]; k, v: [B, H, Lk, D]; query rows b*G .. b*G+G-1 attend to K/V row b
    (G beams or return sequences of one image; G = 1 in training). key_padding_mask: bool
    [B, Lk], True marks keys to ignore (as nn.MultiheadAttention). scale defaults to D**-0.5.
    Returns [B*G, H, Lq, D]; a query whose keys are all masked gets zeros. Softmax runs in fp32.
    """
    bg, h, lq, d = q.shape
    b, lk = k.shape[0], k.shape[2]
    if b == 0 or bg % b != 0:
        raise ValueError(f"cross_attention: q rows ({bg}) must be a positive multiple of k rows ({b})")
    g = bg // b
    scale = d**-0.5 if scale is None else scale
    qg = q.reshape(b, g, h, lq, d).transpose(1, 2).reshape(b, h, g * lq, d)  # [B, H, G*Lq, D]
    scores = torch.matmul(qg, k.transpose(-1, -2)).float() * scale  # [B, H, G*Lq, Lk]
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :].to(torch.bool), float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0).to(v.dtype)
    out = torch.matmul(probs, v)  # [B, H, G*Lq, D]
    return out.reshape(b, h, g, lq, d).transpose(1, 2).reshape(bg, h, lq, d)


def sample_hard_negatives_ref(
    sim: torch.Tensor,
    positive_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One hard negative per row: column j of row i with probability ``softmax_j(sim[i, j])``
    restricted to the candidates (not positive, not NaN). Returns int64 [B] on sim's device.

    sim: [B, N] float (fp32/fp16/bf16/fp64), any strides. positive_mask: bool [B, N], True marks
    a positive (never drawn); None means the diagonal of a square sim. Special values:
    NaN columns are excluded; -inf columns have probability 0; if a row has valid +inf columns
    it draws uniformly among them (the limit of the softmax); a row whose candidates all have
    probability 0 (none left, or all -inf) gives -1. Gumbel-max in fp32 (fp64 for fp64 input):
    ``argmax(sim - log(E))`` with ``E ~ Exp(1)``, no host sync.
    """
    if sim.dim() != 2:
        raise ValueError(f"sample_hard_negatives: sim must be 2-D [B, N], got shape {tuple(sim.shape)}")
    b, n = sim.shape
    s = sim.double() if sim.dtype == torch.float64 else sim.float()
    if positive_mask is None:
        if b != n:
            raise ValueError(
                f"sample_hard_negatives: sim has shape {tuple(sim.shape)}; positive_mask is required when sim is not square"
            )
        excluded = torch.eye(b, dtype=torch.bool, device=sim.device)
    else:
        excluded = positive_mask.to(torch.bool)
    excluded = excluded | torch.isnan(s)
    pos_inf = (s == float("inf")) & ~excluded
    row_has_inf = pos_inf.any(dim=1, keepdim=True)
    # Rows with +inf candidates race only among those (equal logits 0); other rows use sim.
    logits = torch.where(row_has_inf, torch.where(pos_inf, 0.0, float("-inf")), s.masked_fill(excluded, float("-inf")))
    valid = logits > float("-inf")
    # A fresh contiguous buffer (not empty_like, which keeps a transposed layout), so the noise
    # of element (i, j) does not depend on sim's strides.
    noise = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device).exponential_(generator=generator)
    key = (logits - noise.log()).masked_fill(~valid, float("-inf"))
    idx = key.argmax(dim=1) if n > 0 else torch.zeros(b, dtype=torch.long, device=sim.device)
    return torch.where(valid.any(dim=1), idx, torch.full_like(idx, -1))
