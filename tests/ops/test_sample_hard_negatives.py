"""blipx.ops.sample_hard_negatives: support, exact distribution, special values, shapes, seeds.

The distribution tests draw >= 10^6 samples in ONE call by repeating a row with ``expand`` (a
stride-0 sim, which also exercises the strided path) and compare the empirical frequencies with
the exact masked softmax: chi-square at a fixed seed plus cosine >= 0.999.
"""

from __future__ import annotations


import pytest
import torch

from blipx import ops
from blipx.ops.reference import sample_hard_negatives_ref
from tests.conftest import sized
from tests.simt.backend import Simt

HAS_KERNEL = ops.has_kernel("sample_hard_negatives", "cpu")
needs_kernel = pytest.mark.skipif(not HAS_KERNEL, reason="blipx built without the CPU kernel")

INF, NAN = float("inf"), float("nan")

# One row of 16 logits with every kind of column: 3 positives (masked), a NaN, a -inf; the
# remaining 11 finite logits span about 6 nats, so a sampler ignoring them would fail cosine.
ROW = torch.tensor([1.5, -2.0, 0.3, NAN, 2.2, -INF, 0.0, -1.0, 3.0, 0.7, -0.5, 1.1, 2.9, -3.0, 0.2, 1.9])
ROW_MASK = torch.zeros(16, dtype=torch.bool)
ROW_MASK[[4, 8, 13]] = True
CHI2_DF10_P001 = 29.59  # chi-square critical value, 10 degrees of freedom, p = 0.001
# The kernel (CPU), the reference, and the CUDA kernel on the SIMT emulator (tests/simt).
SIMT_OP = pytest.param(Simt("op"), id="simt", marks=pytest.mark.simt)
IMPLS = ["op", "ref", SIMT_OP]
KERNELS = ["op", SIMT_OP]


