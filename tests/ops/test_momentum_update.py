"""blipx.ops.momentum_update_ against its reference twin, on every device with a kernel."""

import pytest
import torch

import blipx
from blipx.ops.reference import momentum_update_ref
from tests.conftest import DEVICES, KERNEL_DEVICES

DTYPE_PAIRS = [  # (ema dtype, param dtype)
    (torch.float32, torch.float32),
    (torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.float16),
    (torch.float32, torch.bfloat16),
    (torch.float32, torch.float16),
]
# One rounding of an fp32 result to the EMA dtype: kernel and reference may differ by one ulp
# where FMA contraction changes the last fp32 bit before rounding.
TOL = {torch.float32: dict(rtol=1e-6, atol=1e-6), torch.bfloat16: dict(rtol=8e-3, atol=1e-5),
       torch.float16: dict(rtol=1e-3, atol=1e-5)}


def make(shapes, device, ema_dtype, param_dtype):
    ema = [torch.randn(s, device=device).to(ema_dtype) for s in shapes]
    par = [torch.randn(s, device=device).to(param_dtype) for s in shapes]
    return ema, par


def check_against_reference(ema, par, m):
    expect = [e.clone() for e in ema]
    momentum_update_ref(expect, par, m)
    blipx.ops.momentum_update_(ema, par, m)
    for i, (got, want) in enumerate(zip(ema, expect)):
        torch.testing.assert_close(got, want, **TOL[want.dtype], msg=lambda s: f"tensor {i}: {s}")


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_is_compiled(device):
    assert blipx.ops.has_kernel("momentum_update_", device), "blipx was built without this kernel"


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("ema_dtype,param_dtype", DTYPE_PAIRS)
@pytest.mark.parametrize("size", [1, 7, 65537])
def test_matches_reference(device, ema_dtype, param_dtype, size):
    ema, par = make([(size,), (3, size)], device, ema_dtype, param_dtype)
    check_against_reference(ema, par, 0.995)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("ema_dtype,param_dtype", DTYPE_PAIRS[:1] + DTYPE_PAIRS[3:4])
def test_many_small_and_few_large(device, ema_dtype, param_dtype):
    # ~1500 tensors: more than one launch table on CUDA, odd sizes, plus chunk-spanning ones.
    shapes = [(k % 13 + 1,) for k in range(1500)] + [(768, 769), (3, 65536 + 5), (1 << 18,)]
    ema, par = make(shapes, device, ema_dtype, param_dtype)
    check_against_reference(ema, par, 0.9)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_mixed_dtype_pairs_in_one_call(device):
    ema = [torch.randn(5, device=device), torch.randn(9, device=device).bfloat16(), torch.randn(4, device=device)]
    par = [torch.randn(5, device=device).half(), torch.randn(9, device=device).bfloat16(), torch.randn(4, device=device)]
    check_against_reference(ema, par, 0.5)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_non_contiguous_and_misaligned(device):
    def strided(rows, cols):  # a column slice: non-contiguous, distinct storage per call
        return torch.randn(rows, cols + 2, device=device)[:, 1:-1]

    ema = [strided(64, 64), torch.randn(64, 63, device=device).t(), torch.randn(1001, device=device)[1:]]
    par = [torch.randn(64, 64, device=device).t(), strided(63, 64), torch.randn(1002, device=device)[2:]]
    assert not ema[0].is_contiguous() and not ema[1].is_contiguous() and not par[0].is_contiguous()
    check_against_reference(ema, par, 0.7)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_momentum_edges_and_empty(device):
    e = torch.randn(100, device=device)
    p = torch.randn(100, device=device)
    before = e.clone()
    blipx.ops.momentum_update_([e], [p], 1.0)
    assert torch.equal(e, before)
    blipx.ops.momentum_update_([e], [p], 0.0)
    assert torch.equal(e, p)
    blipx.ops.momentum_update_([], [], 0.5)
    z = torch.empty(0, 3, device=device)
    blipx.ops.momentum_update_([z], [torch.empty(0, 3, device=device)], 0.5)


def test_bad_input_names_the_argument():
    e = [torch.zeros(3), torch.zeros(4)]
    p = [torch.zeros(3), torch.zeros(4)]
    with pytest.raises(RuntimeError, match="ema_params and params must have the same length, got 2 and 1"):
        blipx.ops.momentum_update_(e, p[:1], 0.9)
    with pytest.raises(RuntimeError, match=r"ema_params\[1\] has shape \[4\] but params\[1\] has shape \[5\]"):
        blipx.ops.momentum_update_(e, [p[0], torch.zeros(5)], 0.9)
    with pytest.raises(RuntimeError, match=r"ema_params\[0\] is BFloat16 and params\[0\] is Float"):
        blipx.ops.momentum_update_([torch.zeros(3, dtype=torch.bfloat16)], [torch.zeros(3)], 0.9)
    with pytest.raises(RuntimeError, match=r"ema_params\[0\] is Long"):
        blipx.ops.momentum_update_([torch.zeros(3, dtype=torch.long)], [torch.zeros(3, dtype=torch.long)], 0.9)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(RuntimeError, match="momentum must be in \\[0, 1\\]"):
            blipx.ops.momentum_update_(e, p, bad)


@pytest.mark.cuda
def test_mixed_devices_rejected():
    with pytest.raises(RuntimeError, match=r"params\[0\] is on cpu but ema_params\[0\] is on cuda"):
        blipx.ops.momentum_update_([torch.zeros(3, device="cuda")], [torch.zeros(3)], 0.9)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    ema, par = make([(7,), (5, 3)], device, torch.float32, torch.float32)
    torch.library.opcheck(torch.ops.blipx.momentum_update_.default, (ema, par, 0.9))
    ema, par = make([(7,)], device, torch.float32, torch.bfloat16)
    torch.library.opcheck(torch.ops.blipx.momentum_update_.default, (ema, par, 0.25))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    ema, par = make([(33,), (4, 5)], device, torch.float32, torch.float32)
    expect = [e.clone() for e in ema]
    momentum_update_ref(expect, par, 0.9)

    @torch.compile(fullgraph=True, backend="inductor")
    def step(ema, par):
        blipx.ops.momentum_update_(ema, par, 0.9)

    step(ema, par)
    for got, want in zip(ema, expect):
        torch.testing.assert_close(got, want)


@pytest.mark.cuda
def test_cuda_graph_capture_and_side_stream():
    ema, par = make([(1000,), (65537,)], "cuda", torch.float32, torch.float32)
    expect = [e.clone() for e in ema]
    blipx.ops.momentum_update_(ema, par, 0.9)  # warm-up on the default stream
    momentum_update_ref(expect, par, 0.9)
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        with torch.cuda.graph(graph):
            blipx.ops.momentum_update_(ema, par, 0.9)
    torch.cuda.current_stream().wait_stream(side)
    for _ in range(3):
        graph.replay()
        momentum_update_ref(expect, par, 0.9)
    torch.cuda.synchronize()
    for got, want in zip(ema, expect):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
