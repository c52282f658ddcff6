"""Static-shape incremental decoding of a BERT/MED text decoder (``BertLMHead``).

:class:`CachedDecoder` owns

- one preallocated self-attention KV buffer ``[2, L, N, H, T_max, D]`` (N = B*G rows, G
  beams / return sequences per image): each step writes one column at a device-side position
  and attends over the whole buffer under a position mask, so every tensor of the step has a
  fixed shape and address (the step can be captured in a CUDA graph or compiled with
  ``torch.compile(mode="reduce-overhead")``);
- the image (or question) cross-attention K/V, projected ONCE per image and layer with
  :meth:`BertModel.project_cross_kv` and shared by the G rows of each image through the
  G-grouping of :func:`blipx.layers.attention.cross_attention` -- never expanded to N rows
  and never reordered (beam search reorders only the self-attention buffer).

The layer arithmetic is BertLayer's (self-attention -> cross-attention -> FFN, post-LN); it
is spelled out here only because BertSelfAttention's cache concatenates (dynamic shapes).
tests/generation/test_cache.py checks that it equals the full no-cache forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from blipx.layers.attention import merge_heads, split_heads
from blipx.layers.bert import BertLMHead


class StaticKVCache:
    """K/V of every layer in one buffer, so a beam reorder is a single gather."""

    def __init__(self, layers: int, rows: int, heads: int, max_len: int, head_dim: int, dtype, device) -> None:
        # zeros, not empty: slots past the current position get probability 0 in SDPA, but
        # 0 * NaN (uninitialised memory) would still be NaN.
        self.kv = torch.zeros(2, layers, rows, heads, max_len, head_dim, dtype=dtype, device=device)
        self.key_pos = torch.arange(max_len, device=device)

    @property
    def max_len(self) -> int:
        return self.kv.shape[4]

    def reorder_(self, rows: torch.Tensor) -> None:
        """Row i takes the K/V of row ``rows[i]`` (beam i continues beam ``rows[i]``).

        Gathers into the same storage (fixed address), as a captured graph requires."""
        self.kv.copy_(self.kv.index_select(2, rows))


class CachedDecoder:
    """Prefill + one-token steps of ``decoder`` over ``rows`` = B*G sequences.

    encoder_states: [B, Lk, W] (image embeddings, or VQA question states); encoder_mask:
    optional [B, Lk], 1 = keep. ``rows`` must be a multiple of B.
    """

    def __init__(
        self,
        decoder: BertLMHead,
        encoder_states: torch.Tensor,
        rows: int,
        max_len: int,
        encoder_mask: torch.Tensor | None = None,
    ) -> None:
        bert = decoder.bert
        cfg = bert.config
        if rows % encoder_states.shape[0] != 0:
            raise ValueError(f"rows ({rows}) must be a multiple of the image batch ({encoder_states.shape[0]})")
        if max_len > cfg.max_position_embeddings:
            raise ValueError(f"max_length {max_len} exceeds max_position_embeddings {cfg.max_position_embeddings}")
        self.decoder = decoder
        self.rows = rows
        self.images = encoder_states.shape[0]
        # Once per image and layer; every step and every beam reuses these [B, H, Lk, D] tensors.
        self.cross_kv = bert.project_cross_kv(encoder_states)
        self.cross_mask = None if encoder_mask is None else ~encoder_mask.to(torch.bool)
        w = bert.embeddings.word_embeddings.weight
        self.cache = StaticKVCache(
            len(bert.encoder.layer), rows, cfg.num_heads, max_len, cfg.hidden_size // cfg.num_heads, w.dtype, w.device
        )
        # Position of the next token, on the device: steps read it instead of a Python int.
        self.pos = torch.zeros(1, dtype=torch.long, device=w.device)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """ids [N, t] at ``positions`` [t] -> next-token logits [N, V] of the last position."""
        bert = self.decoder.bert
        emb = bert.embeddings
        x = emb.word_embeddings(ids) + emb.position_embeddings(positions)[None]
        if hasattr(emb, "token_type_embeddings"):  # ALBEF-style towers: type 0, as BertEmbeddings
            x = x + emb.token_type_embeddings.weight[0]
        x = emb.dropout(emb.LayerNorm(x))
        # Causal over the static buffer: a query at position p sees keys 0..p; later slots
        # (zeros or stale beams) are masked out.
        mask = (self.cache.key_pos[None, :] <= positions[:, None])[None, None]  # [1, 1, t, T_max]
        kv = self.cache.kv
        for i, layer in enumerate(bert.encoder.layer):
            att = layer.attention
            q = split_heads(att.self.query(x), att.heads)
            kv[0, i].index_copy_(2, positions, split_heads(att.self.key(x), att.heads))
            kv[1, i].index_copy_(2, positions, split_heads(att.self.value(x), att.heads))
            a = F.scaled_dot_product_attention(q, kv[0, i], kv[1, i], attn_mask=mask)
            x = att.output(merge_heads(a), x)
            if self.cross_kv[i] is not None:
                x = layer.crossattention(x, self.cross_kv[i], self.cross_mask)
            x = layer.output(layer.intermediate(x), x)
        return self.decoder.cls(x[:, -1])  # LM head on the last position only

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Run the prompt ids [N, P] (positions 0..P-1); returns logits [N, V] for position P."""
        if ids.shape[0] != self.rows:
            raise ValueError(f"prefill expects {self.rows} rows, got {ids.shape[0]}")
        p = ids.shape[1]
        if p >= self.cache.max_len:
            raise ValueError(f"prompt of {p} tokens leaves no room below max_length {self.cache.max_len}")
        logits = self._forward(ids, torch.arange(p, device=ids.device))
        self.pos.fill_(p)
        return logits

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (int64 [N]) at the current position; returns logits [N, V].

        Fixed shapes and no host sync: the position lives on the device and advances there."""
        logits = self._forward(tokens.view(self.rows, 1), self.pos)
        self.pos.add_(1)
        return logits

    def reorder_(self, rows: torch.Tensor) -> None:
        self.cache.reorder_(rows)

    def keep_images_(self, images: torch.Tensor) -> torch.Tensor:
        """Drop every image not in ``images`` (int64 [B'], ascending local indices) with all of its
        G rows: finished captions stop costing compute. Shapes shrink, so a compiled or captured
        step sees a new shape; callers compact rarely (when at most half the images remain).
        Returns the kept rows (int64 [B' * G], local indices before the drop)."""
        g = self.rows // self.images
        rows = (images[:, None] * g + torch.arange(g, device=images.device)).view(-1)
        self.cross_kv = [None if kv is None else (kv[0].index_select(0, images), kv[1].index_select(0, images))
                         for kv in self.cross_kv]
        if self.cross_mask is not None:
            self.cross_mask = self.cross_mask.index_select(0, images)
        self.cache.kv = self.cache.kv.index_select(2, rows)
        self.rows, self.images = rows.numel(), images.numel()
        return rows
