"""blipx.ops.beam_search_step against HF's formulation (blipx.ops.reference.beam_search_step_ref)."""

import pytest
import torch

import blipx
from blipx.ops.reference import beam_search_step_ref
from tests.conftest import DEVICES, KERNEL_DEVICES, sized

ops = blipx.ops
EOS = 2


def make(b, k, v, t, device, dtype=torch.float32):
    logits = (torch.randn(b * k, v, device=device) * 3).to(dtype)
    scores = -torch.rand(b * k, device=device) * 5
    seq = torch.randint(0, v, (b * k, t), device=device)
    return logits, scores, seq


def check(logits, scores, seq, k, **kw):
    """The op against the reference; an int cur_len is also passed as a device tensor (what a
    decode loop passes), which must give the same result."""
    got = ops.beam_search_step(logits, scores, seq, k, **kw)
    want = beam_search_step_ref(logits, scores, seq, k, kw.get("cur_len"), kw.get("eos_token_id"),
                                kw.get("min_length", 0), kw.get("repetition_penalty", 1.0))
    if isinstance(kw.get("cur_len"), int):
        on_device = ops.beam_search_step(logits, scores, seq, k, **{**kw, "cur_len": torch.tensor([kw["cur_len"]],
                                                                                               device=logits.device)})
        for a, b in zip(got, on_device):
            assert torch.equal(a, b)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-5)
    assert torch.equal(got[1], want[1]), f"tokens differ:\n{got[1]}\n{want[1]}"
    assert torch.equal(got[2], want[2]), f"source beams differ:\n{got[2]}\n{want[2]}"
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.long and got[2].dtype == torch.long
    return got


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_is_compiled(device):
    assert ops.has_kernel("beam_search_step", device), "blipx was built without this kernel"


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("vocab", [111, 30524])
@pytest.mark.parametrize("penalty", [1.0, 1.1, 0.8])
@pytest.mark.parametrize("min_length", [0, 12])
def test_matches_reference(device, k, vocab, penalty, min_length):
    logits, scores, seq = make(sized(device, 4, 2), k, vocab, 9, device)
    seq[:, :3] = logits.topk(3, dim=1).indices  # the penalty must move the leading candidates
    seq[:, 3] = seq[:, 5]  # duplicated tokens are penalised once
    seq[:, 6] = seq[:, 0]
    seq[:, 4] = EOS
    check(logits, scores, seq, k, cur_len=9, eos_token_id=EOS, min_length=min_length, repetition_penalty=penalty)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_logits(device, dtype):
    # Log-softmax runs in fp32 on the upcast values, as HF's `.float()` does. Half rows have tied
    # logits, so tokens are compared where the reference's scores are tie-free.
    logits, scores, seq = make(3, 3, 1000, 5, device, dtype)
    got = ops.beam_search_step(logits, scores, seq, 3, repetition_penalty=1.2)
    want = beam_search_step_ref(logits, scores, seq, 3, None, None, 0, 1.2)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-5)
    s = want[0]
    distinct = torch.ones_like(s, dtype=torch.bool)
    distinct[:, 1:] &= s[:, 1:] != s[:, :-1]
    distinct[:, :-1] &= s[:, :-1] != s[:, 1:]
    assert distinct.any()
    assert torch.equal(got[1][distinct], want[1][distinct]) and torch.equal(got[2][distinct], want[2][distinct])


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_min_length_bans_eos(device):
    logits, scores, seq = make(2, 3, 50, 4, device)
    logits[:, EOS] = 20.0  # EOS would win every beam
    s, tok, _ = check(logits, scores, seq, 3, eos_token_id=EOS, min_length=5)  # cur_len 4 < 5
    assert (tok != EOS).all()
    s, tok, _ = check(logits, scores, seq, 3, eos_token_id=EOS, min_length=4)  # cur_len 4: allowed
    assert (tok[:, :3] == EOS).all()
    check(logits, scores, seq, 3, eos_token_id=None, min_length=50)  # no EOS: nothing banned
    # The ban follows the device-side length: cur_len 3 < 4 bans, in the same buffer.
    _, tok, _ = check(logits, scores, seq, 3, cur_len=3, eos_token_id=EOS, min_length=4)
    assert (tok != EOS).all()


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_device_length_is_read_at_call_time(device):
    """One length tensor, advanced in place between calls (as a decode loop's position is):
    each call sees the current value, for the penalty window and the EOS ban alike."""
    logits, scores, seq = make(2, 3, 60, 8, device)
    logits[:, EOS] = 12.0
    seq[:, :] = torch.arange(8, device=device) + 10  # token 10 + c at column c
    cur = torch.tensor([2], device=device)
    for n in (2, 3, 5, 8):
        cur.fill_(n)
        got = ops.beam_search_step(logits, scores, seq, 3, cur_len=cur, eos_token_id=EOS, min_length=5,
                                   repetition_penalty=2.0)
        want = beam_search_step_ref(logits, scores, seq, 3, n, EOS, 5, 2.0)
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-5)
        assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2]), n
        assert ((got[1] == EOS).any().item()) == (n >= 5)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_repetition_penalty_and_cur_len(device):
    # A preallocated buffer: only the first cur_len columns count; ids outside [0, V) are ignored.
    logits, scores, seq = make(2, 3, 60, 10, device)
    logits = torch.randn(6, 60, device=device)
    logits[:, 7] = 9.0
    logits[:, 8] = 8.5
    seq[:, :4] = torch.tensor([7, 7, -1, 999], device=device)
    seq[:, 4:] = 8  # counts only once cur_len reaches it
    got = check(logits, scores, seq, 3, cur_len=4, repetition_penalty=3.0)
    assert (got[1][:, 0] == 8).all()  # token 7 (log-prob ~ -0.5) is pushed below token 8 (~ -1.0)
    got = check(logits, scores, seq, 3, cur_len=10, repetition_penalty=3.0)
    assert (got[1][:, 0] == 7).all()  # both penalised: 7 leads again
    check(logits, scores, seq, 3, cur_len=0, repetition_penalty=3.0)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_first_step_and_tiny_vocab(device):
    # HF's first step: beam 0 at 0, the others at -1e9, all beams with the same logits.
    logits = torch.randn(2, 500, device=device).repeat_interleave(3, dim=0)
    scores = torch.tensor([0.0, -1e9, -1e9], device=device).repeat(2)
    seq = torch.full((6, 1), 30522, device=device)
    got = check(logits, scores, seq, 3)
    assert (got[2] == 0).all()
    # V = 2 with K = 3: K*V = 2K, every candidate is returned (the banned EOS at -inf, last).
    logits, scores, seq = make(2, 3, 2, 3, device)
    got = ops.beam_search_step(logits, scores, seq, 3, eos_token_id=1, min_length=10)
    want = beam_search_step_ref(logits, scores, seq, 3, None, 1, 10, 1.0)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-5)
    assert torch.equal(got[1][:, :3], want[1][:, :3]) and torch.equal(got[2][:, :3], want[2][:, :3])
    # The three banned EOS candidates tie at -inf: any order is right (ours: by beam).
    assert torch.isinf(got[0][:, 3:]).all() and (got[1][:, 3:] == 1).all()
    assert (got[2][:, 3:].sort(dim=1).values == torch.arange(3, device=device)).all()


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_non_contiguous_inputs(device):
    logits, scores, seq = make(3, 3, 777, 6, device)
    wide = torch.randn(9, 800, device=device)
    wide[:, 10:787] = logits
    seq_t = seq.t().contiguous().t()
    scores_strided = torch.stack([scores, scores], 1)[:, 0]
    assert not wide[:, 10:787].is_contiguous() and not seq_t.is_contiguous() and not scores_strided.is_contiguous()
    check(wide[:, 10:787], scores_strided, seq_t, 3, eos_token_id=EOS, min_length=9, repetition_penalty=1.3)


