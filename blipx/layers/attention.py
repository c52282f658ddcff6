"""Attention for the text tower.

Every text-to-image attention in blipx goes through :func:`cross_attention`, which runs the fused
op of issue 6 (``blipx.ops.cross_attention``): in training, and in ``generate()`` where the G beams
of an image share its K/V (projected once per layer and cached per image by the callers).
``BLIPX_USE_KERNELS=0`` or ``blipx.ops.set_use_kernels(False)`` selects the pure-PyTorch
reference for debugging. Self-attention uses ``F.scaled_dot_product_attention`` with a boolean mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from blipx import ops


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
    q_len: int,
    past_len: int,
    causal: bool,
    device: torch.device,
) -> torch.Tensor | None:
    """Boolean [B|1, 1, q_len, past_len+q_len] mask for SDPA (True = attend), or None.

    ``attention_mask`` ([B, past_len+q_len], 1 = keep) may be None. A query row that may see
    no key at all (a pad query under left padding) is opened to every key instead: its output
    is never read, and this keeps softmax free of NaN in every dtype (HF reaches the same end
    with finfo.min, which overflows to -inf in fp16).
    """
    k_len = past_len + q_len
    allowed = None
    if attention_mask is not None:
        if attention_mask.shape[-1] != k_len:
            raise ValueError(f"attention_mask has {attention_mask.shape[-1]} columns, expected {k_len}")
        allowed = attention_mask[:, None, None, :].to(torch.bool)
    if causal:
        qi = torch.arange(q_len, device=device)[:, None] + past_len
        ki = torch.arange(k_len, device=device)[None, :]
        tri = (ki <= qi)[None, None]
        allowed = tri if allowed is None else allowed & tri
    if allowed is None:
        return None
    return allowed | ~allowed.any(dim=-1, keepdim=True)


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
    """Bidirectional or causal self-attention with an optional concatenating KV cache."""

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
        past_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        q = split_heads(self.self.query(x), self.heads)
        k = split_heads(self.self.key(x), self.heads)
        v = split_heads(self.self.value(x), self.heads)
        if past_kv is not None:
            k = torch.cat([past_kv[0], k], dim=2)
            v = torch.cat([past_kv[1], v], dim=2)
        p = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.output(merge_heads(out), x), (k, v)


class BertCrossAttention(nn.Module):
    """Text queries over image (or question) states; K/V may be projected once and reused.

    Attention-probability dropout is not applied here (the fused op has none); the output
    dropout is.
    """

    def __init__(self, hidden: int, kv_width: int, heads: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.self = _QKV(hidden, kv_width)
        self.output = BertSelfOutput(hidden, eps, dropout)

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
        out = cross_attention(q, kv[0], kv[1], key_padding_mask=key_padding_mask)
        return self.output(merge_heads(out), x)
