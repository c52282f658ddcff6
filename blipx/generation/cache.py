"""Static-shape incremental decoding of a BERT/MED text decoder (``BertLMHead``).

:class:`CachedDecoder` owns the decoding state and runs the model's own forward on it:

- a :class:`~blipx.layers.attention.StaticKVCache`: one preallocated self-attention buffer
  ``[2, L, N, H, T_max, D]`` (N = B*G rows, G beams / return sequences per image) and the
  device-side position of the next token. Each step writes one column there and attends over
  the whole buffer under a position mask, so every tensor of the step has a fixed shape and
  address (``torch.compile(fullgraph=True)`` traces the step once; a CUDA graph can capture it);
- the image (or question) cross-attention K/V, projected ONCE per image and layer with
  :meth:`BertModel.project_cross_kv` and shared by the G rows of each image through the
  G-grouping of :func:`blipx.layers.attention.cross_attention` -- never expanded to N rows
  and never reordered (beam search reorders only the self-attention buffer).

Prefill and steps are ``BertModel.forward(..., kv_cache=...)``: the layer arithmetic is the
one the model trains with (tests/generation/test_cache.py checks it against the no-cache
forward).
"""

from __future__ import annotations

import copy

import torch

from blipx.layers.bert import BertLMHead


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
        if rows % encoder_states.shape[0] != 0:
            raise ValueError(f"rows ({rows}) must be a multiple of the image batch ({encoder_states.shape[0]})")
        bert = decoder.bert
        self.decoder = decoder
        self.images = encoder_states.shape[0]
        self.cache = bert.new_kv_cache(rows, max_len)
        # Once per image and layer; every step and every beam reuses these [B, H, Lk, D] tensors.
        self.cross_kv = bert.project_cross_kv(encoder_states)
        self.encoder_mask = encoder_mask

    @property
    def rows(self) -> int:
        return self.cache.rows

    @property
    def pos(self) -> torch.Tensor:
        """Position of the next token, int64 [1] on the device (= the current length)."""
        return self.cache.pos

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [N, t] at the cache position -> next-token logits [N, V] of the last one."""
        h = self.decoder.bert(
            ids, cross_kv=self.cross_kv, encoder_attention_mask=self.encoder_mask, is_decoder=True,
            kv_cache=self.cache,
        ).last_hidden_state
        return self.decoder.cls(h[:, -1])  # LM head on the last position only

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Run the prompt ids [N, P] (positions 0..P-1); returns logits [N, V] for position P."""
        if ids.shape[0] != self.rows:
            raise ValueError(f"prefill expects {self.rows} rows, got {ids.shape[0]}")
        if ids.shape[1] >= self.cache.max_len:
            raise ValueError(f"prompt of {ids.shape[1]} tokens leaves no room below max_length {self.cache.max_len}")
        self.cache.reset_()
        return self._forward(ids)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (int64 [N]) at the current position; returns logits [N, V].

        Fixed shapes and no host sync: the position lives on the device and advances there."""
        return self._forward(tokens.view(self.rows, 1))

    def reorder_(self, rows: torch.Tensor) -> None:
        """Row i continues row ``rows[i]`` (beam reorder): one gather into the same storage."""
        self.cache.reorder_(rows)

    def shape_key(self) -> tuple:
        """What a captured decode step depends on: rows, images, cache and K/V shapes and dtypes,
        whether an encoder mask is given."""
        kv = tuple(None if x is None else (tuple(x[0].shape), x[0].dtype) for x in self.cross_kv)
        mask = None if self.encoder_mask is None else (tuple(self.encoder_mask.shape), self.encoder_mask.dtype)
        return (self.images, tuple(self.cache.kv.shape), self.cache.kv.dtype, str(self.cache.kv.device), kv, mask)

    def load_(self, other: CachedDecoder) -> None:
        """Copy ``other``'s state (same :meth:`shape_key`) into this decoder's own buffers: the
        image K/V, the encoder mask, the self-attention cache and its position. A CUDA graph
        captured on this decoder then replays ``other``'s decode."""
        for mine, theirs in zip(self.cross_kv, other.cross_kv, strict=True):
            if mine is not None:
                mine[0].copy_(theirs[0])
                mine[1].copy_(theirs[1])
        if self.encoder_mask is not None:
            self.encoder_mask.copy_(other.encoder_mask)
        self.cache.kv.copy_(other.cache.kv)
        self.cache.pos.copy_(other.cache.pos)

    def keep_images(self, images: torch.Tensor) -> tuple[CachedDecoder, torch.Tensor]:
        """:meth:`keep_images_` on a new decoder object, leaving this one untouched (a captured
        CUDA graph may own its buffers). Returns (the new decoder, the kept rows)."""
        new = copy.copy(self)
        new.cache = copy.copy(self.cache)
        new.cache.pos = self.cache.pos.clone()
        return new, new.keep_images_(images)

    def keep_images_(self, images: torch.Tensor) -> torch.Tensor:
        """Drop every image not in ``images`` (int64 [B'], ascending local indices) with all of its
        G rows: finished captions stop costing compute. Shapes shrink, so a compiled or captured
        step sees a new shape; callers compact rarely (when at most half the images remain).
        Returns the kept rows (int64 [B' * G], local indices before the drop)."""
        g = self.rows // self.images
        rows = (images[:, None] * g + torch.arange(g, device=images.device)).view(-1)
        self.cross_kv = [None if kv is None else (kv[0].index_select(0, images), kv[1].index_select(0, images))
                         for kv in self.cross_kv]
        if self.encoder_mask is not None:
            self.encoder_mask = self.encoder_mask.index_select(0, images)
        self.cache.keep_rows_(rows)
        self.images = images.numel()
        return rows