def test_bad_input_names_the_argument():
    logits, scores, seq = make(2, 3, 20, 4, "cpu")
    cases = [
        ((logits, scores, seq, 4), {}, "logits has 6 rows, not a multiple of num_beams = 4"),
        ((logits, scores[:5], seq, 3), {}, r"beam_scores must have shape \[6\]"),
        ((logits, scores.double(), seq, 3), {}, "beam_scores must be float32"),
        ((logits, scores, seq.int(), 3), {}, "sequences must be int64"),
        ((logits, scores, seq, 3), {"cur_len": 5}, r"cur_len must be in \[0, 4\]"),
        ((logits, scores, seq, 3), {"eos_token_id": 20}, "eos_token_id 20 is outside the vocabulary"),
        ((logits, scores, seq, 3), {"repetition_penalty": 0.0}, "repetition_penalty must be > 0"),
        ((logits[:, :1], scores, seq, 3), {}, r"logits must have at least 2 columns"),
        ((logits.long(), scores, seq, 3), {}, "logits must be float32, float16 or bfloat16"),
    ]
    for args, kwargs, msg in cases:
        with pytest.raises(RuntimeError, match="blipx.beam_search_step: " + msg):
            ops.beam_search_step(*args, **kwargs)


@pytest.mark.cuda
def test_mixed_devices_rejected():
    logits, scores, seq = make(2, 3, 20, 4, "cuda")
    with pytest.raises(RuntimeError, match="sequences is on cpu but logits is on cuda"):
        ops.beam_search_step(logits, scores, seq.cpu(), 3)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    logits, scores, seq = make(2, 3, 40, 5, device)
    op = torch.ops.blipx.beam_search_step.default
    cur = torch.tensor([5], device=device)
    torch.library.opcheck(op, (logits, scores, seq, 3, cur, EOS, 7, 1.2))
    torch.library.opcheck(op, (logits[:2], scores[:2], seq[:2], 1, cur - 2, -1, 0, 1.0))
    torch.library.opcheck(op, (logits[:2], scores[:2], seq[:2], 1, None, -1, 0, 1.0))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    @torch.compile(fullgraph=True, backend="inductor")
    def step(hidden, weight, scores, seq, cur):
        return ops.beam_search_step(hidden @ weight.t(), scores, seq, 3, cur_len=cur, eos_token_id=EOS, min_length=8,
                                    repetition_penalty=1.1)

    hidden, weight = torch.randn(6, 16, device=device), torch.randn(300, 16, device=device)
    _, scores, seq = make(2, 3, 300, 5, device)
    for n in (3, 5):  # the length is data, not a constant of the graph
        got = step(hidden, weight, scores, seq, torch.tensor([n], device=device))
        want = beam_search_step_ref(hidden @ weight.t(), scores, seq, 3, n, EOS, 8, 1.1)
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-5)
        assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])


