"""Entry point: decode from a ``BertLMHead`` decoder over encoder states (image embeddings for
captioning, question states for VQA), with Hugging Face ``generate`` semantics."""

from __future__ import annotations

import torch

from blipx import ops
from blipx.generation import graphs as graphs_mod
from blipx.generation.beam import beam_search
from blipx.generation.cache import CachedDecoder
from blipx.generation.config import GenerationSettings, resolve
from blipx.generation.outputs import GenerateOutput
from blipx.generation.processors import LogitsProcessors
from blipx.generation.sample import greedy_or_sample
from blipx.layers.bert import BertLMHead


def check_pixel_values(pixel_values: torch.Tensor) -> None:
    """The models' ``generate`` take normalised float pixel values; a uint8 image tensor would
    be read as pixel values in [0, 255] and give a caption of noise without any error."""
    if not isinstance(pixel_values, torch.Tensor) or not pixel_values.is_floating_point():
        is_tensor = isinstance(pixel_values, torch.Tensor)
        got = f"a {pixel_values.dtype} tensor" if is_tensor else type(pixel_values).__name__
        raise TypeError(
            f"generate() takes normalised float pixel values [B, 3, S, S], got {got}. Pass images (PIL, "
            "uint8 arrays or tensors, paths) to BlipCaptioner.caption(), or turn them into pixel values "
            "with blipx.data.image_processor(family, image_size)."
        )


def _empty(s: GenerationSettings, prompt_ids: torch.Tensor) -> torch.Tensor | GenerateOutput:
    """The result for a batch of 0 images: [0, P] ids (nothing was generated), and empty scores."""
    ids = prompt_ids[:0]
    if not s.return_dict:
        return ids
    beam = s.num_beams > 1
    return GenerateOutput(
        sequences=ids,
        scores=() if s.output_scores else None,
        sequences_scores=torch.zeros(0, device=ids.device) if beam else None,
        beam_indices=torch.zeros(0, 0, dtype=torch.int32, device=ids.device) if beam else None,
    )


def _check_finite(encoder_states: torch.Tensor) -> None:
    """Non-finite encoder states make every logit NaN: greedy then returns [PAD] rows and sampling
    fails on an index, so both refuse it here, before the loop. One host sync per call (not per
    step); the error path pays a second to name the images."""
    if bool(torch.isfinite(encoder_states).all()):
        return
    bad = (~torch.isfinite(encoder_states)).flatten(1).any(dim=1).nonzero().flatten().tolist()
    raise ValueError(
        f"generate(): the encoder states of batch rows {bad} are not finite (NaN or inf): their input "
        "(pixel values, or the question for VQA) holds NaN/inf, or the model's weights overflowed"
    )


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
) -> torch.Tensor | GenerateOutput:
    """Token ids [B * n, P + new] (prompt included), n = ``num_return_sequences``; with
    ``return_dict=True`` a :class:`~blipx.generation.outputs.GenerateOutput` (ids, and the
    scores of HF's ``generate(return_dict_in_generate=True, output_scores=...)``).

    encoder_states [B, Lk, W]; prompt_ids int64 [B, P], already in decoder form (bos first,
    HF's trailing [SEP] dropped); encoder_mask [B, Lk] (1 = keep) or None (all keys).
    ``kwargs``: ``num_beams, do_sample, temperature, top_k, top_p, repetition_penalty,
    length_penalty, min_length, min_new_tokens, max_length, max_new_tokens,
    num_return_sequences, early_stopping, no_repeat_ngram_size, bad_words_ids, return_dict,
    output_scores`` with HF's meanings and defaults (top_k 50, 20 new tokens), and blipx's
    ``compact``, ``cuda_graph`` and ``check_every``, checked by
    :func:`~blipx.generation.config.resolve`. eos / pad default to the decoder text config's
    ``sep_token_id`` ([SEP]) and ``pad_token_id`` ([PAD]).

    A batch of 0 returns [0, P] ids. Non-finite encoder states (NaN / inf pixels) raise
    ValueError, whatever the decoding mode.

    The decode iterations (:mod:`blipx.generation.loop`) read no host value; ``cuda_graph``
    (default: on for CUDA tensors, off on the CPU; True on the CPU is refused) captures one per
    (batch, beams, max length, settings) in a CUDA graph and replays it, across calls too
    (:mod:`blipx.generation.graphs`). "All finished" is read every ``check_every`` steps
    (default 1 on the CPU, 4 on CUDA); the ids do not depend on it.
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
        vocab_size=cfg.vocab_size,
        **kwargs,
    )
    prompt_ids = prompt_ids.to(device=encoder_states.device, dtype=torch.long)
    if b == 0:
        return _empty(s, prompt_ids)
    dev = encoder_states.device
    on_cuda = graphs_mod.supported(dev)
    if s.cuda_graph and not on_cuda:
        raise ValueError(f"cuda_graph=True needs CUDA tensors, got encoder states on {dev} (pass cuda_graph=None "
                         "or False on the CPU, where the same decode iteration runs without capture)")
    _check_finite(encoder_states)
    processors = LogitsProcessors(s, cfg.vocab_size, dev)
    rows = b * s.rows_per_input
    dec = CachedDecoder(decoder, encoder_states, rows, s.max_length, encoder_mask)
    check_every = s.check_every or (4 if on_cuda else 1)
    graphs = None
    if s.cuda_graph if s.cuda_graph is not None else on_cuda:
        # Everything a captured iteration depends on besides the run's shapes.
        key = (s, generator is not None, graphs_mod.weights_key(decoder), ops.use_kernels(), ops.dispatch.mode())
        graphs = graphs_mod.graphs_for(decoder, dev).bind(key, generator)
    if s.num_beams > 1:
        return beam_search(dec, prompt_ids, s, processors, check_every=check_every, graphs=graphs)
    # Sampling with n return sequences: n rows per image, sharing its K/V (G = n).
    return greedy_or_sample(dec, prompt_ids.repeat_interleave(s.rows_per_input, dim=0), s, processors, generator,
                            check_every=check_every, graphs=graphs)
