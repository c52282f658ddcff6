"""Autograd formulas of the compiled ops, registered with ``torch.library.register_autograd`` so
they hold in eager mode, under torch.compile and in opcheck alike."""

from __future__ import annotations

import torch

from blipx.ops._fake import _exists


if _exists("cross_attention_fwd") and _exists("cross_attention_bwd"):

    def _cross_attention_setup(ctx, inputs, output):
        q, k, v, key_padding_mask, scale = inputs
        out, lse = output
        # The mask (bool, never differentiable, possibly None) is saved like the tensors so that
        # torch.compile's tracing of the backward sees it as an input, not a constant.
        ctx.save_for_backward(q, k, v, out, lse, key_padding_mask)
        ctx.scale = scale
        # lse is an auxiliary output for the backward; no gradient flows through it.
        ctx.mark_non_differentiable(lse)

    def _cross_attention_backward(ctx, dout, dlse):
        q, k, v, out, lse, key_padding_mask = ctx.saved_tensors
        if dout is None:  # only lse was used downstream
            dout = torch.zeros_like(out)
        # dk/dv come back summed over the G query rows that share each K/V row.
        dq, dk, dv = torch.ops.blipx.cross_attention_bwd.default(
            dout, q, k, v, key_padding_mask, out, lse, ctx.scale
        )
        return dq, dk, dv, None, None

    torch.library.register_autograd(
        "blipx::cross_attention_fwd", _cross_attention_backward, setup_context=_cross_attention_setup
    )