def exact_probs(row: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r = row.double()
    excluded = mask | torch.isnan(r)
    return torch.softmax(r.masked_fill(excluded, -INF), dim=0)


def sample(sim, mask=None, gen=None, impl="op"):
    if impl == "ref":
        return sample_hard_negatives_ref(sim, mask, gen)
    return ops.sample_hard_negatives(sim, mask, gen)


def check_distribution(idx: torch.Tensor, probs: torch.Tensor, *, chi2_crit: float | None = CHI2_DF10_P001):
    n = idx.numel()
    assert bool((idx >= 0).all()), "a row with candidates returned -1"
    counts = torch.bincount(idx.cpu(), minlength=probs.numel()).double()
    assert counts[probs == 0].sum() == 0, f"drew a column with probability 0: {counts}"
    freq = counts / n
    cos = torch.nn.functional.cosine_similarity(freq, probs.double(), dim=0).item()
    assert cos >= 0.999, f"cosine {cos:.5f} between empirical and exact probabilities"
    if chi2_crit is not None:
        support = probs > 0
        expected = probs[support].double() * n
        chi2 = ((counts[support] - expected) ** 2 / expected).sum().item()
        assert chi2 < chi2_crit, f"chi-square {chi2:.1f} >= {chi2_crit} (df={int(support.sum()) - 1})"


# --------------------------------------------------------------------------------------------
# distribution


@pytest.mark.parametrize("impl", IMPLS)
def test_distribution_million_draws_one_call(impl):
    n = sized(impl, 1_000_000, 10_000)
    sim = ROW.expand(n, 16)  # stride-0 rows: no copy, strided read path
    mask = ROW_MASK.expand(n, 16)
    idx = sample(sim, mask, torch.Generator().manual_seed(1234), impl)
    assert idx.shape == (n,) and idx.dtype == torch.long
    check_distribution(idx, exact_probs(ROW, ROW_MASK))


@needs_kernel
def test_cpu_kernel_matches_reference_in_distribution():
    n = 400_000
    sim = ROW.expand(n, 16)
    mask = ROW_MASK.expand(n, 16)
    a = torch.bincount(sample(sim, mask, torch.Generator().manual_seed(5), "op"), minlength=16).double()
    b = torch.bincount(sample(sim, mask, torch.Generator().manual_seed(6), "ref"), minlength=16).double()
    # Two-sample chi-square (equal sizes): sum (a - b)^2 / (a + b) over the support, df = 10.
    s = (a + b) > 0
    chi2 = ((a[s] - b[s]) ** 2 / (a[s] + b[s])).sum().item()
    assert int(s.sum()) == 11
    assert chi2 < CHI2_DF10_P001


@pytest.mark.parametrize("impl", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_dtypes_distribution(dtype, impl):
    n = sized(impl, 300_000, 10_000)
    row = ROW.to(dtype)
    idx = ops.sample_hard_negatives(row.expand(n, 16), ROW_MASK.expand(n, 16), torch.Generator().manual_seed(7))
    # The exact target is the softmax of the values as stored in `dtype`.
    check_distribution(idx, exact_probs(row.float(), ROW_MASK))


@pytest.mark.parametrize("impl", KERNELS)
def test_square_default_mask_excludes_diagonal_and_matches_softmax(impl):
    b = 8
    base = torch.linspace(-2, 2, b)
    sim = base.expand(b, b).contiguous()
    reps = sized(impl, 40_000, 4000)
    big = sim.repeat(reps, 1)  # [reps*B, B]: row r is row r % B of sim; diagonal rule needs square, so mask explicitly
    mask = torch.eye(b, dtype=torch.bool).repeat(reps, 1)
    idx = ops.sample_hard_negatives(big, mask, torch.Generator().manual_seed(3)).view(reps, b)
    # Same rule through the default (mask=None) path on the square matrix itself.
    idx_sq = ops.sample_hard_negatives(sim, None, torch.Generator().manual_seed(3))
    assert bool((idx_sq != torch.arange(b)).all())
    for i in (0, 5):
        p = torch.softmax(base.double().masked_fill(torch.arange(b) == i, -INF), 0)
        check_distribution(idx[:, i], p, chi2_crit=24.32)  # df = 6, p = 0.001


# --------------------------------------------------------------------------------------------
# support, degenerate rows and special values


@pytest.mark.parametrize("impl", IMPLS)
def test_support_never_positive_nan_or_out_of_range(impl):
    g = torch.Generator().manual_seed(0)
    b, n = 96, 288
    sim = torch.randn(b, n, generator=g) * 5
    sim[torch.rand(b, n, generator=g) < 0.05] = NAN
    mask = torch.rand(b, n, generator=g) < 0.3
    for _ in range(sized(impl, 20, 3)):
        idx = sample(sim, mask, g, impl)
        assert bool(((idx >= 0) & (idx < n)).all())
        rows = torch.arange(b)
        assert not bool(mask[rows, idx].any())
        assert not bool(torch.isnan(sim[rows, idx]).any())


@pytest.mark.parametrize("impl", IMPLS)
def test_degenerate_rows_give_minus_one(impl):
    g = torch.Generator().manual_seed(0)
    assert sample(torch.randn(1, 1), None, g, impl).tolist() == [-1]  # batch of one
    sim = torch.randn(6, 5)
    mask = torch.zeros(6, 5, dtype=torch.bool)
    mask[0] = True  # every candidate is the same image
    sim[1] = NAN  # all NaN
    sim[2] = -INF  # all probability 0
    sim[3, 1:] = NAN
    mask[3, 0] = True  # NaN + positive, nothing left
    sim[4] = torch.tensor([-INF, NAN, 0.5, -INF, NAN])  # exactly one candidate
    mask[5] = torch.tensor([True, True, True, True, False])
    out = sample(sim, mask, g, impl)
    assert out[:4].tolist() == [-1, -1, -1, -1]
    assert out[4].item() == 2 and out[5].item() == 4
    assert sample(torch.empty(0, 0), None, g, impl).shape == (0,)
    empty_cols = sample(torch.empty(3, 0), torch.empty(3, 0, dtype=torch.bool), g, impl)
    assert empty_cols.tolist() == [-1, -1, -1]


@pytest.mark.parametrize("impl", IMPLS)
def test_pos_inf_columns_draw_uniformly_among_themselves(impl):
    n = sized(impl, 200_000, 10_000)
    row = torch.tensor([5.0, INF, 1e30, NAN, INF, -INF, INF, 0.0])
    mask = torch.tensor([False, False, False, False, False, False, True, False])  # masked +inf never drawn
    idx = sample(row.expand(n, 8), mask.expand(n, 8), torch.Generator().manual_seed(11), impl)
    counts = torch.bincount(idx, minlength=8)
    assert counts.sum() == counts[1] + counts[4]
    assert abs(counts[1].item() / n - 0.5) < 4.5 / n**0.5  # 0.5 +- 9 sigma


@pytest.mark.parametrize("impl", IMPLS)
def test_extreme_finite_logits_do_not_overflow(impl):
    # 1e30 logits would overflow a naive exp; the max column must win (others have mass ~0).
    sim = torch.tensor([[0.0, 1e30, -1e30, 3.0], [-1e30, -1e30 + 1e24, 7.0, -INF]])
    mask = torch.zeros(2, 4, dtype=torch.bool)
    for seed in range(5):
        assert sample(sim, mask, torch.Generator().manual_seed(seed), impl).tolist() == [1, 2]


@pytest.mark.parametrize("impl", KERNELS)
def test_rectangular_global_candidates_with_image_ids(impl):
    # Local rows (B = 4) against gathered candidates of 3 ranks (W*B = 12); ids repeat across ranks.
    g = torch.Generator().manual_seed(2)
    local_ids = torch.tensor([0, 1, 1, 2])
    global_ids = torch.tensor([0, 1, 1, 2, 3, 4, 0, 5, 6, 6, 2, 7])
    mask = local_ids[:, None] == global_ids[None, :]
    sim = torch.randn(4, 12, generator=g)
    for _ in range(50):
        idx = ops.sample_hard_negatives(sim, mask, g)
        assert bool((global_ids[idx] != local_ids).all())
    with pytest.raises(RuntimeError, match="positive_mask is required"):
        ops.sample_hard_negatives(sim)


# --------------------------------------------------------------------------------------------
# reproducibility, strides


@needs_kernel
@pytest.mark.parametrize("impl", KERNELS)
def test_seeded_generator_reproducible_and_advances(impl):
    sim = torch.randn(sized(impl, 512, 48), sized(impl, 512, 48))
    a = ops.sample_hard_negatives(sim, None, torch.Generator().manual_seed(42))
    b = ops.sample_hard_negatives(sim, None, torch.Generator().manual_seed(42))
    assert torch.equal(a, b)
    g = torch.Generator().manual_seed(42)
    first, second = ops.sample_hard_negatives(sim, None, g), ops.sample_hard_negatives(sim, None, g)
    assert torch.equal(first, a) and not torch.equal(first, second)  # generator state advanced
    torch.manual_seed(0)
    c = ops.sample_hard_negatives(sim)
    torch.manual_seed(0)
    assert torch.equal(c, ops.sample_hard_negatives(sim))  # the default generator is honoured


@needs_kernel
def test_result_independent_of_thread_count():
    sim = torch.randn(300, 300)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.sample_hard_negatives(sim, None, torch.Generator().manual_seed(9))
        torch.set_num_threads(max(2, old))
        many = ops.sample_hard_negatives(sim, None, torch.Generator().manual_seed(9))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, many)


@pytest.mark.parametrize("impl", IMPLS)
def test_non_contiguous_inputs_equal_contiguous(impl):
    g = torch.Generator().manual_seed(0)
    big = torch.randn(64, 128, generator=g)
    sim = big[:, ::2]  # column stride 2
    mask = (torch.rand(64, 128, generator=g) < 0.2)[:, 1::2]
    assert not sim.is_contiguous() and not mask.is_contiguous()
    a = sample(sim, mask, torch.Generator().manual_seed(1), impl)
    b = sample(sim.contiguous(), mask.contiguous(), torch.Generator().manual_seed(1), impl)
    assert torch.equal(a, b)
    t = torch.randn(32, 32, generator=g)
    assert torch.equal(sample(t.t(), None, torch.Generator().manual_seed(4), impl),
                       sample(t.t().contiguous(), None, torch.Generator().manual_seed(4), impl))


# --------------------------------------------------------------------------------------------
# errors, dispatch, tracing


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.randn(4),), "sim must be a 2-D"),
        ((torch.randint(0, 3, (4, 4)),), "sim must be float32"),
        ((torch.randn(4, 4), torch.zeros(4, 4)), "positive_mask must be a bool"),
        ((torch.randn(4, 4), torch.zeros(4, 5, dtype=torch.bool)), "positive_mask has shape"),
        ((torch.randn(4, 6),), "positive_mask is required"),
    ],
)
@needs_kernel
def test_bad_arguments_name_the_argument(args, match):
    with pytest.raises(RuntimeError, match=match):
        torch.ops.blipx.sample_hard_negatives.default(*args)


