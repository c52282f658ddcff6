"""Attention for the text tower.

Every text-to-image attention in blipx goes through :func:`cross_attention`, which runs the fused
op ``blipx.ops.cross_attention``: in training, and in ``generate()`` where the G beams
of an image share its K/V (projected once per layer and cached per image by the callers).
``BLIPX_USE_KERNELS=0`` or ``blipx.ops.set_use_kernels(False)`` selects the pure-PyTorch
reference for debugging. Self-attention uses ``F.scaled_dot_product_attention`` with a boolean mask,
optionally over a preallocated :class:`StaticKVCache` (incremental decoding).

Grad-CAM (salesforce/ALBEF ``Grounding.py``, LAVIS ``compute_gradcam``) needs the attention
probabilities of one cross-attention layer and their gradient, which the fused op never
materialises. ``BertCrossAttention.save_attention = True`` (or :func:`saving_attention`) runs that
layer through :func:`blipx.ops.reference.cross_attention_with_probs` -- the reference math,
keeping the probabilities -- and records them
with their gradient, as ``xbert.py``'s ``save_attention`` does; with the flag off (the default)
the layer calls the fused op exactly as before, at the cost of one attribute check.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from blipx import ops
from blipx.ops.reference import cross_attention_with_probs


def cross_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Text-to-image attention: q [B*G, H, Lq, D], k/v [B, H, Lk, D] -> [B*G, H, Lq, D].

    Query rows ``b*G .. b*G+G-1`` (beams / return sequences of image b) share K/V row b, so
    image K/V never need ``repeat_interleave``. ``key_padding_mask``: bool [B, Lk], True = ignore.
    The output is a transposed view of a [B*G, Lq, H, D] buffer, so ``merge_heads`` is free.
    """
    return ops.cross_attention(q, k, v, key_padding_mask=key_padding_mask, scale=scale)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, c = x.shape
    return x.view(b, t, heads, c // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def self_attention_mask(
    attention_mask: torch.Tensor | None,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    causal: bool,
) -> torch.Tensor | None:
    """Boolean [B|1, 1, Lq, Lk] mask for SDPA (True = attend), or None.

    ``q_pos`` [Lq] / ``k_pos`` [Lk]: positions of the queries and of the keys. Without a cache
    both are ``arange(T)``; with a :class:`StaticKVCache` the keys are its T_max slots and the
    queries the device-side positions being written, so "causal" also hides the slots not
    written yet (zeros, or stale beams). ``attention_mask`` ([B, Lk], 1 = keep) may be None. A
    query row that may see no key at all (a pad query under left padding) is opened to every
    key instead: its output is never read, and this keeps softmax free of NaN in every dtype
    (HF reaches the same end with finfo.min, which overflows to -inf in fp16).
    """
    allowed = None
    if attention_mask is not None:
        if attention_mask.shape[-1] != k_pos.shape[0]:
            raise ValueError(f"attention_mask has {attention_mask.shape[-1]} columns, expected {k_pos.shape[0]}")
        allowed = attention_mask[:, None, None, :].to(torch.bool)
    if causal:
        tri = (k_pos[None, :] <= q_pos[:, None])[None, None]
        if allowed is None:
            return tri  # every query sees at least its own key: no row to open
        allowed = allowed & tri
    if allowed is None:
        return None
    return allowed | ~allowed.any(dim=-1, keepdim=True)


