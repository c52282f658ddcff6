"""Argument checks of every op, whichever path runs it.

* 13: momentum_update_ refuses EMA tensors that share memory with each other or with a param.
* 14: a meta tensor mixed into a CPU call (which the dispatcher sends to the fake kernel) is
  refused naming the argument; an all-meta call still works; mixed CPU/CUDA is refused.
* 15: the kernels and the references (BLIPX_USE_KERNELS=0) refuse the same calls with the same
  message, because both run the one definition of each rule in csrc/checks.cpp. The table
  ``REFUSED`` below drives that comparison, so a rule added to one path only fails here.
"""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

from blipx import ops
from blipx.ops import _backend, _checks, reference
from blipx.ops._checks import sampling_args

pytestmark = pytest.mark.skipif(not _checks._CHECKS, reason="needs the compiled library (blipx::_check_* ops)")


@contextlib.contextmanager
def kernels(enabled: bool):
    old = ops.use_kernels()
    ops.set_use_kernels(enabled)
    try:
        yield
    finally:
        ops.set_use_kernels(old)


def refusal(fn) -> str:
    """The message of the RuntimeError ``fn()`` raises (fails the test if it raises none)."""
    with pytest.raises(RuntimeError) as info:
        fn()
    return str(info.value).splitlines()[0]


PATHS = ["kernel", "reference"]


def on_path(path: str):
    return kernels(path == "kernel")


# --------------------------------------------------------------------------------------------
# 13: aliased EMA tensors


def _ema_case(path, ema, params, momentum=0.5):
    with on_path(path):
        return refusal(lambda: ops.momentum_update_(ema, params, momentum))


@pytest.mark.parametrize("path", PATHS)
def test_same_ema_tensor_twice_is_refused_and_left_untouched(path):
    # The case: the EMA was updated twice, racing, and the value depended on the threads.
    a = torch.zeros(3)
    msg = _ema_case(path, [a, a], [torch.ones(3), torch.full((3,), 2.0)])
    assert "blipx.momentum_update_: ema_params[0] and ema_params[1] share memory" in msg
    assert torch.equal(a, torch.zeros(3))  # refused before anything was written


@pytest.mark.parametrize("path", PATHS)
def test_overlapping_ema_views_are_refused_naming_both_indices(path):
    buf = torch.zeros(10)
    ema = [torch.zeros(4) for _ in range(5)] + [buf[0:6]] + [torch.zeros(4)] + [buf[5:10]]
    params = [torch.ones_like(e) for e in ema]
    msg = _ema_case(path, ema, params)
    assert "ema_params[5] and ema_params[7] share memory" in msg
    # Views of one storage in another order, and of another dtype, overlap as well.
    raw = torch.zeros(8)
    msg = _ema_case(path, [raw[4:8], raw.view(torch.int32)[0:5].view(torch.float32)], [torch.ones(4), torch.ones(5)])
    assert "ema_params[0] and ema_params[1] share memory" in msg


@pytest.mark.parametrize("path", PATHS)
def test_disjoint_views_of_one_buffer_are_fine(path):
    # A flat EMA buffer split into per-parameter views is a legitimate layout.
    flat = torch.zeros(10)
    ema = [flat[0:4], flat[4:10].view(2, 3)]
    params = [torch.ones(4), torch.full((2, 3), 3.0)]
    with on_path(path):
        ops.momentum_update_(ema, params, 0.5)
    assert torch.equal(flat, torch.tensor([0.5] * 4 + [1.5] * 6))


@pytest.mark.parametrize("path", PATHS)
def test_ema_may_not_alias_a_param(path):
    # ema = m * ema + (1 - m) * param with ema *being* param is no EMA at all (a momentum model
    # that shares the online weights, e.g. a missing deepcopy); a view of another pair's param is
    # read by one update while another writes it. Both are refused, the EMA named first.
    e = torch.zeros(4)
    assert "ema_params[0] shares memory with params[0]" in _ema_case(path, [e], [e])
    e1, e2 = torch.zeros(4), torch.zeros(4)
    assert "ema_params[0] shares memory with params[1]" in _ema_case(path, [e1, e2], [torch.ones(4), e1])
    buf = torch.zeros(8)
    assert "ema_params[0] shares memory with params[0]" in _ema_case(path, [buf[0:4]], [buf[2:6]])
    assert "an EMA must be a separate copy of its parameter" in _ema_case(path, [e], [e])