def test_reference_switch_gives_same_support():
    sim = torch.randn(16, 16)
    ops.set_use_kernels(False)
    try:
        idx = ops.sample_hard_negatives(sim, None, torch.Generator().manual_seed(0))
    finally:
        ops.set_use_kernels(True)
    assert torch.equal(idx, sample_hard_negatives_ref(sim, None, torch.Generator().manual_seed(0)))


@needs_kernel
def test_opcheck():
    # Rows with a single candidate make the output deterministic, so opcheck's eager-vs-traced
    # comparisons are meaningful for a random op.
    sim = torch.randn(6, 6)
    mask = ~torch.eye(6, dtype=torch.bool).roll(1, dims=1)  # only column (i + 1) % 6 is a candidate
    torch.library.opcheck(torch.ops.blipx.sample_hard_negatives.default, (sim, mask))
    torch.library.opcheck(torch.ops.blipx.sample_hard_negatives.default, (sim.t(), mask, None))
    torch.library.opcheck(torch.ops.blipx.sample_hard_negatives.default, (sim.clone().requires_grad_(True), mask))
    assert ops.sample_hard_negatives(sim, mask).tolist() == [1, 2, 3, 4, 5, 0]


@needs_kernel
def test_torch_compile_fullgraph():
    temp = torch.tensor(0.07)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(img, txt, mask):
        sim = img @ txt.t() / temp
        return ops.sample_hard_negatives(sim, mask), ops.sample_hard_negatives(sim.t(), mask.t())

    img = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    ids = torch.tensor([0, 0, 1, 2, 3, 3, 4, 5])
    mask = ids[:, None] == ids[None, :]
    neg_txt, neg_img = step(img, img.clone(), mask)
    assert neg_txt.dtype == torch.long and neg_txt.shape == (8,)
    assert bool((ids[neg_txt] != ids).all()) and bool((ids[neg_img] != ids).all())