class LayerKVCache:
    """One layer's view ([N, H, T_max, D] K and V) of a :class:`StaticKVCache` buffer."""

    __slots__ = ("k", "v")

    def __init__(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k, self.v = k, v

    def update(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v [N, H, t, D] into slots ``positions`` (int64 [t], on the device); returns the
        whole buffers, which attention reads under the position mask (fixed shapes)."""
        self.k.index_copy_(2, positions, k)
        self.v.index_copy_(2, positions, v)
        return self.k, self.v


class StaticKVCache:
    """Self-attention K/V of every layer of a causal text tower, preallocated.

    One buffer ``kv`` [2, L, N, H, T_max, D] (N rows = B images x G beams / return sequences),
    so a beam reorder is a single gather; each layer writes through its :class:`LayerKVCache`
    view. ``pos`` (int64 [1], on the device) is the position of the next token: a forward over t
    tokens writes slots ``pos .. pos+t-1`` and advances ``pos`` by t there, so one-token steps
    have fixed shapes and addresses and no host sync (``torch.compile(fullgraph=True)`` traces
    a step once; a CUDA graph can capture it). Made by :meth:`blipx.layers.BertModel.new_kv_cache`.
    """

    def __init__(self, layers: int, rows: int, heads: int, max_len: int, head_dim: int, dtype, device) -> None:
        # zeros, not empty: slots past the current position get probability 0 in SDPA, but
        # 0 * NaN (uninitialised memory) would still be NaN.
        self._set_kv(torch.zeros(2, layers, rows, heads, max_len, head_dim, dtype=dtype, device=device))
        self.key_pos = torch.arange(max_len, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)

    def _set_kv(self, kv: torch.Tensor) -> None:
        self.kv = kv
        self.layers = [LayerKVCache(kv[0, i], kv[1, i]) for i in range(kv.shape[1])]

    @property
    def rows(self) -> int:
        return self.kv.shape[2]

    @property
    def max_len(self) -> int:
        return self.kv.shape[4]

    def positions(self, t: int) -> torch.Tensor:
        """Slots of the next ``t`` tokens, int64 [t] on the device (no host read of ``pos``)."""
        return self.key_pos[:t] + self.pos

    def advance_(self, t: int) -> None:
        self.pos.add_(t)

    def reset_(self) -> None:
        """Start over at position 0 (stale slots are masked until rewritten)."""
        self.pos.zero_()

    def reorder_(self, rows: torch.Tensor) -> None:
        """Row i takes the K/V of row ``rows[i]`` (beam i continues beam ``rows[i]``).

        One gather into the same storage (fixed address, views stay valid), as a captured graph
        requires."""
        self.kv.copy_(self.kv.index_select(2, rows))

    def keep_rows_(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (int64 [N']): a new, smaller buffer (a new shape for a compiled step)."""
        self._set_kv(self.kv.index_select(2, rows))


class BertSelfOutput(nn.Module):
    """``dense -> dropout -> LayerNorm(x + residual)`` (post-LN), named as in BERT checkpoints."""

    def __init__(self, hidden: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class _QKV(nn.Module):
    """``query``/``key``/``value`` Linears (checkpoint key ``*.self.*``)."""

    def __init__(self, hidden: int, kv_width: int) -> None:
        super().__init__()
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_width, hidden)
        self.value = nn.Linear(kv_width, hidden)


class BertSelfAttention(nn.Module):
    """Bidirectional or causal self-attention; with a :class:`LayerKVCache`, the new K/V are written
    into the static buffer and attention runs over all of its slots (training, prefill and
    one-token decode steps are this one forward)."""

    def __init__(self, hidden: int, heads: int, eps: float, dropout: float, attn_dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.attn_dropout = attn_dropout
        self.self = _QKV(hidden, hidden)
        self.output = BertSelfOutput(hidden, eps, dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        kv_cache: LayerKVCache | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [N, t, hidden]; mask as :func:`self_attention_mask` builds it (over the cache's T_max
        slots when ``kv_cache`` is given); positions int64 [t]: the slots to write."""
        q = split_heads(self.self.query(x), self.heads)
        k = split_heads(self.self.key(x), self.heads)
        v = split_heads(self.self.value(x), self.heads)
        if kv_cache is not None:
            k, v = kv_cache.update(k, v, positions)
        p = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.output(merge_heads(out), x)


class BertCrossAttention(nn.Module):
    """Text queries over image (or question) states; K/V may be projected once and reused.

    Attention-probability dropout is not applied here (the fused op has none); the output
    dropout is.

    ``save_attention`` (default False): when True, every forward runs
    :func:`blipx.ops.reference.cross_attention_with_probs` instead of the fused op (same outputs, to rounding) and
    keeps ``attention_map`` (the probabilities [B*G, H, Lq, Lk], fp32, part of the autograd
    graph) and, once a backward has run through them, ``attn_gradients`` (their gradient, same
    shape): salesforce/ALBEF ``models/xbert.py``'s ``save_attention`` / ``get_attention_map`` /
    ``get_attn_gradients``, which Grad-CAM reads (:mod:`blipx.models.gradcam`).
    """

    def __init__(self, hidden: int, kv_width: int, heads: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.self = _QKV(hidden, kv_width)
        self.output = BertSelfOutput(hidden, eps, dropout)
        self.save_attention = False
        self.attention_map: torch.Tensor | None = None
        self.attn_gradients: torch.Tensor | None = None

    def _save_attn_gradients(self, grad: torch.Tensor) -> None:
        self.attn_gradients = grad

    def get_attention_map(self) -> torch.Tensor | None:
        return self.attention_map

    def get_attn_gradients(self) -> torch.Tensor | None:
        return self.attn_gradients

    def clear_saved_attention(self) -> None:
        """Drop the recorded map and gradient (they hold the autograd graph alive)."""
        self.attention_map = self.attn_gradients = None

    def project_kv(self, encoder_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, Lk, W] -> K, V [B, H, Lk, D]: computed once per image, shared by all its rows."""
        return split_heads(self.self.key(encoder_states), self.heads), split_heads(
            self.self.value(encoder_states), self.heads
        )

    def forward(
        self,
        x: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor],
        key_padding_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        q = split_heads(self.self.query(x), self.heads)
        if self.save_attention:
            out, probs = cross_attention_with_probs(q, kv[0], kv[1], key_padding_mask=key_padding_mask)
            self.attention_map, self.attn_gradients = probs, None
            if probs.requires_grad:
                probs.register_hook(self._save_attn_gradients)
        else:
            out = cross_attention(q, kv[0], kv[1], key_padding_mask=key_padding_mask)
        return self.output(merge_heads(out), x)


@contextlib.contextmanager
def saving_attention(*modules: BertCrossAttention, clear: bool = True) -> Iterator[None]:
    """Turn ``save_attention`` on for ``modules`` inside the block, then restore each one's
    previous setting (and, with ``clear``, drop what was recorded)."""
    before = [m.save_attention for m in modules]
    for m in modules:
        m.save_attention = True
    try:
        yield
    finally:
        for m, flag in zip(modules, before):
            m.save_attention = flag
            if clear:
                m.clear_saved_attention()