@pytest.mark.parametrize("path", PATHS)
def test_params_may_alias_each_other(path):
    # Params are only read: a tied weight listed for two EMA tensors is fine.
    p = torch.full((3,), 4.0)
    e1, e2 = torch.zeros(3), torch.ones(3)
    with on_path(path):
        ops.momentum_update_([e1, e2], [p, p], 0.5)
    assert torch.equal(e1, torch.full((3,), 2.0)) and torch.equal(e2, torch.full((3,), 2.5))


@pytest.mark.parametrize("path", PATHS)
def test_expanded_ema_is_refused(path):
    e = torch.zeros(1).expand(4)
    assert "ema_params[0] has elements that share memory" in _ema_case(path, [e], [torch.ones(4)])


def test_alias_check_runs_on_direct_op_calls_and_meta():
    a = torch.zeros(3)
    msg = refusal(lambda: torch.ops.blipx.momentum_update_.default([a, a], [torch.ones(3)] * 2, 0.5))
    assert "ema_params[0] and ema_params[1] share memory" in msg
    m = torch.zeros(3, device="meta")  # the fake kernel runs the same check on real meta tensors
    msg = refusal(lambda: torch.ops.blipx.momentum_update_.default([m, m], [m.clone(), m.clone()], 0.5))
    assert "ema_params[0] and ema_params[1] share memory" in msg


def test_alias_check_scales_to_many_tensors():
    # One sort, not a pairwise scan: thousands of tensors (a ViT-L + BERT EMA has ~1000) pass,
    # and a single overlap among them is still found.
    ema = [torch.zeros(2) for _ in range(3000)]
    params = [torch.ones(2) for _ in range(3000)]
    ops.momentum_update_(ema, params, 0.5)
    assert all(torch.equal(e, torch.full((2,), 0.5)) for e in ema)
    ema[2999] = ema[1234][1:]
    params[2999] = torch.ones(1)
    assert "ema_params[1234] and ema_params[2999] share memory" in refusal(
        lambda: ops.momentum_update_(ema, params, 0.5))


@pytest.mark.parametrize("path", PATHS)
def test_enqueue_refuses_shared_memory(path):
    q = torch.zeros(8, 2)
    ids = torch.zeros(8, dtype=torch.long)
    with on_path(path):
        assert "feats shares memory with queue" in refusal(lambda: ops.enqueue_(q, torch.zeros(1, dtype=torch.long), q[2:4]))
        assert "ptr shares memory with queue" in refusal(lambda: ops.enqueue_(ids, ids[7:8], torch.ones(2, dtype=torch.long)))


# --------------------------------------------------------------------------------------------
# 14: devices, meta included


def _valid_args():
    """op -> (public function, kwargs of a valid CPU call, names of its tensor arguments)."""
    g = torch.Generator().manual_seed(0)
    return {
        "momentum_update_": (ops.momentum_update_,
                             dict(ema_params=[torch.zeros(3), torch.zeros(2)], params=[torch.ones(3), torch.ones(2)],
                                  momentum=0.5)),
        "enqueue_": (ops.enqueue_, dict(queue=torch.zeros(8, 2), ptr=torch.zeros(1, dtype=torch.long),
                                        feats=torch.ones(3, 2))),
        "sample_hard_negatives": (ops.sample_hard_negatives,
                                  dict(sim=torch.randn(4, 6, generator=g), positive_mask=torch.eye(4, 6, dtype=torch.bool))),
        "sample_tokens": (ops.sample_tokens,
                          dict(logits=torch.randn(3, 7, generator=g), temperature=torch.full((3,), 0.7),
                               top_k=torch.full((3,), 4), top_p=torch.full((3,), 0.9))),
        "beam_search_step": (ops.beam_search_step,
                             dict(logits=torch.randn(4, 9, generator=g), beam_scores=torch.zeros(4),
                                  sequences=torch.zeros(4, 3, dtype=torch.long), num_beams=2,
                                  cur_len=torch.tensor([2]))),
        "cross_attention": (ops.cross_attention,
                            dict(q=torch.randn(4, 2, 3, 8, generator=g), k=torch.randn(2, 2, 5, 8, generator=g),
                                 v=torch.randn(2, 2, 5, 8, generator=g), key_padding_mask=torch.zeros(2, 5, dtype=torch.bool))),
    }


