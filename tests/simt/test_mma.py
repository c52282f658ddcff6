"""The tensor-core instructions of csrc/include/blipx/mma.cuh and the tensor-core cross-attention
forward and backward (csrc/include/blipx/cross_attention_mma.cuh), on the SIMT emulator.

First each instruction against a plain matrix product / load: mma.sync with fragments built by
the PTX layouts, ldmatrix (.trans) against the PTX ISA's lane -> element map (transcribed here a
second time, independently of tests/simt/simt_mma.cpp), the ldmatrix + mma data path of the
kernels against a matmul, and cp.async's group semantics (bytes land only at the wait_group that
retires them). Then the kernels against blipx.ops.reference.cross_attention_ref with the bound of
tests/ops/test_cross_attention.py: error <= 2x the low-precision reference's error (+1e-4).
No GPU is involved: these check the kernels' logic against the emulated instruction semantics.
"""

from __future__ import annotations

import math

import pytest
import torch

from blipx.ops.reference import cross_attention_ref
from tests.ops.test_cross_attention import err, inputs, make_mask
from tests.simt import backend
from tests.simt.build import SimtUnavailable

pytestmark = pytest.mark.simt
LOW = [torch.bfloat16, torch.float16]


@pytest.fixture(scope="module", autouse=True)
def _lib():
    try:
        backend.load()
    except SimtUnavailable as e:
        pytest.skip(f"SIMT emulator unavailable: {e}")


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16).to(torch.int64) & 0xFFFF


