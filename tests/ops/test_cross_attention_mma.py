"""blipx::cross_attention_mma_fwd / _bwd, the tensor-core kernels (bf16/fp16, CUDA only), on a GPU.

The same accuracy bar as tests/ops/test_cross_attention.py (kernel error <= 2x the error of the
reference computed in the kernel's precision); gradients flow through the forward's registered
autograd formula (the tensor-core backward). The kernels' logic is tested without a GPU on the
SIMT emulator (tests/simt/test_mma.py); these cases need a CUDA device and are skipped elsewhere.
"""

from __future__ import annotations

import pytest
import torch

import blipx
from blipx.ops import _backend
from blipx.ops.reference import cross_attention_ref
from tests.ops.test_cross_attention import LOW, SHAPES, err, fwd_bwd, inputs, make_mask

HAS_OP = hasattr(torch.ops.blipx, "cross_attention_mma_fwd")
needs_op = pytest.mark.skipif(not HAS_OP, reason="this build of blipx._C has no cross_attention_mma_fwd")


def mma(q, k, v, mask=None, scale=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.ops.blipx.cross_attention_mma_fwd.default(q, k, v, mask, scale)[0]


OPS = ("cross_attention_mma_fwd", "cross_attention_mma_bwd")


def test_ops_are_declared_and_cuda_only():
    for op in OPS:
        assert op in _backend.OP_NAMES and op in _backend.CUDA_ONLY_OPS
        if HAS_OP:
            assert not blipx.ops.has_kernel(op, "cpu")


@needs_op
@pytest.mark.cuda
def test_kernels_are_compiled():
    for op in OPS:
        assert blipx.ops.has_kernel(op, "cuda")


@needs_op
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}G{}H{}Lq{}Lk{}D{}".format(*s))
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_matches_reference_forward_and_gradients(dtype, shape, masked):
    q, k, v = inputs(shape, dtype, "cuda")
    mask = make_mask(shape[0], shape[4], "cuda") if masked else None
    dout = torch.randn(q.shape, device="cuda")
    got = fwd_bwd(mma, q, k, v, mask, dout)
    truth = fwd_bwd(cross_attention_ref, q.float(), k.float(), v.float(), mask, dout)
    low = fwd_bwd(cross_attention_ref, q, k, v, mask, dout)
    for name, g_, t_, l_ in zip(("out", "dq", "dk", "dv"), got, truth, low):
        assert g_.dtype == dtype and torch.isfinite(g_).all(), name
        e, e_ref = err(g_, t_), err(l_, t_)
        assert e <= 2 * e_ref + 1e-4, f"{name}: kernel error {e:.3g} > 2 x reference error {e_ref:.3g}"


@needs_op
@pytest.mark.cuda
def test_same_outputs_as_the_fma_kernel_contract():
    # (out, lse) mean what cross_attention_fwd's mean: lse and the all-masked rows agree.
    q, k, v = inputs((3, 2, 2, 9, 33, 64), torch.bfloat16, "cuda", model_layout=True)
    mask = make_mask(3, 33, "cuda")
    out, lse = torch.ops.blipx.cross_attention_mma_fwd.default(q, k, v, mask, 0.125)
    out_f, lse_f = torch.ops.blipx.cross_attention_fwd.default(q, k, v, mask, 0.125)
    assert out.stride() == out_f.stride()
    assert torch.equal(torch.isneginf(lse), torch.isneginf(lse_f)) and (out[4:6] == 0).all()
    torch.testing.assert_close(lse, lse_f, atol=1e-3, rtol=1e-3)


@needs_op
@pytest.mark.cuda
def test_backward_is_interchangeable_with_the_fma_backward():
    q, k, v = inputs((2, 3, 2, 35, 197, 64), torch.bfloat16, "cuda")
    mask = make_mask(2, 197, "cuda")
    out, lse = torch.ops.blipx.cross_attention_mma_fwd.default(q, k, v, mask, 0.125)
    dout = torch.randn_like(out)
    args = (dout, q, k, v, mask, out, lse, 0.125)
    mma = torch.ops.blipx.cross_attention_mma_bwd.default(*args)
    fma = torch.ops.blipx.cross_attention_bwd.default(*args)
    for a, b in zip(mma, fma):
        assert err(a, b) <= 2e-2 * (1 + b.abs().max().item())


@needs_op
@pytest.mark.cuda
def test_opcheck():
    q, k, v = (x.requires_grad_(True) for x in inputs((2, 3, 2, 4, 6, 32), torch.bfloat16, "cuda"))
    for m in (None, make_mask(2, 6, "cuda")):
        torch.library.opcheck(torch.ops.blipx.cross_attention_mma_fwd.default, (q, k, v, m, 0.25))
    out, lse = torch.ops.blipx.cross_attention_mma_fwd.default(q, k, v, m, 0.25)
    args = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), m, out.detach(), lse)
    torch.library.opcheck(torch.ops.blipx.cross_attention_mma_bwd.default, (*args, 0.25))


@needs_op
@pytest.mark.cuda
def test_refuses_float32_naming_the_argument():
    q = torch.randn(1, 1, 4, 32, device="cuda")
    with pytest.raises(RuntimeError, match="blipx.cross_attention_mma: q must be float16 or bfloat16"):
        torch.ops.blipx.cross_attention_mma_fwd.default(q, q, q, None, 1.0)
