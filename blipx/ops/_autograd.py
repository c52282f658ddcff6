"""Autograd formulas of the compiled ops, registered with ``torch.library.register_autograd`` so
they hold in eager mode, under torch.compile and in opcheck alike."""

from __future__ import annotations

import torch

from blipx.ops._fake import CROSS_ATTENTION_OPS, _exists


def _register_cross_attention(fwd: str, bwd: str) -> None:
    """The backward of one cross-attention forward op (the FMA kernels', or the tensor-core
    kernels' of the same schema) is its own backward op."""
    bwd_op = getattr(torch.ops.blipx, bwd).default

    def setup(ctx, inputs, output):
        q, k, v, key_padding_mask, scale = inputs
        out, lse = output
        # The mask (bool, never differentiable, possibly None) is saved like the tensors so that
        # torch.compile's tracing of the backward sees it as an input, not a constant.
        ctx.save_for_backward(q, k, v, out, lse, key_padding_mask)
        ctx.scale = scale
        # lse is an auxiliary output for the backward; no gradient flows through it.
        ctx.mark_non_differentiable(lse)

    def backward(ctx, dout, dlse):
        q, k, v, out, lse, key_padding_mask = ctx.saved_tensors
        if dout is None:  # only lse was used downstream
            dout = torch.zeros_like(out)
        # dk/dv come back summed over the G query rows that share each K/V row.
        dq, dk, dv = bwd_op(dout, q, k, v, key_padding_mask, out, lse, ctx.scale)
        return dq, dk, dv, None, None

    torch.library.register_autograd(f"blipx::{fwd}", backward, setup_context=setup)


for _fwd, _bwd in CROSS_ATTENTION_OPS:
    # The tensor-core forward returns what cross_attention_fwd returns (out, lse), so without a
    # backward of its own the FMA backward is its gradient.
    _bwd = _bwd if _exists(_bwd) else "cross_attention_bwd"
    if _exists(_fwd) and _exists(_bwd):
        _register_cross_attention(_fwd, _bwd)
