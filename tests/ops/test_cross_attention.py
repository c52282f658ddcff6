"""blipx.ops.cross_attention (forward and backward) against fp32/fp64 references, on every device.

Accuracy follows the FlashAttention test practice: the kernel's error against a high-precision
reference must be at most twice the error of the same reference computed in the kernel's
precision (plus a tiny absolute floor for cases where that error is ~0).
"""

from __future__ import annotations

import pytest
import torch

import blipx
from blipx.layers import attention as attn_mod
from blipx.ops.reference import cross_attention_ref
from tests.conftest import DEVICES, KERNEL_DEVICES, sized
from tests.simt.backend import SIMT

LOW = (torch.bfloat16, torch.float16)


@pytest.fixture(autouse=True)
def _blipx_backend():
    """These are tests of blipx's own kernels (on the CPU, on CUDA and emulated): the dispatch
    must not hand the calls to SDPA (tests/ops/test_dispatch.py tests the choice itself)."""
    from blipx.ops import dispatch

    before = dispatch.mode()
    dispatch.set_backend("blipx")
    yield
    dispatch.set_backend(before)
# (B, G, H, Lq, Lk, D): every Lk in {1, 17, 197, 577, 901}, Lq in {1, 35, 64}, G in {1, 3, 5}
# and D in {32, 64, 80, 96, 128} appears at least once; small B*H keeps the CPU run short.
SHAPES = [
    (2, 1, 2, 35, 577, 64),  # BLIP training (G = 1)
    (2, 3, 2, 1, 901, 80),  # decode: 3 beams per image, one query
    (1, 5, 2, 64, 197, 32),
    (3, 3, 1, 35, 17, 96),  # with a mask: a random, a one-key and an all-masked image
    (2, 5, 2, 1, 1, 128),  # a single key
    (1, 1, 1, 64, 577, 128),
]