# (op, argument moved to another device, the message fragment with "{dev}"/"{home}" for the devices)
MOVED = [
    ("momentum_update_", ("params", 0), "params[0] is on {dev} but ema_params[0] is on {home}"),
    ("momentum_update_", ("ema_params", 1), "ema_params[1] is on {dev} but ema_params[0] is on {home}"),
    ("momentum_update_", ("ema_params", 0), "params[0] is on {home} but ema_params[0] is on {dev}"),
    ("enqueue_", "feats", "feats is on {dev} but queue is on {home}"),
    ("enqueue_", "ptr", "ptr is on {dev} but queue is on {home}"),
    ("enqueue_", "queue", "feats is on {home} but queue is on {dev}"),
    ("sample_hard_negatives", "positive_mask", "positive_mask is on {dev} but sim is on {home}"),
    ("sample_hard_negatives", "sim", "positive_mask is on {home} but sim is on {dev}"),
    ("sample_tokens", "temperature", "temperatures is on {dev} but logits is on {home}"),
    ("sample_tokens", "top_k", "top_ks is on {dev} but logits is on {home}"),
    ("sample_tokens", "top_p", "top_ps is on {dev} but logits is on {home}"),
    ("beam_search_step", "beam_scores", "beam_scores is on {dev} but logits is on {home}"),
    ("beam_search_step", "sequences", "sequences is on {dev} but logits is on {home}"),
    ("beam_search_step", "cur_len", "cur_len is on {dev} but logits is on {home}"),
    ("cross_attention", "k", "k is on {dev} but q is on {home}"),
    ("cross_attention", "v", "v is on {dev} but q is on {home}"),
    ("cross_attention", "key_padding_mask", "key_padding_mask is on {dev} but q is on {home}"),
]


def _moved_call(op, where, device):
    fn, kw = _valid_args()[op]
    if isinstance(where, tuple):
        name, i = where
        kw[name] = list(kw[name])
        kw[name][i] = kw[name][i].to(device)
    else:
        kw[where] = kw[where].to(device)
    return fn, kw


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op, where, fragment", MOVED, ids=[f"{o}-{w}" for o, w, _ in MOVED])
def test_a_meta_tensor_mixed_into_a_cpu_call_is_refused(path, op, where, fragment):
    # Before: the dispatcher sent such calls to the fake kernel, so the EMA and enqueue did
    # nothing and sample_hard_negatives returned uninitialised memory.
    fn, kw = _moved_call(op, where, "meta")
    before = {k: [t.clone() for t in v] if isinstance(v, list) else v.clone() if isinstance(v, torch.Tensor) else v
              for k, v in kw.items()}
    with on_path(path):
        msg = refusal(lambda: fn(**kw))
    assert fragment.format(dev="meta", home="cpu") in msg, msg
    assert msg.startswith(f"blipx.{op}: "), msg
    for k, v in kw.items():  # nothing was written
        if isinstance(v, torch.Tensor) and not v.is_meta:
            assert torch.equal(v, before[k])


def _direct_call(op, kw):
    """The torch.ops.blipx call the public function ``op`` makes for ``kw``."""
    if op == "sample_tokens":
        args = (kw["logits"], *sampling_args(kw["temperature"], kw["top_k"], kw["top_p"]), None)
    elif op == "beam_search_step":
        args = (kw["logits"], kw["beam_scores"], kw["sequences"], kw["num_beams"], kw["cur_len"], -1, 0, 1.0)
    elif op == "cross_attention":
        op, args = "cross_attention_fwd", (kw["q"], kw["k"], kw["v"], kw["key_padding_mask"], 0.5)
    else:
        args = tuple(kw.values())
    return getattr(torch.ops.blipx, op).default, args


