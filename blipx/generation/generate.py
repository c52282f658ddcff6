"""Entry point: decode from a ``BertLMHead`` decoder over encoder states (image embeddings for
captioning, question states for VQA), with Hugging Face ``generate`` semantics."""

from __future__ import annotations

import torch

from blipx.generation.beam import beam_search
from blipx.generation.cache import CachedDecoder
from blipx.generation.config import GenerationSettings, resolve
from blipx.generation.sample import greedy_or_sample
from blipx.layers.bert import BertLMHead


@torch.no_grad()
def generate(
    decoder: BertLMHead,
    encoder_states: torch.Tensor,
    prompt_ids: torch.Tensor,
    *,
    encoder_mask: torch.Tensor | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    generator: torch.Generator | None = None,
    **kwargs,
) -> torch.Tensor:
    """Token ids [B * n, P + new] (prompt included), n = ``num_return_sequences``.

    encoder_states [B, Lk, W]; prompt_ids int64 [B, P], already in decoder form (bos first,
    HF's trailing [SEP] dropped); encoder_mask [B, Lk] (1 = keep) or None (all keys).
    ``kwargs``: ``num_beams, do_sample, temperature, top_k, top_p, repetition_penalty,
    length_penalty, min_length, min_new_tokens, max_length, max_new_tokens,
    num_return_sequences, early_stopping`` with HF's meanings and defaults (top_k 50,
    20 new tokens). eos / pad default to the decoder config's [SEP] (102) and [PAD] (0).
    """
    cfg = decoder.bert.config
    b, p = prompt_ids.shape
    if encoder_states.shape[0] != b:
        raise ValueError(f"{b} prompts for {encoder_states.shape[0]} encoder rows")
    s: GenerationSettings = resolve(
        p,
        cfg.max_position_embeddings,
        eos_token_id=cfg.sep_token_id if eos_token_id is None else eos_token_id,
        pad_token_id=cfg.pad_token_id if pad_token_id is None else pad_token_id,
        **kwargs,
    )
    rows = b * s.rows_per_input
    dec = CachedDecoder(decoder, encoder_states, rows, s.max_length, encoder_mask)
    prompt_ids = prompt_ids.to(device=encoder_states.device, dtype=torch.long)
    if s.num_beams > 1:
        return beam_search(dec, prompt_ids, s)
    # Sampling with n return sequences: n rows per image, sharing its K/V (G = n).
    return greedy_or_sample(dec, prompt_ids.repeat_interleave(s.rows_per_input, dim=0), s, generator)
