"""blipx.ops.sample_tokens against the sort-based HF reference (blipx.ops.reference)."""

import math

import pytest
import torch

import blipx
from blipx.ops.reference import sample_tokens_probs_ref, sample_tokens_ref
from tests.conftest import DEVICES, KERNEL_DEVICES, sized

ops = blipx.ops
N_DRAWS = 10**6
# (temperature, top_k, top_p): plain softmax, top-k only, top-p only, both (HF's defaults order).
PARAMS = [(1.0, 0, 1.0), (0.7, 8, 1.0), (1.3, 0, 0.8), (0.8, 20, 0.9)]


def gen(device, seed=0):
    return torch.Generator(device=device).manual_seed(seed)


def kept_set(logits, temperature, top_k, top_p):
    """Tokens the kernel may draw: the reference's top-k/top-p set, with p raised by 2e-5. The
    kernel sums masses in another order than HF's sort + cumsum; with V = 30524 a row's p
    boundary falls within fp32 rounding (~1e-6) of a token's cumulative mass now and then, and
    that token may then be kept by one side only. Tokens near the boundary weigh ~1e-3, so the
    slack admits at most that one token, never a wrong support."""
    if not isinstance(top_p, torch.Tensor) and top_p < 1:
        top_p = min(top_p + 2e-5, 1.0)
    return sample_tokens_probs_ref(logits, temperature, top_k, top_p) > 0