# ---- the instructions ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", LOW)
def test_mma_fragments_compute_a_times_b_plus_c(dtype):
    a = torch.randn(16, 16).to(dtype)
    b = torch.randn(16, 8).to(dtype)
    c = torch.randn(16, 8)
    d = torch.ops.blipx_simt.mma_fragments(a, b, c)
    want = (a.double() @ b.double() + c.double()).float()  # exact products, one rounding
    torch.testing.assert_close(d, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("trans", [False, True], ids=["ldmatrix", "ldmatrix.trans"])
def test_ldmatrix_distributes_rows_by_the_ptx_layout(trans):
    m = torch.randint(-(2**15), 2**15, (32, 8), dtype=torch.int16)
    got = torch.ops.blipx_simt.mma_ldmatrix(m, trans).to(torch.int64) & 0xFFFFFFFF
    u = bits(m)
    want = torch.empty(32, 4, dtype=torch.int64)
    for lane in range(32):
        for r in range(4):  # matrix r = rows 8r .. 8r+7 of m (lane j addressed row j)
            if trans:  # the transposed matrix's fragment: rows 2(l%4), 2(l%4)+1 of column l/4
                lo, hi = u[8 * r + 2 * (lane % 4), lane // 4], u[8 * r + 2 * (lane % 4) + 1, lane // 4]
            else:  # row l/4, columns 2(l%4), 2(l%4)+1
                lo, hi = u[8 * r + lane // 4, 2 * (lane % 4)], u[8 * r + lane // 4, 2 * (lane % 4) + 1]
            want[lane, r] = lo | (hi << 16)
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("b_is_kn", [False, True], ids=["b_nk", "b_kn_trans"])
@pytest.mark.parametrize("k,n", [(16, 16), (48, 64)])
def test_ldmatrix_mma_data_path_is_a_matmul(dtype, b_is_kn, k, n):
    a = torch.randn(16, k).to(dtype)
    b = torch.randn(k, n).to(dtype)
    d = torch.ops.blipx_simt.mma_gemm(a, b.contiguous() if b_is_kn else b.t().contiguous(), b_is_kn)
    want = a.double() @ b.double()
    assert err(d, want) <= 1e-5 * (1 + want.abs().max().item())


def test_cp_async_lands_only_at_the_wait_that_retires_its_group():
    src = torch.randint(-(2**31), 2**31 - 1, (12,), dtype=torch.int32)
    out = torch.ops.blipx_simt.mma_cp_async(src).view(4, 3, 4)
    pattern = torch.full((4,), 0xA5A5A5A5 - 2**32, dtype=torch.int32)
    zeros = torch.zeros(4, dtype=torch.int32)
    partial = torch.cat([src[4:6], zeros[:2]])  # src-size 8 of cp-size 16: the rest zero-filled
    want = [
        [pattern, pattern, pattern],  # issued, not yet waited for
        [src[0:4], pattern, pattern],  # wait_group 1: the older of two groups
        [src[0:4], partial, pattern],  # wait_group 0: both groups; the uncommitted copy is in none
        [src[0:4], partial, zeros],  # committed and waited: zero-fill (src-size 0)
    ]
    for k, snap in enumerate(want):
        for slot, w in enumerate(snap):
            assert torch.equal(out[k, slot], w), (k, slot, out[k, slot], w)


MMA_ERRORS = {
    "ldmatrix_from_global": "ldmatrix: lane 0 passes an address",
    "ldmatrix_misaligned": "not a 16-byte aligned row of this kernel's shared memory",
    "mma_divergent": "mma.sync.m16n8k16",  # half a warp at the collective: exit / wait reported
    "mma_partial_warp": "the mask names lanes that do not exist (this warp has 16 threads)",
    "cp_async_to_global": "is not 16-byte aligned shared memory of this kernel",
}


@pytest.mark.parametrize("case", sorted(MMA_ERRORS))
def test_misuse_is_reported_with_the_thread(case):
    msg = torch.ops.blipx_simt.mma_errors(case)
    assert MMA_ERRORS[case] in msg, msg
    assert "simt: kernel " in msg and "thread (" in msg, msg


# ---- the tensor-core forward ----------------------------------------------------------------------


def mma_fwd(q, k, v, mask, scale):
    return backend.call("cross_attention_mma_fwd", q, k, v, mask, scale)


def check_forward(q, k, v, mask, scale=None):
    """out within 2x the low-precision reference's error of the fp32 reference; lse against the
    fp64 log-sum-exp of the scaled scores; all-masked rows zero with lse = -inf."""
    d = q.shape[-1]
    scale = d**-0.5 if scale is None else scale
    out, lse = mma_fwd(q, k, v, mask, scale)
    assert out.dtype == q.dtype and out.shape == q.shape and lse.dtype == torch.float32
    assert out.transpose(1, 2).is_contiguous()  # the [B*G, Lq, H, D] layout of the other kernels
    truth = cross_attention_ref(q.float(), k.float(), v.float(), key_padding_mask=mask, scale=scale)
    low = cross_attention_ref(q, k, v, key_padding_mask=mask, scale=scale)
    e, e_ref = err(out, truth), err(low, truth)
    assert torch.isfinite(out).all()
    assert e <= 2 * e_ref + 1e-4, f"out: kernel error {e:.3g} > 2 x reference error {e_ref:.3g}"
    g = q.shape[0] // k.shape[0]
    s = q.double() @ k.double().repeat_interleave(g, 0).transpose(-1, -2) * scale
    if mask is not None:
        s = s.masked_fill(mask.repeat_interleave(g, 0)[:, None, None, :], -math.inf)
    want = s.logsumexp(-1)
    dead = torch.isneginf(want)
    assert torch.equal(torch.isneginf(lse), dead)
    assert (out[dead[..., None].expand_as(out)] == 0).all()
    torch.testing.assert_close(lse[~dead].double(), want[~dead], atol=2e-4, rtol=1e-4)
    return out, lse


# (B, G, H, Lq, Lk, D): each exercises a path of the kernel, kept small for the emulator.
SHAPES = [
    (1, 1, 1, 35, 77, 64),  # training-like: 64-row CTA, 3 of 4 row warps busy, 2 key tiles
    (2, 3, 1, 1, 45, 80),  # decoding: 3 beams x Lq 1 -> the 4 warps split the keys
    (3, 2, 1, 9, 33, 32),  # groups of 9 rows, mask with a one-key and an all-masked image
    (1, 2, 1, 40, 70, 96),  # 80 rows: two row blocks, the second with one busy warp
    (2, 1, 2, 5, 70, 128),  # > 48 KB of shared memory (opt-in), key split
]
MASKED = {(3, 2, 1, 9, 33, 32), (2, 3, 1, 1, 45, 80)}


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}G{}H{}Lq{}Lk{}D{}".format(*s))
def test_mma_forward_matches_reference(dtype, shape):
    q, k, v = inputs(shape, dtype, "cpu")
    mask = make_mask(shape[0], shape[4], "cpu") if shape in MASKED else None
    check_forward(q, k, v, mask)


def test_mma_forward_all_masked_image_and_custom_scale():
    q, k, v = inputs((3, 1, 1, 20, 19, 64), torch.bfloat16, "cpu")
    mask = make_mask(3, 19, "cpu")
    out, lse = check_forward(q, k, v, mask, scale=0.37)
    assert (out[2] == 0).all() and torch.isneginf(lse[2]).all() and torch.isfinite(lse[:2]).all()


@pytest.mark.parametrize("d", [48, 36], ids=["D48-zero-chunks", "D36-padded-copy"])
def test_mma_forward_head_dims_between_instantiations(d):
    # 48: the D = 64 kernel with the two top 16-byte chunks zero-filled; 36 (not a multiple of 8):
    # the entry point's zero-padded copy.
    q, k, v = inputs((2, 2, 1, 3, 21, d), torch.float16, "cpu")
    check_forward(q, k, v, make_mask(2, 21, "cpu"))


def test_mma_forward_strided_inputs():
    # The models' split_heads views (non-contiguous, 16-byte aligned rows) run copy-free; a view
    # offset by one element is not 16-byte aligned and gets the aligned copy.
    shape = (2, 2, 2, 7, 33, 64)
    q, k, v = inputs(shape, torch.bfloat16, "cpu", model_layout=True)
    assert not q.is_contiguous()
    base = torch.randn(2, 2, 33, 65).to(torch.bfloat16)
    v = base[..., 1:]
    mask = make_mask(2, 33, "cpu").t().contiguous().t()
    check_forward(q, k, v, mask)


def test_mma_forward_pairs_with_the_fma_backward():
    # cross_attention_mma_fwd's gradient is cross_attention_bwd's: its (out, lse) must be what
    # that kernel expects. Both emulated; gradients within the forward tests' bound.
    shape = (2, 2, 1, 6, 40, 32)
    q, k, v = inputs(shape, torch.bfloat16, "cpu")
    mask = make_mask(2, 40, "cpu")
    scale = 32**-0.5
    out, lse = mma_fwd(q, k, v, mask, scale)
    dout = torch.randn(q.shape).to(q.dtype)
    got = backend.call("cross_attention_bwd", dout, q, k, v, mask, out, lse, scale)

    def grads(*xs):
        xs = [x.detach().clone().requires_grad_(True) for x in xs]
        o = cross_attention_ref(*xs, key_padding_mask=mask, scale=scale)
        o.backward(dout.to(o.dtype))
        return [x.grad for x in xs]

    truth = grads(q.float(), k.float(), v.float())
    low = grads(q, k, v)
    for name, g_, t_, l_ in zip(("dq", "dk", "dv"), got, truth, low):
        e, e_ref = err(g_, t_), err(l_, t_)
        assert e <= 2 * e_ref + 1e-4, f"{name}: error {e:.3g} > 2 x reference error {e_ref:.3g}"


def reference_grads(q, k, v, mask, scale, dout):
    """(truth, low): the reference's gradients in fp32 and in the inputs' precision."""

    def grads(*xs):
        xs = [x.detach().clone().requires_grad_(True) for x in xs]
        o = cross_attention_ref(*xs, key_padding_mask=mask, scale=scale)
        o.backward(dout.to(o.dtype))
        return [x.grad for x in xs]

    return grads(q.float(), k.float(), v.float()), grads(q, k, v)


def check_backward(q, k, v, mask, scale=None):
    """dq, dk, dv of the tensor-core backward (given the tensor-core forward's out and lse) within
    2x the low-precision reference's error; zero where a key is masked or a row has no key."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out, lse = mma_fwd(q, k, v, mask, scale)
    dout = torch.randn(q.shape).to(q.dtype)
    got = backend.call("cross_attention_mma_bwd", dout, q, k, v, mask, out, lse, scale)
    truth, low = reference_grads(q, k, v, mask, scale, dout)
    for name, g_, t_, l_ in zip(("dq", "dk", "dv"), got, truth, low):
        assert g_.dtype == q.dtype and g_.shape == t_.shape and torch.isfinite(g_).all(), name
        e, e_ref = err(g_, t_), err(l_, t_)
        assert e <= 2 * e_ref + 1e-4, f"{name}: kernel error {e:.3g} > 2 x reference error {e_ref:.3g}"
    dq, dk, dv = got
    assert dq.transpose(1, 2).is_contiguous() and dk.transpose(1, 2).is_contiguous()
    if mask is not None:
        masked = mask[:, None, :, None].expand_as(dk)
        assert (dk[masked] == 0).all() and (dv[masked] == 0).all()
        g = q.shape[0] // k.shape[0]
        dead = mask.all(1).repeat_interleave(g)  # query rows of an image with every key masked
        assert (dq[dead] == 0).all()
    return got


BWD_SHAPES = [
    (1, 1, 1, 35, 77, 64),  # training-like: 35 rows in one row tile of 64 (dq) / two of 32 (dk, dv)
    (2, 3, 1, 1, 45, 80),  # 3 groups of one row: dk/dv summed over the groups in one CTA
    (3, 2, 1, 9, 33, 32),  # a one-key and an all-masked image
    (1, 2, 1, 40, 70, 96),  # 80 rows: two dq row blocks, three dk/dv row tiles
    (2, 1, 2, 5, 130, 128),  # three dk/dv key blocks, the last one partial
]


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", BWD_SHAPES, ids=lambda s: "B{}G{}H{}Lq{}Lk{}D{}".format(*s))
def test_mma_backward_matches_reference(dtype, shape):
    q, k, v = inputs(shape, dtype, "cpu")
    check_backward(q, k, v, make_mask(shape[0], shape[4], "cpu") if shape[0] > 1 else None)


def test_mma_backward_strided_padded_and_custom_scale():
    # D = 36: the aligned, zero-padded copies of q, k, v and dout; split_heads views for q and k.
    q, k, v = inputs((3, 2, 2, 6, 29, 36), torch.bfloat16, "cpu", model_layout=True)
    check_backward(q, k, v, make_mask(3, 29, "cpu"), scale=0.29)


def test_mma_backward_is_interchangeable_with_the_fma_backward():
    shape = (2, 3, 1, 4, 50, 64)
    q, k, v = inputs(shape, torch.float16, "cpu")
    mask = make_mask(2, 50, "cpu")
    out, lse = mma_fwd(q, k, v, mask, 0.125)
    dout = torch.randn(q.shape).to(q.dtype)
    mma = backend.call("cross_attention_mma_bwd", dout, q, k, v, mask, out, lse, 0.125)
    fma = backend.call("cross_attention_bwd", dout, q, k, v, mask, out, lse, 0.125)
    truth, _ = reference_grads(q, k, v, mask, 0.125, dout)
    for name, a, b, t_ in zip(("dq", "dk", "dv"), mma, fma, truth):
        # Both kernels land within a few fp16 ulps of the fp32 gradients (and so of each other).
        scale = t_.abs().max().item()
        assert err(a, t_) <= 4e-3 * scale and err(b, t_) <= 4e-3 * scale, name


def test_mma_forward_refuses_float32():
    q = torch.randn(1, 1, 4, 32)
    with pytest.raises(RuntimeError, match="blipx.cross_attention_mma: q must be float16 or bfloat16"):
        mma_fwd(q, q, q, None, 1.0)


# The shapes of tests/ops/test_cross_attention.py (Lk up to 901, D up to 128), all masked.
SWEEP = [
    (2, 1, 2, 35, 577, 64),
    (2, 3, 2, 1, 901, 80),
    (1, 5, 2, 64, 197, 32),
    (3, 3, 1, 35, 17, 96),
    (2, 5, 2, 1, 1, 128),
]


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", SWEEP, ids=lambda s: "B{}G{}H{}Lq{}Lk{}D{}".format(*s))
def test_mma_forward_sweep(dtype, shape):
    q, k, v = inputs(shape, dtype, "cpu")
    check_forward(q, k, v, make_mask(shape[0], shape[4], "cpu"))
