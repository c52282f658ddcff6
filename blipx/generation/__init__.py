"""Batched decoding for BLIP's text decoders: greedy, sampling and beam search with HF
``generate`` semantics, a static self-attention KV cache and one image K/V per image."""

from blipx.generation.cache import CachedDecoder, StaticKVCache
from blipx.generation.config import GenerationSettings, resolve
from blipx.generation.generate import generate

__all__ = ["CachedDecoder", "GenerationSettings", "StaticKVCache", "generate", "resolve"]
