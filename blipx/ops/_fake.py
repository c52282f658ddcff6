"""Fake (meta) kernels: output metadata for torch.compile / FakeTensor tracing.

The two mutating ops return nothing, so their fake kernels only need to exist. Each first runs
its op's argument checks on real meta tensors (``check_args`` skips fake tensors): a meta tensor
mixed into a CPU or CUDA call is dispatched here, and must be refused, not silently ignored.
"""

from __future__ import annotations

import torch

from blipx import _native
from blipx.ops._checks import check_args


def _exists(name: str) -> bool:
    # A compiled library older than the Python sources may lack a newer op; its fake kernel is
    # then skipped and the op's wrapper falls back to the reference (with a warning).
    return _native._C is not None and hasattr(torch.ops.blipx, name)


if _exists("momentum_update_"):

    @torch.library.register_fake("blipx::momentum_update_")
    def _momentum_update_fake(ema_params, params, momentum):
        check_args("momentum_update", ema_params, params, momentum)
        return None


if _exists("enqueue_"):

    @torch.library.register_fake("blipx::enqueue_")
    def _enqueue_fake(queue, ptr, feats):
        check_args("enqueue", queue, ptr, feats)
        return None


if _exists("sample_hard_negatives"):

    @torch.library.register_fake("blipx::sample_hard_negatives")
    def _sample_hard_negatives_fake(sim, positive_mask=None, generator=None):
        check_args("sample_hard_negatives", sim, positive_mask, generator)
        torch._check(sim.dim() == 2, lambda: f"blipx.sample_hard_negatives: sim must be 2-D, got {sim.dim()}-D")
        return sim.new_empty((sim.shape[0],), dtype=torch.long)


if _exists("sample_tokens"):

    @torch.library.register_fake("blipx::sample_tokens")
    def _sample_tokens_fake(logits, temperature=1.0, top_k=0, top_p=1.0, temperatures=None, top_ks=None,
                            top_ps=None, generator=None):
        check_args("sample_tokens", logits, temperature, top_k, top_p, temperatures, top_ks, top_ps, generator)
        torch._check(logits.dim() == 2, lambda: f"blipx.sample_tokens: logits must be 2-D, got {logits.dim()}-D")
        return logits.new_empty((logits.shape[0],), dtype=torch.long)


if _exists("beam_search_step"):

    @torch.library.register_fake("blipx::beam_search_step")
    def _beam_search_step_fake(logits, beam_scores, sequences, num_beams, cur_len, eos_token_id, min_length=0,
                               repetition_penalty=1.0):
        check_args("beam_search_step", logits, beam_scores, sequences, num_beams, cur_len, eos_token_id, min_length,
                   repetition_penalty)
        torch._check(logits.dim() == 2, lambda: f"blipx.beam_search_step: logits must be 2-D, got {logits.dim()}-D")
        b = logits.shape[0] // num_beams
        scores = logits.new_empty((b, 2 * num_beams), dtype=torch.float32)
        tokens = logits.new_empty((b, 2 * num_beams), dtype=torch.long)
        return scores, tokens, torch.empty_like(tokens)


def _bhld(like: torch.Tensor, n0, h, length, d, dtype=None) -> torch.Tensor:
    # The kernels allocate [N0, L, H, D] and return it transposed to [N0, H, L, D] (the layout of
    # the models' split_heads views), so the fake tensors carry the same strides.
    return like.new_empty((n0, length, h, d), dtype=dtype).transpose(1, 2)


# (forward, backward) op pairs with cross_attention_fwd/_bwd's schemas: the FMA kernels and the
# tensor-core kernels (present only in builds that have them).
CROSS_ATTENTION_OPS = (("cross_attention_fwd", "cross_attention_bwd"),
                       ("cross_attention_mma_fwd", "cross_attention_mma_bwd"))


def _cross_attention_fwd_fake(q, k, v, key_padding_mask, scale):
    check_args("cross_attention", q, k, v, key_padding_mask, scale)
    torch._check(q.dim() == 4 and k.dim() == 4, lambda: "blipx.cross_attention: q and k must be 4-D")
    bg, h, lq, d = q.shape
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return _bhld(q, bg, h, lq, d), q.new_empty((bg, h, lq), dtype=lse_dtype)


def _cross_attention_mma_fwd_fake(q, k, v, key_padding_mask, scale):
    check_args("cross_attention_mma", q, k, v, key_padding_mask, scale)  # + bf16 / fp16 only
    return _cross_attention_fwd_fake(q, k, v, key_padding_mask, scale)


def _cross_attention_bwd_fake(dout, q, k, v, key_padding_mask, out, lse, scale):
    check_args("cross_attention_bwd", dout, q, k, v, key_padding_mask, out, lse, scale)
    bg, h, lq, d = q.shape
    b, lk = k.shape[0], k.shape[2]
    return _bhld(q, bg, h, lq, d), _bhld(k, b, h, lk, d), _bhld(v, b, h, lk, d)


for _fwd, _bwd in CROSS_ATTENTION_OPS:
    if _exists(_fwd):
        _fake_fwd = _cross_attention_mma_fwd_fake if _fwd == "cross_attention_mma_fwd" else _cross_attention_fwd_fake
        torch.library.register_fake(f"blipx::{_fwd}")(_fake_fwd)
    if _exists(_bwd):
        torch.library.register_fake(f"blipx::{_bwd}")(_cross_attention_bwd_fake)