# --------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_cuda_distribution_and_support(dtype):
    n = 1_000_000
    row = ROW.to(dtype).cuda()
    idx = ops.sample_hard_negatives(row.expand(n, 16), ROW_MASK.cuda().expand(n, 16),
                                    torch.Generator(device="cuda").manual_seed(1))
    assert idx.device.type == "cuda"
    check_distribution(idx, exact_probs(row.float().cpu(), ROW_MASK))


@pytest.mark.cuda
def test_cuda_matches_cpu_semantics():
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(6, 5, generator=g)
    mask = torch.zeros(6, 5, dtype=torch.bool)
    mask[0] = True
    sim[1] = NAN
    sim[2] = -INF
    sim[4] = torch.tensor([-INF, NAN, 0.5, -INF, NAN])
    sim[5] = torch.tensor([1.0, INF, 2.0, INF, NAN])
    out = ops.sample_hard_negatives(sim.cuda(), mask.cuda()).cpu()
    assert out[:3].tolist() == [-1, -1, -1] and out[4].item() == 2 and out[5].item() in (1, 3)
    assert ops.sample_hard_negatives(torch.randn(1, 1, device="cuda")).item() == -1
    big = torch.randn(1024, 1024, device="cuda") * 4
    idx = ops.sample_hard_negatives(big.t())
    assert bool((idx != torch.arange(1024, device="cuda")).all()) and bool((idx >= 0).all())
    with pytest.raises(RuntimeError, match="generator is a cpu generator"):
        ops.sample_hard_negatives(big, None, torch.Generator())


@pytest.mark.cuda
def test_cuda_reproducible_no_sync_and_graph_safe():
    sim = torch.randn(256, 256, device="cuda")
    a = ops.sample_hard_negatives(sim, None, torch.Generator(device="cuda").manual_seed(3))
    b = ops.sample_hard_negatives(sim, None, torch.Generator(device="cuda").manual_seed(3))
    assert torch.equal(a, b)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ops.sample_hard_negatives(sim)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    # Graph capture with the default generator: every replay must draw fresh numbers.
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        ops.sample_hard_negatives(sim)  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.sample_hard_negatives(sim)
    graph.replay()
    first = out.clone()
    graph.replay()
    assert not torch.equal(first, out)
    assert bool((out != torch.arange(256, device="cuda")).all())
