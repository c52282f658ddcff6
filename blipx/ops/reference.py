"""Pure-PyTorch reference twins of every blipx op: the specification.

Kernels are tested against these, benchmarks use them as the baseline, and
``BLIPX_USE_KERNELS=0`` makes the library run them instead of the compiled kernels. They favour
obviously-right over fast, but stay host-sync-free like the kernels they specify.

Each first runs its kernel's argument checks (``check_args``: the rules of csrc/checks.cpp, not a
copy of them), so switching kernels off never makes a refused call succeed. Without a compiled
library, and while tracing, they run unchecked.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from blipx.ops._checks import check_args, sampling_args


def momentum_update_ref(ema_params: Sequence[torch.Tensor], params: Sequence[torch.Tensor], momentum: float) -> None:
    """In place, for every pair: ``ema = momentum * ema + (1 - momentum) * param``.

    Computed in float32 and rounded once to the EMA's dtype (fp32, fp16 or bf16; an fp32 EMA
    may track fp16/bf16 params). Shapes of each pair must match; no EMA tensor may share memory
    with another EMA tensor or with a param.
    """
    ema_params, params = list(ema_params), list(params)
    if ema_params or params:  # the check op dispatches on a tensor
        check_args("momentum_update", ema_params, params, float(momentum))
    m = float(momentum)
    with torch.no_grad():
        for e, p in zip(ema_params, params, strict=True):
            e.copy_((e.float() * m + p.float() * (1.0 - m)).to(e.dtype))


def enqueue_ref(queue: torch.Tensor, ptr: torch.Tensor, feats: torch.Tensor) -> None:
    """Ring write of a feature (or id) queue with a device-side pointer.

    queue: [Q, ...]; ptr: int64, one element, on queue's device; feats: [N, ...] with N <= Q.
    Rows ``(ptr + i) % Q`` receive ``feats[i]``; then ``ptr = (ptr + N) % Q``. Unlike the
    official ALBEF/BLIP code, Q need not be a multiple of N, and the pointer is never read on
    the host.
    """
    check_args("enqueue", queue, ptr, feats)
    q = queue.shape[0]
    n = feats.shape[0]
    with torch.no_grad():
        start = torch.remainder(ptr.reshape(1), q)
        idx = torch.remainder(start + torch.arange(n, device=ptr.device, dtype=torch.long), q)
        queue.index_copy_(0, idx, feats)
        ptr.copy_(torch.remainder(start + n, q).reshape(ptr.shape))


def _cross_attention_probs(q, k, v, key_padding_mask, scale) -> tuple[torch.Tensor, int]:
    """The softmax of both cross-attention references: fp32 probabilities [B, H, G*Lq, Lk] (the
    G query rows of an image as one longer query sequence; fully masked rows -> 0), and G."""
    check_args("cross_attention", q, k, v, key_padding_mask, scale)
    bg, h, lq, d = q.shape
    b = k.shape[0]
    g = bg // b
    qg = q.reshape(b, g, h, lq, d).transpose(1, 2).reshape(b, h, g * lq, d)  # [B, H, G*Lq, D]
    scores = torch.matmul(qg, k.transpose(-1, -2)).float() * scale  # [B, H, G*Lq, Lk]
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :].to(torch.bool), float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num(0.0), g


def cross_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Text-to-image cross-attention where G query rows share one K/V row.

    q: [B*G, H, Lq, D]; k, v: [B, H, Lk, D]; query rows b*G .. b*G+G-1 attend to K/V row b
    (G beams or return sequences of one image; G = 1 in training). key_padding_mask: bool
    [B, Lk], True marks keys to ignore (as nn.MultiheadAttention). scale defaults to D**-0.5.
    Returns [B*G, H, Lq, D]; a query whose keys are all masked gets zeros. Softmax runs in fp32.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    probs, g = _cross_attention_probs(q, k, v, key_padding_mask, scale)
    bg, h, lq, d = q.shape
    out = torch.matmul(probs.to(v.dtype), v)  # [B, H, G*Lq, D]
    return out.reshape(-1, h, g, lq, d).transpose(1, 2).reshape(bg, h, lq, d)


def cross_attention_with_probs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`cross_attention_ref`, also returning its probabilities: ``(out [B*G, H, Lq, D],
    probs [B*G, H, Lq, Lk] fp32)``, one probability row per query row (Grad-CAM reads a beam's
    or a text's map directly). ``out`` is computed from the returned ``probs``, so a gradient
    hook on them sees the whole gradient. Materialises [B*G, H, Lq, Lk]: an inspection path
    (``BertCrossAttention.save_attention``), not a fast one."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    probs, g = _cross_attention_probs(q, k, v, key_padding_mask, scale)
    bg, h, lq, d = q.shape
    lk = k.shape[2]
    rows = probs.reshape(-1, h, g, lq, lk).transpose(1, 2).reshape(bg, h, lq, lk)
    out = torch.matmul(rows.reshape(-1, g, h, lq, lk).to(v.dtype), v[:, None])  # [B, G, H, Lq, D]
    return out.reshape(bg, h, lq, d), rows


def sample_hard_negatives_ref(
    sim: torch.Tensor,
    positive_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One hard negative per row: column j of row i with probability ``softmax_j(sim[i, j])``
    restricted to the candidates (not positive, not NaN). Returns int64 [B] on sim's device.

    sim: [B, N] float (fp32/fp16/bf16/fp64), any strides. positive_mask: bool [B, N], True marks
    a positive (never drawn); None means the diagonal of a square sim. Special values:
    NaN columns are excluded; -inf columns have probability 0; if a row has valid +inf columns
    it draws uniformly among them (the limit of the softmax); a row whose candidates all have
    probability 0 (none left, or all -inf) gives -1. Gumbel-max in fp32 (fp64 for fp64 input):
    ``argmax(sim - log(E))`` with ``E ~ Exp(1)``, no host sync.
    """
    check_args("sample_hard_negatives", sim, positive_mask, generator)
    b, n = sim.shape
    s = sim.double() if sim.dtype == torch.float64 else sim.float()
    excluded = torch.eye(b, dtype=torch.bool, device=sim.device) if positive_mask is None else positive_mask
    excluded = excluded | torch.isnan(s)
    pos_inf = (s == float("inf")) & ~excluded
    row_has_inf = pos_inf.any(dim=1, keepdim=True)
    # Rows with +inf candidates race only among those (equal logits 0); other rows use sim.
    logits = torch.where(row_has_inf, torch.where(pos_inf, 0.0, float("-inf")), s.masked_fill(excluded, float("-inf")))
    valid = logits > float("-inf")
    # A fresh contiguous buffer (not empty_like, which keeps a transposed layout), so the noise
    # of element (i, j) does not depend on sim's strides.
    noise = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device).exponential_(generator=generator)
    key = (logits - noise.log()).masked_fill(~valid, float("-inf"))
    idx = key.argmax(dim=1) if n > 0 else torch.zeros(b, dtype=torch.long, device=sim.device)
    return torch.where(valid.any(dim=1), idx, torch.full_like(idx, -1))