@pytest.mark.parametrize("op, where, fragment", MOVED, ids=[f"{o}-{w}" for o, w, _ in MOVED])
def test_direct_op_calls_with_a_meta_tensor_are_refused(op, where, fragment):
    # torch.ops.blipx.* is an entry point too: the fake kernel checks real meta tensors.
    direct, args = _direct_call(op, _moved_call(op, where, "meta")[1])
    msg = refusal(lambda: direct(*args))
    assert fragment.format(dev="meta", home="cpu") in msg, msg


def test_direct_cross_attention_backward_with_a_meta_tensor_is_refused():
    q, k, v = _l(2, 2, 3, 8), _l(2, 2, 5, 8), _l(2, 2, 5, 8)
    out, lse = torch.ops.blipx.cross_attention_fwd.default(q, k, v, None, 0.5)
    bwd = torch.ops.blipx.cross_attention_bwd.default
    msg = refusal(lambda: bwd(torch.ones_like(out).to("meta"), q, k, v, None, out, lse, 0.5))
    assert "blipx.cross_attention_bwd: dout, out and lse must be on q's device cpu" in msg


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op", list(_valid_args()))
def test_all_meta_calls_still_work(path, op):
    # Shape propagation on meta tensors (e.g. to size a model without memory) keeps working,
    # through the fake kernel with kernels on, through the reference with them off; no warning.
    fn, kw = _valid_args()[op]
    kw = {k: [t.to("meta") for t in v] if isinstance(v, list) else v.to("meta") if isinstance(v, torch.Tensor) else v
          for k, v in kw.items()}
    with on_path(path), warnings.catch_warnings():
        warnings.simplefilter("error")
        out = fn(**kw)
    expected = {"sample_hard_negatives": [(4,)], "sample_tokens": [(3,)], "beam_search_step": [(2, 4)] * 3,
                "cross_attention": [(4, 2, 3, 8)]}.get(op, [])
    outs = [] if out is None else [out] if isinstance(out, torch.Tensor) else list(out)
    assert [tuple(o.shape) for o in outs] == expected
    assert all(o.is_meta for o in outs)


def test_all_meta_calls_go_to_the_fake_kernel():
    # With kernels on, a meta call is the fake kernel's, as for torch.ops, not a warned fallback.
    for op in ("momentum_update_", "enqueue_", "sample_hard_negatives", "sample_tokens", "beam_search_step",
               "cross_attention_fwd"):
        assert _backend.kernel_for(op, torch.device("meta")), op


@pytest.mark.cuda
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op, where, fragment", MOVED, ids=[f"{o}-{w}" for o, w, _ in MOVED])
def test_mixed_cpu_and_cuda_is_refused_cuda(path, op, where, fragment):
    fn, kw = _moved_call(op, where, "cuda")
    with on_path(path):
        msg = refusal(lambda: fn(**kw))
    assert msg.startswith(f"blipx.{op}: "), msg
    # Some CUDA entry points test that their first tensor is a CUDA one before the shared checks
    # run, and say so in their own words; every other refusal is the shared rule's.
    if "must be a CUDA tensor for the CUDA kernel" not in msg:
        assert fragment.format(dev="cuda:0", home="cpu") in msg, msg


# --------------------------------------------------------------------------------------------
# 15: one rule, both paths


def _q(n=8, w=2):
    return torch.zeros(n, w)


def _ptr(dtype=torch.long, n=1):
    return torch.zeros(n, dtype=dtype)


