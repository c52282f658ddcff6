"""blipx.ops.enqueue_ (feature/id queue ring write) against its reference twin."""

import pytest
import torch

import blipx
from blipx.ops.reference import enqueue_ref
from tests.conftest import DEVICES, KERNEL_DEVICES


def run_both(queue, ptr, feats):
    q_ref, p_ref = queue.clone(), ptr.clone()
    enqueue_ref(q_ref, p_ref, feats)
    blipx.ops.enqueue_(queue, ptr, feats)
    assert torch.equal(queue, q_ref)
    assert torch.equal(ptr, p_ref)


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_is_compiled(device):
    assert blipx.ops.has_kernel("enqueue_", device)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64])
@pytest.mark.parametrize("q,n,width", [(7, 3, 5), (57600 % 1000 + 1, 256, 1), (10, 10, 3), (1, 1, 7), (65537, 7, 1)])
def test_wraps_around_like_reference(device, dtype, q, n, width):
    queue = torch.randn(q, width, device=device).to(dtype)
    ptr = torch.zeros(1, dtype=torch.long, device=device)
    for step in range(4):  # Q need not be a multiple of N: the write wraps mid-batch
        feats = (torch.randn(n, width, device=device) * 100).to(dtype)
        run_both(queue, ptr, feats)
    assert int(ptr) == (4 * n) % q


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_id_queue_1d_and_pointer_values(device):
    ids = torch.full((9,), -100, dtype=torch.long, device=device)
    ptr = torch.tensor([7], device=device)
    blipx.ops.enqueue_(ids, ptr, torch.arange(4, device=device))
    assert ids.tolist() == [2, 3, -100, -100, -100, -100, -100, 0, 1]
    assert ptr.tolist() == [2]
    ptr.fill_(-1)  # out-of-range pointers are taken modulo Q, as the reference does
    run_both(ids, ptr, torch.arange(3, device=device))
    ptr.fill_(30)
    run_both(ids, ptr, torch.arange(2, device=device))


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_empty_batch_is_noop(device):
    queue = torch.randn(5, 4, device=device)
    before = queue.clone()
    ptr = torch.tensor([3], device=device)
    blipx.ops.enqueue_(queue, ptr, torch.empty(0, 4, device=device))
    assert torch.equal(queue, before) and ptr.tolist() == [3]


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_non_contiguous_feats_and_queue(device):
    feats = torch.randn(4, 6, device=device)[:, ::2]  # [4, 3], strided
    queue = torch.randn(5, 3, device=device)
    run_both(queue, torch.tensor([4], device=device), feats)
    storage = torch.randn(3, 11, device=device)  # official layout [D, Q]; a [Q, D] view is strided
    run_both(storage.t(), torch.tensor([9], device=device), torch.randn(4, 3, device=device).t().contiguous().t())


def test_bad_input_names_the_argument():
    q = torch.zeros(8, 4)
    p = torch.zeros(1, dtype=torch.long)
    with pytest.raises(RuntimeError, match="feats has 9 rows but queue holds only 8"):
        blipx.ops.enqueue_(q, p, torch.zeros(9, 4))
    with pytest.raises(RuntimeError, match="feats rows must match queue rows"):
        blipx.ops.enqueue_(q, p, torch.zeros(2, 5))
    with pytest.raises(RuntimeError, match="feats must have the same number of dimensions"):
        blipx.ops.enqueue_(q, p, torch.zeros(4))
    with pytest.raises(RuntimeError, match="feats dtype Half must match queue dtype Float"):
        blipx.ops.enqueue_(q, p, torch.zeros(2, 4, dtype=torch.half))
    with pytest.raises(RuntimeError, match="ptr must be an int64 tensor with one element"):
        blipx.ops.enqueue_(q, torch.zeros(1, dtype=torch.int32), torch.zeros(2, 4))
    with pytest.raises(RuntimeError, match="ptr must be an int64 tensor with one element"):
        blipx.ops.enqueue_(q, torch.zeros(2, dtype=torch.long), torch.zeros(2, 4))
    with pytest.raises(RuntimeError, match="queue must have at least one row"):
        blipx.ops.enqueue_(torch.zeros(0, 4), p, torch.zeros(0, 4))


@pytest.mark.cuda
def test_pointer_on_another_device_rejected():
    with pytest.raises(RuntimeError, match="ptr is on cpu but queue is on cuda"):
        blipx.ops.enqueue_(torch.zeros(4, 2, device="cuda"), torch.zeros(1, dtype=torch.long), torch.zeros(1, 2, device="cuda"))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    queue = torch.randn(11, 4, device=device)
    ptr = torch.tensor([9], device=device)
    torch.library.opcheck(torch.ops.blipx.enqueue_.default, (queue, ptr, torch.randn(3, 4, device=device)))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph_with_ema(device):
    """A training-step fragment: EMA update, then enqueue normalized momentum features."""
    ema = [torch.randn(6, 4, device=device)]
    par = [torch.randn(6, 4, device=device)]
    queue = torch.zeros(10, 4, device=device)
    ptr = torch.zeros(1, dtype=torch.long, device=device)
    ref = ([e.clone() for e in ema], queue.clone(), ptr.clone())

    def step(ema, par, queue, ptr):
        blipx.ops.momentum_update_(ema, par, 0.9)
        feats = torch.nn.functional.normalize(ema[0], dim=-1)
        blipx.ops.enqueue_(queue, ptr, feats)

    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    for _ in range(2):
        compiled(ema, par, queue, ptr)
        blipx.ops.momentum_update_(ref[0], par, 0.9)
        enqueue_ref(ref[1], ref[2], torch.nn.functional.normalize(ref[0][0], dim=-1))
    torch.testing.assert_close(ema[0], ref[0][0])
    torch.testing.assert_close(queue, ref[1])
    assert torch.equal(ptr, ref[2])


@pytest.mark.cuda
def test_cuda_graph_capture():
    queue = torch.zeros(10, 3, device="cuda")
    ptr = torch.zeros(1, dtype=torch.long, device="cuda")
    feats = torch.randn(4, 3, device="cuda")
    blipx.ops.enqueue_(queue, ptr, feats)  # warm-up
    q_ref, p_ref = queue.clone(), ptr.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        blipx.ops.enqueue_(queue, ptr, feats)
    for _ in range(3):
        graph.replay()
        enqueue_ref(q_ref, p_ref, feats)
    torch.cuda.synchronize()
    assert torch.equal(queue, q_ref) and torch.equal(ptr, p_ref)
