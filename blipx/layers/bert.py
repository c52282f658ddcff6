"""BERT / BLIP-MED text tower (post-LN), with the module names of the BERT checkpoints.

One class serves every text role of ALBEF and BLIP:
- unimodal text encoder (``mode="text"``; ALBEF runs only its first ``fusion_layer`` layers),
- image-grounded encoder (``mode="multimodal"``) and ALBEF's fusion pass (``mode="fusion"``,
  layers ``fusion_layer..`` on given hidden states),
- causal decoder (``is_decoder=True``), optionally over a static self-attention KV cache
  (:meth:`BertModel.new_kv_cache`): the same forward runs training, prefill and one-token steps.
Cross-attention K/V can be projected once (:meth:`BertModel.project_cross_kv`) and passed in
as ``cross_kv``; query rows may be a multiple G of the image rows (beams, or the candidate
answers of a question, share its K/V through the grouped cross-attention op).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from blipx.layers.attention import BertCrossAttention, BertSelfAttention, StaticKVCache, self_attention_mask
from blipx.layers.configs import TextConfig

KV = tuple[torch.Tensor, torch.Tensor]


@dataclass
class TextOutput:
    last_hidden_state: torch.Tensor


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        if cfg.type_vocab_size > 0:
            self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids [N, t] at ``positions`` (int64 [t], default 0..t-1; the cache's device-side
        slots when decoding)."""
        if positions is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]
        if hasattr(self, "token_type_embeddings"):
            # ALBEF always uses type 0; a 0-row index avoids building a zeros tensor of ids.
            if token_type_ids is None:
                x = x + self.token_type_embeddings.weight[0]
            else:
                x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class BertIntermediate(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class BertOutput(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertLayer(nn.Module):
    def __init__(self, cfg: TextConfig, cross: bool) -> None:
        super().__init__()
        h, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.attention = BertSelfAttention(h, cfg.num_heads, eps, cfg.hidden_dropout, cfg.attention_dropout)
        if cross:
            self.crossattention = BertCrossAttention(h, cfg.encoder_width, cfg.num_heads, eps, cfg.hidden_dropout)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertOutput(cfg)

    def forward(self, x, mask, cross_kv=None, cross_mask=None, kv_cache=None, positions=None):
        x = self.attention(x, mask, kv_cache, positions)
        if cross_kv is not None:
            x = self.crossattention(x, cross_kv, cross_mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg, cross=i >= cfg.fusion_layer) for i in range(cfg.num_layers))


class BertModel(nn.Module):
    """``embeddings`` + ``encoder.layer.{i}`` (no pooler: none of the ALBEF/BLIP heads use it)."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)

    def _layer_range(self, mode: str) -> range:
        n, f = self.config.num_layers, self.config.fusion_layer
        if mode == "text":
            return range(f if f > 0 else n)
        if mode == "multimodal":
            return range(n)
        if mode == "fusion":
            return range(f, n)
        raise ValueError(f"mode must be 'text', 'multimodal' or 'fusion', got {mode!r}")

    def project_cross_kv(self, encoder_hidden_states: torch.Tensor) -> list[KV | None]:
        """Image K/V of every cross-attention layer (None for text-only layers); reusable across
        decoding steps and across all beams of an image."""
        return [
            lyr.crossattention.project_kv(encoder_hidden_states) if hasattr(lyr, "crossattention") else None
            for lyr in self.encoder.layer
        ]

    def new_kv_cache(self, rows: int, max_len: int) -> StaticKVCache:
        """An empty static self-attention cache for ``rows`` sequences of up to ``max_len`` tokens
        (the weights' dtype and device), to pass as ``kv_cache`` with ``is_decoder=True``."""
        cfg = self.config
        if max_len > cfg.max_position_embeddings:
            raise ValueError(f"max_length {max_len} exceeds max_position_embeddings {cfg.max_position_embeddings}")
        w = self.embeddings.word_embeddings.weight
        heads = cfg.num_heads
        return StaticKVCache(cfg.num_layers, rows, heads, max_len, cfg.hidden_size // heads, w.dtype, w.device)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cross_kv: list[KV | None] | None = None,
        mode: str = "multimodal",
        is_decoder: bool = False,
        kv_cache: StaticKVCache | None = None,
        token_type_ids: torch.Tensor | None = None,
        hidden_states: torch.Tensor | None = None,
    ) -> TextOutput:
        """Run the layers selected by ``mode``.

        input_ids [B*G, T] (or ``hidden_states`` [B*G, T, H] for ``mode="fusion"``);
        attention_mask [B*G, T] (with ``kv_cache``: [B*G, T_max], over the cache slots), 1 = keep;
        encoder_hidden_states [B, Lk, W] or precomputed ``cross_kv``; encoder_attention_mask
        [B, Lk], 1 = keep. Cross-attention runs only in "multimodal"/"fusion" modes.

        ``kv_cache`` (causal only): the T tokens sit at the cache's device-side position; their
        K/V are written there, attention reads every slot under the position mask, and the
        position advances by T (prefill = T prompt tokens, a decode step = one token).
        """
        layers = self._layer_range(mode)
        if mode == "fusion" and hidden_states is None:
            raise ValueError("mode='fusion' needs hidden_states (the text-mode output)")
        if kv_cache is not None and not is_decoder:
            raise ValueError("kv_cache serves causal decoding only (is_decoder=True)")
        tokens = hidden_states if mode == "fusion" else input_ids
        t = tokens.shape[1]
        if kv_cache is None:
            positions = key_pos = torch.arange(t, device=tokens.device)
        else:
            positions, key_pos = kv_cache.positions(t), kv_cache.key_pos
        x = hidden_states if mode == "fusion" else self.embeddings(input_ids, positions, token_type_ids)
        mask = self_attention_mask(attention_mask, positions, key_pos, is_decoder)
        use_cross = mode != "text"
        if use_cross and cross_kv is None:
            if encoder_hidden_states is None:
                raise ValueError(f"mode={mode!r} needs encoder_hidden_states or cross_kv")
            cross_kv = self.project_cross_kv(encoder_hidden_states)
        cross_mask = None
        if use_cross and encoder_attention_mask is not None:
            cross_mask = ~encoder_attention_mask.to(torch.bool)
        for i in layers:
            ckv = cross_kv[i] if use_cross else None
            layer_cache = None if kv_cache is None else kv_cache.layers[i]
            x = self.encoder.layer[i](x, mask, ckv, cross_mask, layer_cache, positions)
        if kv_cache is not None:
            kv_cache.advance_(t)
        return TextOutput(x)


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = nn.GELU()
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(cfg)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size)
        # One Parameter under both names, as in the checkpoints (``bias`` and ``decoder.bias``).
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.decoder.bias = self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x))


class BertOnlyMLMHead(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictions(x)


class BertLMHead(nn.Module):
    """``bert`` + ``cls`` (MLM / LM head) with the output matrix tied to the word embeddings.

    Used as BLIP's ``text_decoder`` (causal) and ALBEF's pretraining ``text_encoder`` (MLM).
    """

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.bert = BertModel(cfg)
        self.cls = BertOnlyMLMHead(cfg)
        self.tie_weights()

    def tie_weights(self) -> None:
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, **kw):
        """Returns (logits [B*G, T, V], TextOutput); keywords as :meth:`BertModel.forward`."""
        out = self.bert(input_ids, attention_mask, **kw)
        return self.cls(out.last_hidden_state), out