def _l(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


_BEAM = dict(logits=_l(4, 9), beam_scores=torch.zeros(4), sequences=torch.zeros(4, 3, dtype=torch.long), num_beams=2)
_ATT = dict(q=_l(4, 2, 3, 8), k=_l(2, 2, 5, 8), v=_l(2, 2, 5, 8))

# (id, public function, kwargs, message fragment): every call here is refused by the kernels, and
# must be refused by the references with the very same message.
REFUSED = [
    ("ema-length", ops.momentum_update_, dict(ema_params=[_l(3)], params=[_l(3), _l(2)], momentum=0.5),
     "ema_params and params must have the same length"),
    ("ema-momentum-above-1", ops.momentum_update_, dict(ema_params=[_l(3)], params=[_l(3)], momentum=1.5),
     "momentum must be in [0, 1]"),
    ("ema-momentum-nan", ops.momentum_update_, dict(ema_params=[_l(3)], params=[_l(3)], momentum=float("nan")),
     "momentum must be in [0, 1]"),
    ("ema-shape", ops.momentum_update_, dict(ema_params=[_l(3)], params=[_l(4)], momentum=0.5),
     "ema_params[0] has shape [3] but params[0] has shape [4]"),
    ("ema-dtype", ops.momentum_update_, dict(ema_params=[_l(3, dtype=torch.half)], params=[_l(3)], momentum=0.5),
     "ema_params[0] is Half and params[0] is Float"),
    ("ema-integer", ops.momentum_update_, dict(ema_params=[torch.zeros(3, dtype=torch.long)],
                                               params=[torch.zeros(3, dtype=torch.long)], momentum=0.5),
     "ema_params[0] is Long"),
    ("enqueue-batch-above-queue", ops.enqueue_, dict(queue=_q(), ptr=_ptr(), feats=_l(9, 2)),
     "feats has 9 rows but queue holds only 8"),
    ("enqueue-int32-ptr", ops.enqueue_, dict(queue=_q(), ptr=_ptr(torch.int32), feats=_l(3, 2)),
     "ptr must be an int64 tensor with one element"),
    ("enqueue-two-element-ptr", ops.enqueue_, dict(queue=_q(), ptr=_ptr(n=2), feats=_l(3, 2)),
     "ptr must be an int64 tensor with one element"),
    ("enqueue-row-shape", ops.enqueue_, dict(queue=_q(), ptr=_ptr(), feats=_l(3, 5)), "feats rows must match queue rows"),
    ("enqueue-ndim", ops.enqueue_, dict(queue=_q(), ptr=_ptr(), feats=_l(6)), "feats must have the same number of dimensions"),
    ("enqueue-dtype", ops.enqueue_, dict(queue=_q(), ptr=_ptr(), feats=_l(3, 2, dtype=torch.half)),
     "feats dtype Half must match queue dtype Float"),
    ("enqueue-empty-queue", ops.enqueue_, dict(queue=_q(0), ptr=_ptr(), feats=_l(0, 2)), "queue must have at least one row"),
    ("hardneg-1d", ops.sample_hard_negatives, dict(sim=_l(4)), "sim must be a 2-D [B, N] similarity matrix"),
    ("hardneg-int", ops.sample_hard_negatives, dict(sim=torch.zeros(4, 4, dtype=torch.long)), "sim must be float32"),
    ("hardneg-float-mask", ops.sample_hard_negatives, dict(sim=_l(4, 4), positive_mask=torch.zeros(4, 4)),
     "positive_mask must be a bool tensor"),
    ("hardneg-mask-shape", ops.sample_hard_negatives, dict(sim=_l(4, 4), positive_mask=torch.zeros(4, 5, dtype=torch.bool)),
     "positive_mask has shape [4, 5] but sim has shape [4, 4]"),
    ("hardneg-not-square", ops.sample_hard_negatives, dict(sim=_l(1, 6)), "positive_mask is required when sim is not square"),
    ("tokens-negative-temperature", ops.sample_tokens, dict(logits=_l(2, 5), temperature=-0.5),
     "temperature must be >= 0"),
    ("tokens-nan-temperature", ops.sample_tokens, dict(logits=_l(2, 5), temperature=float("nan")),
     "temperature must be >= 0"),
    ("tokens-negative-top-p", ops.sample_tokens, dict(logits=_l(2, 5), top_p=-0.1), "top_p must be in [0, 1]"),
    ("tokens-top-p-above-1", ops.sample_tokens, dict(logits=_l(2, 5), top_p=1.5), "top_p must be in [0, 1]"),
    ("tokens-negative-top-k", ops.sample_tokens, dict(logits=_l(2, 5), top_k=-1), "top_k must be >= 0"),
    ("tokens-1d", ops.sample_tokens, dict(logits=_l(5)), "logits must be a 2-D [B, V] tensor"),
    ("tokens-float64", ops.sample_tokens, dict(logits=_l(2, 5, dtype=torch.float64)), "logits must be float32, float16"),
    ("tokens-empty-vocab", ops.sample_tokens, dict(logits=_l(2, 0)), "logits must have at least one column"),
    ("tokens-row-shape", ops.sample_tokens, dict(logits=_l(2, 5), temperature=torch.ones(3)),
     "temperatures must be a 1-D tensor with one value per row [2]"),
    ("tokens-int-temperatures", ops.sample_tokens, dict(logits=_l(2, 5), temperature=torch.ones(2, dtype=torch.long)),
     "temperatures must be a floating tensor"),
    ("tokens-float-top-ks", ops.sample_tokens, dict(logits=_l(2, 5), top_k=torch.ones(2)), "top_ks must be an integer tensor"),
    ("beam-zero-beams", ops.beam_search_step, {**_BEAM, "num_beams": 0}, "num_beams must be >= 1"),
    ("beam-65-beams", ops.beam_search_step, dict(logits=_l(65, 9), beam_scores=torch.zeros(65),
                                                  sequences=torch.zeros(65, 3, dtype=torch.long), num_beams=65),
     "num_beams must be <= 64"),
    ("beam-rows", ops.beam_search_step, {**_BEAM, "num_beams": 3}, "logits has 4 rows, not a multiple of num_beams = 3"),
    ("beam-one-token", ops.beam_search_step, {**_BEAM, "logits": _l(4, 1)}, "logits must have at least 2 columns"),
    ("beam-half-scores", ops.beam_search_step, {**_BEAM, "beam_scores": torch.zeros(4, dtype=torch.half)},
     "beam_scores must be float32"),
    ("beam-int32-sequences", ops.beam_search_step, {**_BEAM, "sequences": torch.zeros(4, 3, dtype=torch.int32)},
     "sequences must be int64"),
    ("beam-cur-len", ops.beam_search_step, {**_BEAM, "cur_len": 4}, "cur_len must be in [0, 3]"),
    ("beam-cur-len-tensor", ops.beam_search_step, {**_BEAM, "cur_len": torch.tensor([-1])}, "cur_len must be in [0, 3]"),
    ("beam-cur-len-int32", ops.beam_search_step, {**_BEAM, "cur_len": torch.tensor([1], dtype=torch.int32)},
     "cur_len must be an int64 tensor with one element"),
    ("beam-cur-len-shape", ops.beam_search_step, {**_BEAM, "cur_len": torch.tensor([1, 2])},
     "cur_len must be an int64 tensor with one element"),
    ("beam-eos", ops.beam_search_step, {**_BEAM, "eos_token_id": 9}, "eos_token_id 9 is outside the vocabulary"),
    ("beam-penalty", ops.beam_search_step, {**_BEAM, "repetition_penalty": 0.0}, "repetition_penalty must be > 0"),
    ("beam-penalty-nan", ops.beam_search_step, {**_BEAM, "repetition_penalty": float("nan")},
     "repetition_penalty must be > 0"),
    ("attn-3d", ops.cross_attention, {**_ATT, "q": _l(4, 3, 8)}, "q must be 4-D"),
    ("attn-int", ops.cross_attention, {**_ATT, "q": torch.zeros(4, 2, 3, 8, dtype=torch.long)}, "q must be float32"),
    ("attn-dtype", ops.cross_attention, {**_ATT, "k": _l(2, 2, 5, 8, dtype=torch.half)}, "k dtype Half must match q dtype"),
    ("attn-heads", ops.cross_attention, {**_ATT, "q": _l(4, 3, 3, 8)}, "q has 3 heads but k has 2"),
    ("attn-groups", ops.cross_attention, {**_ATT, "q": _l(3, 2, 3, 8)}, "q rows (3) must be a positive multiple"),
    ("attn-v-shape", ops.cross_attention, {**_ATT, "v": _l(2, 2, 4, 8)}, "v has shape [2, 2, 4, 8] but k has shape"),
    ("attn-mask-dtype", ops.cross_attention, {**_ATT, "key_padding_mask": torch.zeros(2, 5)},
     "key_padding_mask must be bool"),
    ("attn-mask-shape", ops.cross_attention, {**_ATT, "key_padding_mask": torch.zeros(2, 4, dtype=torch.bool)},
     "key_padding_mask must have shape [B, Lk] = [2, 5]"),
    ("attn-scale", ops.cross_attention, {**_ATT, "scale": float("inf")}, "scale must be finite"),
]


def _fresh(kw):
    # Mutating ops must see fresh tensors on each path (a half-applied call would leak).
    return {k: [t.clone() for t in v] if isinstance(v, list) else v.clone() if isinstance(v, torch.Tensor) else v
            for k, v in kw.items()}


@pytest.mark.parametrize("case, fn, kw, fragment", REFUSED, ids=[c[0] for c in REFUSED])
def test_kernels_and_references_refuse_alike(case, fn, kw, fragment):
    with kernels(True):
        kernel_msg = refusal(lambda: fn(**_fresh(kw)))
    with kernels(False):
        reference_msg = refusal(lambda: fn(**_fresh(kw)))
    op = fn.__name__
    assert kernel_msg.startswith(f"blipx.{op}: ") and fragment in kernel_msg, kernel_msg
    assert reference_msg == kernel_msg


def test_refused_table_covers_every_op():
    covered = {fn.__name__ for _, fn, _, _ in REFUSED}
    public = {op.removesuffix("_fwd") for op in _backend.OP_NAMES
              if not op.endswith("_bwd") and op not in _backend.CUDA_ONLY_OPS}  # CUDA-only: their own tests
    assert covered == public


def test_reference_functions_called_directly_run_the_checks():
    # The references are the spec and the benchmarks' baseline; they refuse what the ops refuse.
    cases = [
        (lambda: reference.enqueue_ref(_q(), _ptr(torch.int32), _l(3, 2)), "blipx.enqueue_: ptr must be an int64"),
        (lambda: reference.sample_tokens_ref(_l(2, 5), -1.0), "blipx.sample_tokens: temperature must be >= 0"),
        (lambda: reference.sample_tokens_probs_ref(_l(2, 5), 1.0, 0, -0.1), "blipx.sample_tokens: top_p must be in"),
        (lambda: reference.sample_hard_negatives_ref(_l(1, 6)), "blipx.sample_hard_negatives: sim has shape [1, 6]"),
        (lambda: reference.beam_search_step_ref(_l(4, 9), torch.zeros(4), torch.zeros(4, 3, dtype=torch.long), 3),
         "blipx.beam_search_step: logits has 4 rows"),
        (lambda: reference.cross_attention_ref(_l(3, 2, 3, 8), _l(2, 2, 5, 8), _l(2, 2, 5, 8)),
         "blipx.cross_attention: q rows (3)"),
        (lambda: reference.momentum_update_ref([_l(3)], [_l(3)], -0.5), "blipx.momentum_update_: momentum must be"),
    ]
    for call, fragment in cases:
        assert fragment in refusal(call)


def test_direct_meta_calls_are_checked_too():
    # All-meta calls reach the fake kernels, which run the checks: a bad meta call is refused
    # exactly like a bad CPU call.
    msg = refusal(lambda: torch.ops.blipx.enqueue_.default(_q().to("meta"), _ptr().to("meta"), _l(9, 2).to("meta")))
    assert "feats has 9 rows but queue holds only 8" in msg
    msg = refusal(lambda: torch.ops.blipx.sample_tokens.default(_l(2, 5).to("meta"), -1.0))
    assert "temperature must be >= 0" in msg


@pytest.mark.parametrize("path", PATHS)
def test_compiled_calls_still_trace_with_dynamic_shapes(path):
    # The C++ checks cannot read symbolic sizes, so they are skipped while tracing; the compiled
    # kernel still checks when the graph runs.
    @torch.compile(fullgraph=True, backend="aot_eager", dynamic=True)
    def step(queue, ptr, feats, logits):
        ops.enqueue_(queue, ptr, feats)
        return ops.sample_tokens(logits, 0.0)

    queue, ptr = torch.zeros(8, 2), torch.zeros(1, dtype=torch.long)
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    with on_path(path):
        torch._dynamo.reset()
        out = step(queue, ptr, torch.ones(3, 2), logits)
    assert out.tolist() == [1, 0] and ptr.tolist() == [3] and queue.sum().item() == 6.0
    if path == "kernel":
        with on_path(path):
            assert "feats has 9 rows" in refusal(lambda: step(queue, ptr, torch.ones(9, 2), logits))