def assert_distribution(tokens, probs, what=""):
    """Frequencies of ``tokens`` vs the exact ``probs`` [V]: support, cosine and per-token 6 sigma."""
    n = tokens.numel()
    freq = torch.bincount(tokens.cpu(), minlength=probs.numel()).double() / n
    probs = probs.double().cpu()
    outside = (freq > 0) & (probs == 0)
    assert not outside.any(), f"{what}: drew tokens outside the support: {outside.nonzero().flatten().tolist()}"
    if n >= 10**5:  # a summary that needs many draws; the per-token test below holds for any n
        cos = torch.nn.functional.cosine_similarity(freq, probs, dim=0).item()
        assert cos >= 0.999, f"{what}: cosine {cos:.6f} < 0.999"
    tol = 6 * torch.sqrt(probs * (1 - probs) / n) + 3.0 / n
    worst = ((freq - probs).abs() - tol).max().item()
    assert worst <= 0, f"{what}: a token's frequency is off by more than 6 sigma (excess {worst:.3g})"


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_is_compiled(device):
    assert ops.has_kernel("sample_tokens", device), "blipx was built without this kernel"


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("vocab", [111, 30524])
@pytest.mark.parametrize("temperature,top_k,top_p", PARAMS)
def test_support_within_reference_set(device, vocab, temperature, top_k, top_p):
    rows = sized(device, 64, 6)
    logits = torch.randn(rows, vocab, device=device) * 3
    allowed = kept_set(logits, temperature, top_k, top_p)
    for seed in range(sized(device, 3, 1)):
        tok = ops.sample_tokens(logits, temperature, top_k, top_p, generator=gen(device, seed))
        assert tok.dtype == torch.long and tok.shape == (rows,)
        assert allowed.gather(1, tok[:, None]).all(), f"seed {seed}: a token outside the top-k/top-p set"


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("temperature,top_k,top_p", PARAMS)
def test_distribution_one_million_draws(device, temperature, top_k, top_p):
    row = torch.randn(1, 111, device=device) * 2
    n = sized(device, N_DRAWS, 1200)
    tokens = ops.sample_tokens(row.expand(n, 111), temperature, top_k, top_p, generator=gen(device))
    assert_distribution(tokens, sample_tokens_probs_ref(row, temperature, top_k, top_p)[0], f"{temperature, top_k, top_p}")


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_per_row_parameter_tensors(device):
    # Four parameter sets, each on a quarter of the rows of one repeated logits row.
    row = torch.randn(1, 97, device=device) * 2
    temps = torch.tensor([1.0, 0.5, 2.0, 0.0], device=device)
    ks = torch.tensor([0, 5, 40, 3], device=device, dtype=torch.int32)
    ps = torch.tensor([0.5, 1.0, 0.95, 0.1], device=device, dtype=torch.float64)
    n = sized(device, N_DRAWS // 4, 400)
    tokens = ops.sample_tokens(row.expand(4 * n, 97), temps.repeat_interleave(n), ks.repeat_interleave(n),
                               ps.repeat_interleave(n), generator=gen(device))
    for i in range(4):
        probs = sample_tokens_probs_ref(row, temps[i].item(), ks[i].item(), ps[i].item())[0]
        assert_distribution(tokens[i * n:(i + 1) * n], probs, f"parameter set {i}")
    # A scalar for one parameter mixed with tensors for the others.
    logits = torch.randn(32, 500, device=device)
    k_rows = torch.arange(1, 33, device=device)
    tok = ops.sample_tokens(logits, 0.9, k_rows, 1.0, generator=gen(device))
    assert (sample_tokens_probs_ref(logits, 0.9, k_rows, 1.0) > 0).gather(1, tok[:, None]).all()
    assert tok[0] == logits[0].argmax()  # k = 1


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_greedy_and_its_limits(device):
    rows = sized(device, 16, 4)
    logits = torch.randn(rows, 30524, device=device)
    want = logits.argmax(dim=1)
    assert torch.equal(ops.sample_tokens(logits, 0.0), want)
    assert torch.equal(ops.sample_tokens(logits, 1.0, top_k=1, generator=gen(device)), want)
    assert torch.equal(ops.sample_tokens(logits, 1.0, top_p=0.0, generator=gen(device)), want)  # p -> 0
    assert torch.equal(ops.sample_tokens(logits, 1.0, top_p=1e-9, generator=gen(device)), want)
    temps = torch.rand(rows, device=device).masked_fill(torch.arange(rows, device=device) % 2 == 0, 0.0)
    tok = ops.sample_tokens(logits, temps, generator=gen(device))
    assert torch.equal(tok[::2], want[::2])
    # Greedy picks the first of tied maxima, like torch.argmax.
    tied = torch.tensor([[0.0, 2.0, 1.0, 2.0]], device=device)
    assert ops.sample_tokens(tied, 0.0).item() == 1


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_top_k_keeps_ties_with_the_kth_value(device):
    row = torch.tensor([[3.0, 2.0, 2.0, 2.0, 1.0, 0.0, 2.5]], device=device)
    # Sorted: 3, 2.5, 2, 2, 2, 1, 0. k = 3: the 3rd largest is 2.0, and all three of its ties stay
    # in, as HF's `scores < kth` test keeps them; k = 2 keeps only {3, 2.5}.
    g = gen(device)
    n = sized(device, 200_000, 400)
    tokens = ops.sample_tokens(row.expand(n, 7), 1.0, top_k=3, generator=g)
    assert set(tokens.unique().tolist()) == {0, 1, 2, 3, 6}
    tokens = ops.sample_tokens(row.expand(n, 7), 1.0, top_k=2, generator=g)
    assert set(tokens.unique().tolist()) == {0, 6}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("top_k", [1024, 1025, 5000])
def test_large_top_k(device, top_k):
    # Both CPU selection paths (heap for k <= 1024, nth_element above), with the k-th value tied.
    logits = torch.randn(8, 30524, device=device)
    kth = logits.sort(dim=1, descending=True).values[:, top_k - 1 : top_k]
    logits[:, :5] = kth  # five more copies of the k-th value
    allowed = sample_tokens_probs_ref(logits, 2.0, top_k, 1.0) > 0
    assert allowed[:, :5].all()
    for seed in range(3):
        tok = ops.sample_tokens(logits, 2.0, top_k, generator=gen(device, seed))
        assert allowed.gather(1, tok[:, None]).all()
    tokens = ops.sample_tokens(logits[:1].expand(2000, 30524), 2.0, top_k, generator=gen(device))
    assert allowed[0][tokens].all()
    assert tokens.unique().numel() > 500  # many distinct kept tokens, not a collapsed set


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_degenerate_rows(device):
    ninf, inf, nan = float("-inf"), float("inf"), float("nan")
    logits = torch.full((6, 301), ninf, device=device)
    logits[0, 17] = 4.0  # all -inf but one
    logits[1, 300] = -1e30
    logits[2, [5, 250]] = inf  # +inf: uniform over the +inf tokens
    logits[2, 7] = 1e30
    logits[3] = nan  # all NaN: nothing to draw
    logits[3, 9] = 0.0  # ... but one
    # row 4: all -inf -> -1
    logits[5] = nan
    g = gen(device)
    for temperature, top_k, top_p in [(1.0, 0, 1.0), (0.5, 3, 0.5), (0.0, 0, 1.0)]:
        tok = ops.sample_tokens(logits, temperature, top_k, top_p, generator=g)
        assert tok[[0, 1, 3, 4, 5]].tolist() == [17, 300, 9, -1, -1], (temperature, top_k, top_p)
        assert tok[2].item() in (5, 250)
    n = sized(device, 20_000, 600)
    tok = ops.sample_tokens(logits[2:3].expand(n, 301), generator=g)
    assert set(tok.unique().tolist()) == {5, 250}
    assert abs((tok == 5).double().mean().item() - 0.5) < 0.02 * (20_000 / n) ** 0.5  # 2.8 sigma


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes(device, dtype):
    row = (torch.randn(1, 1001, device=device) * 2).to(dtype)
    tokens = ops.sample_tokens(row.expand(sized(device, N_DRAWS // 2, 600), 1001), 0.9, 50, 1.0, generator=gen(device))
    assert_distribution(tokens, sample_tokens_probs_ref(row, 0.9, 50, 1.0)[0], str(dtype))
    # Half-precision rows are full of ties. Top-k keeps them in both; top-p in HF keeps the part
    # of a tie group that sorts last, the kernel the whole group: its support is HF's extended
    # by the ties of the smallest kept value.
    logits = (torch.randn(sized(device, 16, 4), 1001, device=device) * 2).to(dtype)
    kept = kept_set(logits, 1.0, 0, 0.9)
    smallest_kept = logits.float().masked_fill(~kept, float("inf")).amin(dim=1, keepdim=True)
    allowed = logits.float() >= smallest_kept
    for seed in range(sized(device, 3, 1)):
        tok = ops.sample_tokens(logits, 1.0, 0, 0.9, generator=gen(device, seed))
        assert allowed.gather(1, tok[:, None]).all()


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_strides_do_not_change_the_draws(device):
    base = torch.randn(30524, sized(device, 24, 3), device=device)
    logits = base.t()  # [24, 30524], column stride 24
    assert not logits.is_contiguous()
    a = ops.sample_tokens(logits, 0.8, 40, 0.9, generator=gen(device, 5))
    b = ops.sample_tokens(logits.contiguous(), 0.8, 40, 0.9, generator=gen(device, 5))
    assert torch.equal(a, b)
    sliced = torch.randn(8, 1200, device=device)[:, 100:1100]
    tok = ops.sample_tokens(sliced, 1.0, 0, 0.7, generator=gen(device))
    assert kept_set(sliced, 1.0, 0, 0.7).gather(1, tok[:, None]).all()


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_reproducible_with_a_seeded_generator(device):
    logits = torch.randn(sized(device, 64, 6), 30524, device=device)
    a = ops.sample_tokens(logits, 1.0, 0, 0.95, generator=gen(device, 123))
    b = ops.sample_tokens(logits, 1.0, 0, 0.95, generator=gen(device, 123))
    c = ops.sample_tokens(logits, 1.0, 0, 0.95, generator=gen(device, 124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    g = gen(device, 1)  # the generator advances: two calls differ
    assert not torch.equal(ops.sample_tokens(logits, generator=g), ops.sample_tokens(logits, generator=g))


def test_bad_input_names_the_argument():
    x = torch.randn(4, 10)
    cases = [
        ((torch.randn(10),), {}, "logits must be a 2-D"),
        ((x.long(),), {}, "logits must be float32, float16 or bfloat16"),
        ((x, -1.0), {}, "temperature must be >= 0"),
        ((x, 1.0, -2), {}, "top_k must be >= 0"),
        ((x, 1.0, 0, 1.5), {}, r"top_p must be in \[0, 1\]"),
        ((x, torch.ones(3)), {}, r"temperatures must be a 1-D tensor with one value per row \[4\]"),
        ((x, 1.0, torch.ones(4)), {}, "top_ks must be an integer tensor"),
        ((x, 1.0, 0, torch.ones(4, dtype=torch.long)), {}, "top_ps must be a floating tensor"),
    ]
    for args, kwargs, msg in cases:
        with pytest.raises(RuntimeError, match="blipx.sample_tokens: " + msg):
            ops.sample_tokens(*args, **kwargs)
    with pytest.raises(RuntimeError, match="logits must have at least one column"):
        ops.sample_tokens(torch.empty(2, 0))


@pytest.mark.cuda
def test_cuda_generator_device_is_checked():
    with pytest.raises(RuntimeError, match="generator is a cpu generator but logits is on cuda"):
        ops.sample_tokens(torch.randn(2, 5, device="cuda"), generator=torch.Generator())


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    # One-token supports (greedy, k = 1, a single finite logit) make the output deterministic, so
    # opcheck's eager-vs-traced comparisons are meaningful for a random op.
    x = torch.randn(5, 37, device=device)
    op = torch.ops.blipx.sample_tokens.default
    torch.library.opcheck(op, (x, 0.0))
    torch.library.opcheck(op, (x, 1.0, 1, 1.0))
    utils = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")  # all
    if torch.torch_version.TorchVersion(torch.__version__) < (2, 14):
        # torch 2.11's AOT dispatch cannot take a Generator argument ("test_aot_dispatch_dynamic
        # failed with argument of type: <class 'torch._C.Generator'>"); 2.14 can. 2.12/2.13 not tried.
        utils = tuple(u for u in utils if u != "test_aot_dispatch_dynamic")
    torch.library.opcheck(op, (x.t().contiguous().t(), 0.5, 0, 0.0, torch.full((5,), 0.5, device=device),
                               torch.ones(5, dtype=torch.long, device=device), None, gen(device)), test_utils=utils)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    @torch.compile(fullgraph=True, backend="inductor")
    def step(hidden, weight, temps):
        logits = hidden @ weight.t()
        return ops.sample_tokens(logits, 0.0), ops.sample_tokens(logits, temps, 1), ops.sample_tokens(logits, 0.7, 0, 0.9)

    hidden, weight = torch.randn(6, 16, device=device), torch.randn(300, 16, device=device)
    greedy, k1, sampled = step(hidden, weight, torch.full((6,), 0.8, device=device))
    want = (hidden @ weight.t()).argmax(dim=1)
    assert torch.equal(greedy, want) and torch.equal(k1, want)
    assert kept_set(hidden @ weight.t(), 0.7, 0, 0.9).gather(1, sampled[:, None]).all()


def test_reference_matches_hf_warpers_on_ties_free_rows():
    # The reference's exact distribution, checked against HF's formulas written out once more
    # (scalar parameters), so the spec itself cannot drift.
    x = torch.randn(3, 50)
    s = x / 0.7
    s = s.masked_fill(s < torch.topk(s, 10)[0][..., -1, None], -math.inf)
    sl, si = torch.sort(s, descending=False)
    rm = sl.softmax(-1).cumsum(-1) <= 1 - 0.8
    rm[..., -1:] = 0
    s = s.masked_fill(rm.scatter(1, si, rm), -math.inf)
    torch.testing.assert_close(sample_tokens_probs_ref(x, 0.7, 10, 0.8), s.softmax(-1))
    assert sample_tokens_ref(x, 0.7, 10, 0.8).shape == (3,)


@pytest.mark.cuda
def test_cuda_graph_replays_draw_fresh_numbers():
    # The Philox seed/offset reach the kernel through device pointers under capture, so each
    # replay advances the generator instead of repeating the captured draw.
    logits = torch.randn(256, 30524, device="cuda")
    allowed = kept_set(logits, 1.0, 0, 0.9)
    ops.sample_tokens(logits, 1.0, 0, 0.9)  # warm-up outside the capture
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.cuda.graph(graph):
        out = ops.sample_tokens(logits, 1.0, 0, 0.9)
    torch.cuda.current_stream().wait_stream(side)
    draws = []
    for _ in range(3):
        graph.replay()
        draws.append(out.clone())
    assert all(allowed.gather(1, d[:, None]).all() for d in draws)
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
