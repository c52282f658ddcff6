"""Batched decoding for BLIP's text decoders: greedy, sampling and beam search with HF
``generate`` semantics, a static self-attention KV cache and one image K/V per image."""

from blipx.generation.cache import CachedDecoder
from blipx.generation.config import GenerationSettings, resolve
from blipx.generation.generate import check_pixel_values, generate
from blipx.generation.outputs import GenerateOutput
from blipx.layers.attention import StaticKVCache

__all__ = [
    "CachedDecoder", "GenerateOutput", "GenerationSettings", "StaticKVCache", "check_pixel_values", "generate",
    "resolve",
]
