"""What ``generate(..., return_dict=True)`` returns: HF's ``GenerateDecoderOnlyOutput`` /
``GenerateBeamDecoderOnlyOutput`` fields that blipx computes."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GenerateOutput:
    """``sequences``: the ids ``generate`` returns without ``return_dict`` ([B * n, P + new]).

    ``scores`` (with ``output_scores=True``): one fp32 [B * rows, V] tensor per generated step,
    HF's ``scores`` -- the processed logits the token was chosen from in greedy search (after the
    repetition penalty, n-gram / bad-word bans and the min-length ban) and in sampling (also after
    temperature, top-k and top-p, removed tokens at -inf); in beam search the processed log-probs
    of each running beam before its running score is added (rows b*K + beam, in the order of the
    running beams at that step). Rows of finished sequences are included, as in HF.

    ``sequences_scores`` (beam search): fp32 [B * n], each returned hypothesis's
    ``sum of log-probs / generated_len ** length_penalty`` (HF's; HF returns it only with
    ``output_scores``, blipx with every ``return_dict``). ``beam_indices`` (beam search): int
    [B * n, new], the flat row (image * K + beam) each generated token came from, -1 past a
    hypothesis's end (HF's; with ``scores`` it gives ``compute_transition_scores``)."""

    sequences: torch.Tensor
    scores: tuple[torch.Tensor, ...] | None = None
    sequences_scores: torch.Tensor | None = None
    beam_indices: torch.Tensor | None = None