@pytest.mark.cuda
def test_cuda_graph_capture_matches_eager():
    """One capture serves every length: the graph reads cur_len from the device on each replay."""
    logits, scores, seq = make(32, 3, 30524, 12, "cuda")
    logits[:, EOS] += 4.0
    cur = torch.tensor([4], device="cuda")
    kw = dict(eos_token_id=EOS, min_length=8, repetition_penalty=1.1)
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.cuda.graph(graph):
        got = ops.beam_search_step(logits, scores, seq, 3, cur_len=cur, **kw)
    torch.cuda.current_stream().wait_stream(side)
    for n in (4, 8, 12):
        cur.fill_(n)
        graph.replay()
        want = ops.beam_search_step(logits, scores, seq, 3, cur_len=n, **kw)
        torch.cuda.synchronize()
        for g, w in zip(got, want):
            assert torch.equal(g, w), n


@pytest.mark.cuda
def test_cuda_length_out_of_range_is_clamped():
    """On the GPU the length is never read on the host; the kernel clamps it to [0, T]."""
    logits, scores, seq = make(2, 3, 100, 6, "cuda")
    for n, clamped in ((-3, 0), (50, 6)):
        got = ops.beam_search_step(logits, scores, seq, 3, cur_len=torch.tensor([n], device="cuda"),
                                   repetition_penalty=1.5)
        want = beam_search_step_ref(logits.cpu(), scores.cpu(), seq.cpu(), 3, clamped, None, 0, 1.5)
        torch.testing.assert_close(got[0].cpu(), want[0], rtol=0, atol=1e-5)
        assert torch.equal(got[1].cpu(), want[1])
