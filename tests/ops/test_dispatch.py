"""blipx.ops.cross_attention's backend choice (blipx.ops.dispatch): with a fake timer the fastest
candidate is chosen (SDPA unless another beats it by the margin), once per key; keys of other
shape buckets, dtypes or grad modes are timed separately; a forced backend is honoured; the
file cache is written and read. Whichever backend runs, outputs and gradients agree within the
tolerances of tests/ops/test_cross_attention.py, and the G-folding SDPA path equals the
reference to rounding in fp64 / fp32."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import blipx
from blipx.ops import dispatch
from blipx.ops.reference import cross_attention_ref
from tests.ops.test_cross_attention import check_against_references, inputs, make_mask, ref64


class FakeTimer:
    """Seconds per call from a table (backend -> seconds, or a function of the call), and a log of
    what was timed; the candidate is really called once, so a broken one still shows."""

    def __init__(self, times):
        self.times = times
        self.calls: list[str] = []

    def __call__(self, name, fn, device):
        fn()
        self.calls.append(name)
        t = self.times[name]
        return t() if callable(t) else t


@pytest.fixture
def fresh(monkeypatch):
    """A clean choice table, auto mode, no file cache; the real timer restored afterwards."""
    monkeypatch.delenv("BLIPX_DISPATCH_CACHE", raising=False)
    dispatch.reset()
    before = dispatch.mode()
    dispatch.set_backend("auto")
    yield
    dispatch.set_timer(None)
    dispatch.set_backend(before)
    dispatch.reset()


def _call(shape=(2, 3, 2, 5, 19, 32), dtype=torch.float32, masked=False, grad=False):
    q, k, v = inputs(shape, dtype, "cpu")
    mask = make_mask(shape[0], shape[4], "cpu") if masked else None
    if grad:
        q.requires_grad_(True)
    return blipx.ops.cross_attention(q, k, v, mask)


def test_fastest_candidate_is_chosen_and_timed_once(fresh):
    timer = FakeTimer({"sdpa": 3e-3, "blipx": 1e-3})
    dispatch.set_timer(timer)
    calls = []
    real = torch.ops.blipx.cross_attention_fwd.default
    from unittest import mock

    with mock.patch.object(torch.ops.blipx.cross_attention_fwd, "default",
                           lambda *a: calls.append(1) or real(*a)):
        for _ in range(4):
            _call()
    assert timer.calls == ["sdpa", "blipx"]  # once per key, in preference order
    assert len(calls) == 1 + 4  # once while timed, then every call (the first one too)
    (key, choice), = dispatch.choices().items()
    assert choice.backend == "blipx" and choice.times_us == {"sdpa": 3000.0, "blipx": 1000.0}
    assert key[:4] == ("cpu", None, torch.float32, 32) and key[5] is False


def test_sdpa_is_kept_unless_beaten_by_the_margin(fresh):
    # 5 % faster is noise: SDPA stays (never slower than SDPA, no flip-flopping between runs).
    dispatch.set_timer(FakeTimer({"sdpa": 1.0e-3, "blipx": 0.95e-3}))
    _call()
    assert [c.backend for c in dispatch.choices().values()] == ["sdpa"]
    dispatch.reset()
    dispatch.set_timer(FakeTimer({"sdpa": 1.0e-3, "blipx": 2e-3}))
    _call()
    assert [c.backend for c in dispatch.choices().values()] == ["sdpa"]


def test_tensor_core_candidate_joins_where_built(fresh, monkeypatch):
    """With a (stand-in) tensor-core kernel registered for the device, bf16/fp16 calls with a
    supported head dim time three candidates; it wins only by the margin over SDPA, and is the
    static preference where nothing can be timed; fp32 and odd head dims never see it."""
    monkeypatch.setitem(dispatch._KERNELS, ("cross_attention_mma_fwd", "cpu"), True)
    monkeypatch.setitem(dispatch.RUN, "blipx_mma", dispatch.RUN["sdpa"])
    assert dispatch.candidates("cpu", torch.bfloat16, 64) == ("blipx_mma", "sdpa", "blipx")
    assert dispatch.candidates("cpu", torch.float32, 64) == ("sdpa", "blipx")
    assert dispatch.candidates("cpu", torch.bfloat16, 48) == ("sdpa", "blipx")
    assert dispatch.preferred("cpu", torch.float16, 128) == "blipx_mma"
    # (mma, blipx) seconds against SDPA's 1 ms -> the choice
    for mma, fma, expect in ((0.95e-3, 2e-3, "sdpa"), (0.5e-3, 2e-3, "blipx_mma"), (0.95e-3, 0.8e-3, "blipx"),
                             (0.5e-3, 0.47e-3, "blipx_mma")):
        dispatch.reset()
        timer = FakeTimer({"sdpa": 1e-3, "blipx": fma, "blipx_mma": mma})
        dispatch.set_timer(timer)
        _call(dtype=torch.bfloat16)
        assert sorted(timer.calls) == ["blipx", "blipx_mma", "sdpa"]
        assert [c.backend for c in dispatch.choices().values()] == [expect], (mma, fma)


def test_buckets_dtypes_masks_and_grad_are_timed_separately(fresh):
    timer = FakeTimer({"sdpa": 2e-3, "blipx": 1e-3})
    dispatch.set_timer(timer)
    _call((2, 3, 2, 5, 19, 32))
    _call((2, 3, 2, 5, 20, 32))  # Lk 19 and 20 share the bucket Lk <= 32
    assert len(dispatch.choices()) == 1
    _call((2, 3, 2, 5, 40, 32))  # Lk <= 64: another bucket
    _call((2, 1, 2, 5, 19, 32))  # G*Lq 5 (vs 15)
    _call((2, 3, 2, 5, 19, 64))  # head dim
    _call((2, 3, 2, 5, 19, 32), dtype=torch.bfloat16)
    _call(masked=True)
    _call(grad=True)
    keys = list(dispatch.choices())
    assert len(keys) == 7 and len(set(keys)) == 7
    assert len(timer.calls) == 2 * 7
    grad_keys = [k for k in keys if k[5]]
    assert len(grad_keys) == 1


def test_grad_timing_runs_the_backward_on_copies(fresh):
    """A grad-mode key times forward + backward, and the caller's graph is left alone."""
    seen = []

    def timer(name, fn, device):
        out = fn()
        seen.append((name, type(out).__name__))
        return {"sdpa": 1.0, "blipx": 2.0}[name]

    dispatch.set_timer(timer)
    q, k, v = inputs((2, 3, 2, 5, 19, 32), torch.float32, "cpu")
    q.requires_grad_(True)
    out = blipx.ops.cross_attention(q, k, v)
    assert seen == [("sdpa", "tuple"), ("blipx", "tuple")]  # torch.autograd.grad's result
    assert q.grad is None
    out.sum().backward()
    torch.testing.assert_close(q.grad, torch.func.grad(lambda x: cross_attention_ref(x, k, v).sum())(q.detach()))