def ref64(q, k, v, mask=None, scale=None):
    """Independent fp64 formulation: K/V repeated per group, explicit masking."""
    bg, h, lq, d = q.shape
    g = bg // k.shape[0]
    scale = d**-0.5 if scale is None else scale
    k, v = (t.double().repeat_interleave(g, 0) for t in (k, v))
    s = q.double() @ k.transpose(-1, -2) * scale
    if mask is not None:
        s = s.masked_fill(mask.repeat_interleave(g, 0)[:, None, None, :], float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return p @ v


def make_mask(b, lk, device):
    """Image 0: ~30% of keys masked (at least one left); image 1: one key left; image 2: every
    key masked; further images: ~30% masked."""
    m = torch.rand(b, lk, device=device) < 0.3
    m[0, torch.randint(lk, ()).item()] = False
    if b > 1:
        m[1] = True
        m[1, torch.randint(lk, ()).item()] = False
    if b > 2:
        m[2] = True
    return m


def inputs(shape, dtype, device, model_layout=False):
    b, g, h, lq, lk, d = shape

    def t(n, length):
        if model_layout:  # the split_heads view of a [N, L, H*D] projection: non-contiguous
            return torch.randn(n, length, h * d, device=device).view(n, length, h, d).transpose(1, 2).to(dtype)
        return torch.randn(n, h, length, d, device=device, dtype=dtype)

    return t(b * g, lq), t(b, lk), t(b, lk)


def fwd_bwd(fn, q, k, v, mask, dout):
    q, k, v = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    out = fn(q, k, v, mask)
    out.backward(dout.to(out.dtype))
    return [out.detach()] + [x.grad for x in (q, k, v)]


def err(a, b):
    return (a.double() - b.double()).abs().max().item()


def check_against_references(q, k, v, mask):
    """Forward and every gradient: kernel error <= 2x the low-precision reference's error."""
    dout = torch.randn(q.shape, device=q.device)
    got = fwd_bwd(blipx.ops.cross_attention, q, k, v, mask, dout)
    if q.dtype in LOW:
        up = [x.float() for x in (q, k, v)]
        truth = fwd_bwd(cross_attention_ref, *up, mask, dout)
        low = fwd_bwd(cross_attention_ref, q, k, v, mask, dout)
        floor = 1e-4
    else:  # fp32 kernel: the fp32 reference is the "low precision", fp64 the truth
        truth = fwd_bwd(ref64, *(x.double() for x in (q, k, v)), mask, dout)
        low = fwd_bwd(cross_attention_ref, q, k, v, mask, dout)
        # A few fp32 ulps of the O(10) products dP and delta: with Lk = 1 the exact dq is 0 and
        # the reference gets exactly 0 (softmax of one element), the kernel p * (dP - delta) ~ ulps.
        floor = 1e-5
    for name, g_, t_, l_ in zip(("out", "dq", "dk", "dv"), got, truth, low):
        assert g_.shape == t_.shape and g_.dtype == q.dtype, name
        assert torch.isfinite(g_).all(), f"{name} has non-finite values"
        e, e_ref = err(g_, t_), err(l_, t_)
        assert e <= 2 * e_ref + floor, f"{name}: kernel error {e:.3g} > 2 x reference error {e_ref:.3g}"


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_is_compiled(device):
    for op in ("cross_attention_fwd", "cross_attention_bwd"):
        assert blipx.ops.has_kernel(op, device), f"blipx was built without the {device} kernel of {op}"


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}G{}H{}Lq{}Lk{}D{}".format(*s))
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_matches_reference(device, dtype, shape, masked):
    q, k, v = inputs(shape, dtype, device)
    mask = make_mask(shape[0], shape[4], device) if masked else None
    check_against_references(q, k, v, mask)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_contiguous_inputs(device, dtype):
    shape = (2, 3, 2, 7, 33, 64)
    q, k, v = inputs(shape, dtype, device, model_layout=True)
    assert not q.is_contiguous() and not k.is_contiguous()
    # A non-unit stride on D as well (the kernels copy that one).
    v = v.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert v.stride(-1) != 1
    mask = make_mask(shape[0], shape[4], device)[:, :].t().contiguous().t()  # a strided mask
    check_against_references(q, k, v, mask)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_fully_masked_rows_give_zero_output_and_gradients(device):
    q, k, v = inputs((2, 2, 2, 4, 9, 32), torch.float32, device)
    mask = torch.zeros(2, 9, dtype=torch.bool, device=device)
    mask[1] = True
    out, dq, dk, dv = fwd_bwd(blipx.ops.cross_attention, q, k, v, mask, torch.randn(q.shape, device=device))
    assert (out[2:] == 0).all() and (dq[2:] == 0).all() and (dk[1] == 0).all() and (dv[1] == 0).all()
    assert (out[:2] != 0).any() and (dk[0] != 0).any()
    _, lse = torch.ops.blipx.cross_attention_fwd.default(q, k, v, mask, 32**-0.5)
    assert torch.isneginf(lse[2:]).all() and torch.isfinite(lse[:2]).all()


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_lse_and_custom_scale(device):
    q, k, v = inputs((2, 3, 2, 5, 40, 64), torch.float32, device)
    scale = 0.37
    out, lse = torch.ops.blipx.cross_attention_fwd.default(q, k, v, None, scale)
    s = q.double() @ k.double().repeat_interleave(3, 0).transpose(-1, -2) * scale
    torch.testing.assert_close(lse.double(), s.logsumexp(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.double(), ref64(q, k, v, None, scale), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_output_is_head_interleaved_view(device):
    """merge_heads (transpose + reshape) of the output is a view, not a copy."""
    q, k, v = inputs((1, 2, 3, 5, 7, 32), torch.float32, device)
    out = blipx.ops.cross_attention(q, k, v)
    assert out.transpose(1, 2).is_contiguous()


def test_gradcheck_float64_cpu():
    q, k, v = (x.requires_grad_(True) for x in inputs((2, 3, 2, 3, 5, 8), torch.float64, "cpu"))
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 1:] = True  # one key left for image 0
    mask[1, 2] = True
    for m in (None, mask):
        assert torch.autograd.gradcheck(lambda q, k, v: blipx.ops.cross_attention(q, k, v, m), (q, k, v))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    q, k, v = (x.requires_grad_(True) for x in inputs((2, 3, 2, 4, 6, 32), torch.float32, device))
    mask = make_mask(2, 6, device)
    for m in (None, mask):
        torch.library.opcheck(torch.ops.blipx.cross_attention_fwd.default, (q, k, v, m, 0.25))
    out, lse = torch.ops.blipx.cross_attention_fwd.default(q, k, v, mask, 0.25)
    args = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), mask, out.detach(), lse)
    torch.library.opcheck(torch.ops.blipx.cross_attention_bwd.default, (*args, 0.25))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()

    def step(q, k, v, mask):
        return (attn_mod.cross_attention(q, k, v, key_padding_mask=mask) * 2).sum()

    q, k, v = inputs((2, 3, 2, 5, 19, 64), torch.float32, device)
    mask = make_mask(2, 19, device)
    compiled = torch.compile(step, fullgraph=True)  # inductor: fake kernels + autograd formula traced
    grads = []
    for fn in (step, compiled):
        leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
        loss = fn(*leaves, mask)
        loss.backward()
        grads.append([loss.detach()] + [x.grad for x in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("g", [1, 3])
def test_with_probs_equals_the_reference_row_by_row_and_its_probs_carry_the_gradient(g):
    """What Grad-CAM reads: the output of cross_attention_ref, the probabilities of each query
    row (a fully masked image -> 0) and, through a hook on them, d loss / d probs."""
    from blipx.ops.reference import cross_attention_with_probs

    q, k, v = inputs((3, g, 2, 4, 7, 8), torch.float32, "cpu")
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[1, :5] = True
    mask[2] = True
    q.requires_grad_(True)
    out, probs = cross_attention_with_probs(q, k, v, key_padding_mask=mask)
    torch.testing.assert_close(out, cross_attention_ref(q, k, v, key_padding_mask=mask))
    kk, vv = k.repeat_interleave(g, 0), v.repeat_interleave(g, 0)  # row b*G+i reads image b
    want = torch.softmax((q @ kk.transpose(-1, -2) * 8**-0.5).masked_fill(
        mask.repeat_interleave(g, 0)[:, None, None], float("-inf")), -1).nan_to_num(0.0)
    torch.testing.assert_close(probs, want.detach())
    seen = []
    probs.register_hook(seen.append)
    dout = torch.randn_like(out)
    (out * dout).sum().backward()
    torch.testing.assert_close(seen[0], (dout @ vv.transpose(-1, -2)).detach())


@pytest.mark.parametrize("device", DEVICES)
def test_layer_function_runs_the_op_and_switch_selects_reference(device):
    q, k, v = inputs((1, 3, 2, 2, 5, 32), torch.float32, device)
    calls = []
    real = torch.ops.blipx.cross_attention_fwd.default

    def count(*args):
        calls.append(1)
        return real(*args)

    from unittest import mock

    with mock.patch.object(torch.ops.blipx.cross_attention_fwd, "default", count):
        out = attn_mod.cross_attention(q, k, v)
        assert len(calls) == 1
        blipx.ops.set_use_kernels(False)
        try:
            ref = attn_mod.cross_attention(q, k, v)
        finally:
            blipx.ops.set_use_kernels(True)
        assert len(calls) == 1
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "make_args, match",
    [
        (lambda: (torch.randn(2, 4, 8), torch.randn(2, 2, 4, 8), torch.randn(2, 2, 4, 8), None), "q must be 4-D"),
        (lambda: (torch.randn(2, 2, 4, 8), torch.randn(2, 4, 8), torch.randn(2, 2, 4, 8), None), "k must be 4-D"),
        (lambda: (torch.randn(3, 2, 4, 8), torch.randn(2, 2, 4, 8), torch.randn(2, 2, 4, 8), None), "q rows"),
        (lambda: (torch.randn(2, 3, 4, 8), torch.randn(2, 2, 4, 8), torch.randn(2, 2, 4, 8), None), "heads"),
        (lambda: (torch.randn(2, 2, 4, 16), torch.randn(2, 2, 4, 8), torch.randn(2, 2, 4, 8), None), "head dim"),
        (lambda: (torch.randn(2, 2, 4, 8), torch.randn(2, 2, 4, 8), torch.randn(2, 2, 5, 8), None), "v has shape"),
        (lambda: (torch.randn(2, 2, 4, 8), torch.randn(2, 2, 4, 8).half(), torch.randn(2, 2, 4, 8), None), "k dtype"),
        (lambda: (torch.ones(2, 2, 4, 8, dtype=torch.int32),) * 3 + (None,), "q must be float32"),
        (lambda: (torch.randn(2, 2, 4, 8), torch.randn(2, 2, 0, 8), torch.randn(2, 2, 0, 8), None), "Lk >= 1"),
        (lambda: (torch.randn(2, 2, 4, 8), torch.randn(2, 2, 4, 8), torch.randn(2, 2, 4, 8), torch.ones(2, 4)),
         "key_padding_mask must be bool"),
        (lambda: (torch.randn(2, 2, 4, 8), torch.randn(2, 2, 4, 8), torch.randn(2, 2, 4, 8),
                  torch.ones(2, 5, dtype=torch.bool)), r"key_padding_mask must have shape \[B, Lk\]"),
    ],
)
def test_bad_arguments_raise_clear_errors(make_args, match):
    q, k, v, mask = make_args()
    with pytest.raises(RuntimeError, match="blipx.cross_attention: .*" + match):
        torch.ops.blipx.cross_attention_fwd.default(q, k, v, mask, 1.0)


def test_bad_backward_arguments_raise_clear_errors():
    q, k, v = inputs((1, 1, 2, 3, 4, 8), torch.float32, "cpu")
    out, lse = torch.ops.blipx.cross_attention_fwd.default(q, k, v, None, 1.0)
    with pytest.raises(RuntimeError, match="blipx.cross_attention_bwd: lse must be Float"):
        torch.ops.blipx.cross_attention_bwd.default(out, q, k, v, None, out, lse.half(), 1.0)
    with pytest.raises(RuntimeError, match="blipx.cross_attention_bwd: dout has shape"):
        torch.ops.blipx.cross_attention_bwd.default(out[:, :1], q, k, v, None, out, lse, 1.0)


# The CUDA entry point's own limits; on the emulator they come from the same code.
CUDA_AND_SIMT = [pytest.param("cuda", marks=pytest.mark.cuda), pytest.param(SIMT, id="simt", marks=pytest.mark.simt)]


@pytest.mark.parametrize("device", CUDA_AND_SIMT)
def test_cuda_rejects_float64_and_large_head_dim(device):
    q = torch.randn(1, 1, 2, 8, device=device, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="blipx.cross_attention: q must be float32"):
        torch.ops.blipx.cross_attention_fwd.default(q, q, q, None, 1.0)
    q = torch.randn(1, 1, 2, 160, device=device)
    with pytest.raises(RuntimeError, match="blipx.cross_attention: .*head dim"):
        torch.ops.blipx.cross_attention_fwd.default(q, q, q, None, 1.0)


@pytest.mark.parametrize("device", CUDA_AND_SIMT)
def test_cuda_decode_shape_and_odd_head_dim(device):
    """32 images x 3 beams, Lq = 1, at the benchmark's K/V length; D = 48 runs the padded path."""
    for shape in [sized(device, (32, 3, 12, 1, 577, 64), (3, 3, 2, 1, 577, 64)), (2, 2, 2, 9, 100, 48)]:
        q, k, v = inputs(shape, torch.bfloat16, device)
        check_against_references(q, k, v, make_mask(shape[0], shape[4], device))