def _row_param(value, b: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A Python scalar or a [B] tensor as a [B] tensor of ``dtype`` on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype).reshape(b)
    return torch.full((b,), value, dtype=dtype, device=device)


def sample_tokens_probs_ref(
    logits: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    top_k: int | torch.Tensor = 0,
    top_p: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """The exact distribution :func:`sample_tokens_ref` draws from: fp32 [B, V], rows summing to 1
    (one-hot at the argmax for greedy rows; all zero for a row with no finite or +inf logit).

    In fp32, per row: TemperatureLogitsWarper (``scores / temperature``), TopKLogitsWarper
    (remove ``scores < k-th largest``, so ties with the k-th value stay), TopPLogitsWarper
    (ascending sort, ``softmax().cumsum()``, remove where ``cum <= 1 - top_p``, always keeping the
    largest), then ``softmax``. Each parameter is a scalar (validated as by the kernels:
    temperature >= 0, top_k >= 0, top_p in [0, 1]) or a [B] tensor (not validated, no host sync).
    ``temperature <= 0`` means greedy: the first index of the row max (torch.argmax).
    ``top_k <= 0`` or ``>= V`` and ``top_p >= 1`` switch the filter off; ``top_p <= 0`` keeps only
    the max. Beyond HF: NaN logits count as -inf; a row with +inf logits draws uniformly among
    them (the softmax's limit; HF would produce NaN). Ties in the top-p sort: HF keeps part of a
    tie group that straddles p, the kernels keep all of it.
    """
    check_args("sample_tokens", logits, *sampling_args(temperature, top_k, top_p), None)
    return _sample_tokens_probs(logits, temperature, top_k, top_p)


def sample_tokens_scores_ref(
    logits: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    top_k: int | torch.Tensor = 0,
    top_p: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """HF's sampling warpers as scores: fp32 [B, V] logits after temperature, top-k and top-p
    (rules in :func:`sample_tokens_probs_ref`), removed tokens at -inf. This is what HF's
    ``generate(output_scores=True)`` returns per step when sampling, and
    :func:`sample_tokens_probs_ref` is its softmax (greedy rows, ``temperature <= 0``, are not
    divided; their filters are applied but the draw ignores them)."""
    check_args("sample_tokens", logits, *sampling_args(temperature, top_k, top_p), None)
    return _sample_tokens_scores(logits, temperature, top_k, top_p)


def _sample_tokens_probs(logits, temperature, top_k, top_p) -> torch.Tensor:
    # sample_tokens_probs_ref without the argument checks, for callers that ran them already.
    b, v = logits.shape
    ninf = float("-inf")
    x = logits.float().masked_fill(torch.isnan(logits), ninf)
    greedy = ~(_row_param(temperature, b, torch.float32, logits.device) > 0)
    valid_row = (x > ninf).any(dim=1, keepdim=True)
    probs = torch.softmax(_sample_tokens_scores(logits, temperature, top_k, top_p), dim=-1)
    one_hot = torch.nn.functional.one_hot(x.argmax(dim=1), v).float() if v > 0 else probs
    probs = torch.where(greedy[:, None], one_hot, probs)
    return torch.where(valid_row, probs, 0.0)


def _sample_tokens_scores(logits, temperature, top_k, top_p) -> torch.Tensor:
    # sample_tokens_scores_ref without the argument checks.
    b, v = logits.shape
    dev = logits.device
    ninf = float("-inf")
    x = logits.float().masked_fill(torch.isnan(logits), ninf)
    t = _row_param(temperature, b, torch.float32, dev)
    k = _row_param(top_k, b, torch.long, dev)
    p = _row_param(top_p, b, torch.float32, dev)
    s = x / torch.where(t > 0, t, 1.0)[:, None]
    inf_row = (s == float("inf")).any(dim=1, keepdim=True)
    s = torch.where(inf_row, torch.where(s == float("inf"), 0.0, ninf), s)  # uniform over +inf tokens
    # Top-k with per-row k: the k-th largest via a descending sort.
    use_k = (k > 0) & (k < v)
    kth = s.sort(dim=1, descending=True).values.gather(1, (k.clamp(1, v) - 1)[:, None])
    s = s.masked_fill(use_k[:, None] & (s < kth), ninf)
    # Top-p exactly as HF's TopPLogitsWarper (min_tokens_to_keep = 1).
    sorted_logits, sorted_idx = torch.sort(s, descending=False)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cum <= (1 - p)[:, None]
    remove_sorted[:, -1] = False
    remove = remove_sorted.scatter(1, sorted_idx, remove_sorted)
    return s.masked_fill((p < 1)[:, None] & remove, ninf)


def sample_tokens_ref(
    logits: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    top_k: int | torch.Tensor = 0,
    top_p: float | torch.Tensor = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row of ``logits`` [B, V]: HF's warpers (temperature -> top-k -> top-p, see
    :func:`sample_tokens_probs_ref` for the exact rules) then ``torch.multinomial``.
    Returns int64 [B] on logits' device; -1 for a row with no finite or +inf logit.
    """
    check_args("sample_tokens", logits, *sampling_args(temperature, top_k, top_p), generator)
    probs = _sample_tokens_probs(logits, temperature, top_k, top_p)
    valid = probs.sum(dim=1) > 0
    drawn = torch.multinomial(torch.where(valid[:, None], probs, 1.0), 1, generator=generator).squeeze(1)
    return torch.where(valid, drawn, torch.full_like(drawn, -1))


def length_tensor(cur_len, device: torch.device) -> torch.Tensor | None:
    """beam_search_step's ``cur_len`` as the op takes it: None (all columns) or an int64 tensor of
    one element. A tensor passes through untouched (it is checked by the op); a Python int
    becomes a new tensor on ``device`` (on a GPU, one host-to-device copy)."""
    if cur_len is None or isinstance(cur_len, torch.Tensor):
        return cur_len
    return torch.tensor([int(cur_len)], dtype=torch.long, device=device)


def beam_search_step_ref(
    logits: torch.Tensor,
    beam_scores: torch.Tensor,
    sequences: torch.Tensor,
    num_beams: int,
    cur_len: torch.Tensor | int | None = None,
    eos_token_id: int | None = None,
    min_length: int = 0,
    repetition_penalty: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of HF's vectorised beam search, as ``GenerationMixin._beam_search`` computes it.

    logits: [B*K, V] (rows b*K .. b*K+K-1 are the K beams of batch row b); beam_scores: fp32
    [B*K] running scores; sequences: int64 [B*K, T], of which the first ``cur_len`` columns
    (default T) are the tokens so far, prompt included; ``cur_len`` an int64 tensor of one
    element on logits' device (never read on the host: the length masks the columns and the
    EOS ban as tensor ops; a value outside [0, T] acts clamped, as in the CUDA kernel) or a
    Python int. Steps: ``log_softmax`` in fp32; the
    repetition penalty on every distinct token of ``sequences[:, :cur_len]`` (multiply negative,
    divide positive scores; ids outside [0, V) are ignored); EOS set to -inf while
    ``cur_len < min_length``; add beam_scores; view [B, K*V]; ``topk(2K)``. Returns
    (scores fp32 [B, 2K] descending, tokens int64 [B, 2K], source beams int64 [B, 2K] in [0, K)).
    """
    cur = length_tensor(cur_len, logits.device)
    eos = -1 if eos_token_id is None else int(eos_token_id)
    check_args("beam_search_step", logits, beam_scores, sequences, int(num_beams), cur, eos, int(min_length),
               float(repetition_penalty))
    bk, v = logits.shape
    k = int(num_beams)
    b = bk // k
    t = sequences.shape[1]
    lp = torch.log_softmax(logits.float(), dim=-1)
    if repetition_penalty != 1.0 and t > 0:
        seq = sequences
        if cur is not None:  # slots at and after cur_len are not history
            seq = torch.where(torch.arange(t, device=seq.device) < cur, seq, -1)
        ok = (seq >= 0) & (seq < v)
        mark = torch.zeros(bk, v + 1, dtype=torch.bool, device=lp.device)
        mark.scatter_(1, torch.where(ok, seq, v), True)
        penalized = torch.where(lp < 0, lp * repetition_penalty, lp / repetition_penalty)
        lp = torch.where(mark[:, :v], penalized, lp)
    if eos >= 0:
        length = torch.full((1,), t, device=lp.device) if cur is None else cur.clamp(0, t)
        lp[:, eos] = torch.where(length < min_length, float("-inf"), lp[:, eos])
    acc = (lp + beam_scores.float()[:, None]).view(b, k * v)
    scores, idx = acc.topk(2 * k, dim=1)
    return scores, idx % v, torch.div(idx, v, rounding_mode="floor")