def test_timing_leaves_the_global_rng_alone(fresh):
    """Choosing must not draw random numbers: a run that timed a key and one that found it chosen
    (a resumed training run) must see the same random stream."""
    q, k, v = inputs((2, 1, 2, 5, 19, 32), torch.float32, "cpu")
    q.requires_grad_(True)
    before = torch.get_rng_state()
    blipx.ops.cross_attention(q, k, v).sum().backward()  # the real timer, forward + backward
    assert len(dispatch.choices()) == 1 and torch.equal(torch.get_rng_state(), before)


def test_forced_backend_is_honoured(fresh):
    timer = FakeTimer({"sdpa": 1.0, "blipx": 2.0})
    dispatch.set_timer(timer)
    from unittest import mock

    real = torch.ops.blipx.cross_attention_fwd.default
    for forced, expect_kernel in (("blipx", True), ("sdpa", False)):
        dispatch.set_backend(forced)
        calls = []
        with mock.patch.object(torch.ops.blipx.cross_attention_fwd, "default",
                               lambda *a: calls.append(1) or real(*a)):
            _call()
        assert bool(calls) == expect_kernel, forced
    assert timer.calls == [] and dispatch.choices() == {}  # forced: nothing timed
    with pytest.raises(ValueError, match="BLIPX_CROSS_ATTENTION must be one of"):
        dispatch.set_backend("fastest")
    # The tensor-core kernel is not in this build: forcing it falls back to blipx, warned.
    if not dispatch.candidates("cpu", torch.bfloat16, 64)[0] == "blipx_mma":
        dispatch.set_backend("blipx_mma")
        with pytest.warns(RuntimeWarning, match="blipx_mma"):
            _call(dtype=torch.bfloat16)


def test_env_variable_sets_the_mode():
    """BLIPX_CROSS_ATTENTION is read at import; a bad value is refused by name."""
    import os
    import subprocess
    import sys

    code = "import blipx; print(blipx.ops.dispatch.mode())"
    env = dict(os.environ, BLIPX_CROSS_ATTENTION="SDPA", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "sdpa", out.stderr
    env["BLIPX_CROSS_ATTENTION"] = "flash"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "BLIPX_CROSS_ATTENTION must be one of auto, sdpa, blipx" in out.stderr


def test_kernels_off_means_reference(fresh):
    timer = FakeTimer({"sdpa": 1.0, "blipx": 2.0})
    dispatch.set_timer(timer)
    blipx.ops.set_use_kernels(False)
    try:
        dispatch.set_backend("sdpa")
        assert dispatch.select(*inputs((1, 1, 1, 2, 3, 8), torch.float32, "cpu"), None, 1.0) == "reference"
        dispatch.set_backend("auto")
        _call()
    finally:
        blipx.ops.set_use_kernels(True)
    assert timer.calls == [] and dispatch.choices() == {}


def test_no_timing_while_compiling(fresh):
    """Under torch.compile the choice is a dict lookup: an unknown key gets the static preference
    without timing, a known key its choice; the compiled graph has no break."""
    timer = FakeTimer({"sdpa": 1.0, "blipx": 0.1})
    dispatch.set_timer(timer)
    torch._dynamo.reset()
    q, k, v = inputs((2, 3, 2, 5, 19, 32), torch.float32, "cpu")
    f = torch.compile(lambda q, k, v: blipx.ops.cross_attention(q, k, v) * 2, fullgraph=True, backend="eager")
    with torch.no_grad():
        out = f(q, k, v)
    assert timer.calls == [] and dispatch.choices() == {}
    torch.testing.assert_close(out, cross_attention_ref(q, k, v) * 2, atol=2e-6, rtol=1e-5)
    assert dispatch.preferred("cpu", torch.float32, 32) == "sdpa"


def test_file_cache_written_and_read(fresh, monkeypatch, tmp_path):
    path = tmp_path / "sub" / "dispatch.json"
    monkeypatch.setenv("BLIPX_DISPATCH_CACHE", str(path))
    dispatch.set_timer(FakeTimer({"sdpa": 3e-3, "blipx": 1e-3}))
    _call()
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["builds"]["torch"] == torch.__version__
    (entry_key, entry), = data["entries"].items()
    assert entry["backend"] == "blipx" and "float32|D32|" in entry_key and entry_key.endswith("blipx+sdpa")
    assert not list(path.parent.glob(".*.tmp"))  # atomic write: no temp file left
    # A new process (simulated by reset) reads the file instead of timing.
    dispatch.reset()
    timer = FakeTimer({"sdpa": 1e-3, "blipx": 3e-3})
    dispatch.set_timer(timer)
    _call()
    assert timer.calls == []
    (choice,) = dispatch.choices().values()
    assert choice.backend == "blipx" and choice.source == "file"
    # Entries of another torch / blipx build are ignored.
    data["builds"]["torch"] = "0.0"
    path.write_text(json.dumps(data))
    dispatch.reset()
    _call()
    assert timer.calls == ["sdpa", "blipx"] and list(dispatch.choices().values())[0].backend == "sdpa"


def test_default_xdg_location(monkeypatch, tmp_path):
    monkeypatch.setenv("BLIPX_DISPATCH_CACHE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert dispatch.cache_path() == tmp_path / "blipx" / "dispatch.json"
    monkeypatch.setenv("BLIPX_DISPATCH_CACHE", "0")
    assert dispatch.cache_path() is None


def test_a_failing_candidate_is_skipped(fresh, monkeypatch):
    def broken(*args):
        raise RuntimeError("blipx.cross_attention: pretend this shape is refused")

    monkeypatch.setitem(dispatch.RUN, "blipx", broken)
    dispatch.set_timer(FakeTimer({"sdpa": 1.0, "blipx": 0.1}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _call()
    assert [c.backend for c in dispatch.choices().values()] == ["sdpa"]


def test_bad_arguments_are_refused_before_any_timing(fresh):
    timer = FakeTimer({"sdpa": 1.0, "blipx": 2.0})
    dispatch.set_timer(timer)
    q, k, v = inputs((2, 1, 2, 5, 19, 32), torch.float32, "cpu")
    with pytest.raises(RuntimeError, match=r"blipx.cross_attention: q rows \(3\)"):
        blipx.ops.cross_attention(torch.cat([q, q[:1]]), k, v)
    with pytest.raises(RuntimeError, match="blipx.cross_attention: k is on meta but q is on cpu"):
        blipx.ops.cross_attention(q, k.to("meta"), v)
    assert timer.calls == []


def test_info_lists_mode_and_choices(fresh):
    dispatch.set_timer(FakeTimer({"sdpa": 2e-3, "blipx": 1e-3}))
    _call()
    from blipx.cli.info import info_lines

    text = "\n".join(info_lines())
    assert "cross_attention backend: auto" in text
    assert "cpu float32 D32" in text and "-> blipx (sdpa 2000 us, blipx 1000 us)" in text


# --- the candidates agree ---------------------------------------------------------------------

SHAPES = [(2, 1, 2, 35, 77, 64), (2, 3, 2, 1, 50, 32), (3, 3, 1, 7, 17, 96)]


@pytest.mark.parametrize("backend", ["blipx", "sdpa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}G{}H{}Lq{}Lk{}D{}".format(*s))
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_every_backend_meets_the_kernel_tolerances(fresh, backend, dtype, shape, masked):
    """Forward and gradients within test_cross_attention's bound (2x the reference's own error
    in the same precision), G > 1 and masks (a one-key and an all-masked image) included."""
    dispatch.set_backend(backend)
    q, k, v = inputs(shape, dtype, "cpu")
    check_against_references(q, k, v, make_mask(shape[0], shape[4], "cpu") if masked else None)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("shape", SHAPES + [(2, 4, 3, 6, 9, 16)], ids=lambda s: "B{}G{}H{}Lq{}Lk{}D{}".format(*s))
def test_sdpa_folding_equals_the_reference(dtype, atol, shape):
    """The G groups folded into the query length computes what K/V repeated per group computes:
    equal to rounding (SDPA scales before the product, the references after), outputs and
    gradients, fully masked images giving zeros."""
    q, k, v = inputs(shape, dtype, "cpu")
    for mask in (None, make_mask(shape[0], shape[4], "cpu")):
        leaves = [x.detach().requires_grad_(True) for x in (q, k, v)]
        ref_leaves = [x.detach().requires_grad_(True) for x in (q, k, v)]
        got = dispatch.sdpa_cross_attention(*leaves, mask)
        # fp64: the independent formulation with K/V repeated per group (the reference itself
        # runs its softmax in fp32); fp32: the reference.
        want = (ref64 if dtype == torch.float64 else cross_attention_ref)(*ref_leaves, mask)
        torch.testing.assert_close(got, want, atol=atol, rtol=0)
        dout = torch.randn_like(got)
        got_g = torch.autograd.grad(got, leaves, dout)
        want_g = torch.autograd.grad(want, ref_leaves, dout)
        for a, b in zip(got_g, want_g):
            torch.testing.assert_close(a, b, atol=10 * atol, rtol=0)
        if mask is not None and shape[0] > 2:
            g = shape[1]
            assert (got[2 * g:3 * g] == 0).all() and (got_g[1][2] == 0).all()


def test_sdpa_folding_views_not_copies(monkeypatch):
    """Training (G = 1) and decoding (Lq = 1) layouts reach SDPA as views of the projection: no
    copy of q, and K/V as given (never expanded per group)."""
    seen = []
    real = dispatch.F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((q.untyped_storage().data_ptr(), tuple(q.shape), k.untyped_storage().data_ptr(), tuple(k.shape)))
        return real(q, k, v, **kw)

    monkeypatch.setattr(dispatch.F, "scaled_dot_product_attention", spy)
    for b, g, h, lq, lk, d in [(2, 1, 2, 35, 10, 16), (2, 3, 2, 1, 10, 16)]:
        x = torch.randn(b * g, lq, h * d)
        q = x.view(b * g, lq, h, d).transpose(1, 2)  # the split_heads layout
        k, v = torch.randn(b, h, lk, d), torch.randn(b, h, lk, d)
        out = dispatch.sdpa_cross_attention(q, k, v)
        assert out.shape == (b * g, h, lq, d)
        q_ptr, q_shape, k_ptr, k_shape = seen.pop()
        assert q_ptr == x.untyped_storage().data_ptr() and q_shape == (b, h, g * lq, d)
        assert k_ptr == k.untyped_storage().data_ptr() and k_shape == (b, h, lk, d)


def test_empty_batch_is_refused_by_name_not_a_division_by_zero():
    """B = 0: the op's own argument check answers (naming k), before any group size is derived."""
    from blipx import ops

    q = torch.randn(0, 2, 3, 8)
    k, v = torch.randn(0, 2, 5, 8), torch.randn(0, 2, 5, 8)
    with pytest.raises(RuntimeError, match="k must have at least one row"):
        ops.cross_attention(q, k, v, key_padding_mask=torch.zeros(0, 5, dtype=torch.bool))
