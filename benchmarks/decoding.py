"""What bench_sample_tokens.py and bench_beam_search_step.py share: BLIP captioning's decode shape
(32 images x 3 beams = 96 rows over V = 30524 fp32 logits; V = 4099 with --quick), one seeded set
of inputs, and the table of baseline vs blipx per case with the speed-up over the baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from harness import Recorder, time_providers

IMAGES, BEAMS, VOCAB = 32, 3, 30524

# (op label, baseline provider name, baseline callable, blipx callable)
Case = tuple[str, str, Callable[[], object], Callable[[], object]]


@dataclass
class DecodeInputs:
    logits: torch.Tensor  # [rows, vocab] fp32, spread like real logits (std 3)
    beam_scores: torch.Tensor  # [rows] running log-prob sums (<= 0)
    seq: torch.Tensor  # [rows, 12] generated ids so far (for the repetition penalty)
    gen: torch.Generator  # on the device: the samplers draw from it
    rows: int
    vocab: int


def decode_inputs(dev: torch.device, quick: bool) -> DecodeInputs:
    vocab = 4099 if quick else VOCAB
    rows = IMAGES * BEAMS
    g = torch.Generator(device="cpu").manual_seed(0)
    logits = (torch.randn(rows, vocab, generator=g) * 3).to(dev)
    beam_scores = (-torch.rand(rows, generator=g) * 5).to(dev)
    seq = torch.randint(0, vocab, (rows, 12), generator=g).to(dev)
    return DecodeInputs(logits, beam_scores, seq, torch.Generator(device=dev).manual_seed(0), rows, vocab)


def run_decode_bench(bench: str, make_cases: Callable[[DecodeInputs], list[Case]], quick: bool,
                     device: str | None) -> tuple[list[dict], list[str]]:
    """Time every case's baseline, then blipx, on the same inputs: two rows per case."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    x = decode_inputs(dev, quick)
    iters = 5 if quick else (200 if dev.type == "cuda" else 20)
    rec = Recorder(bench, dev)
    for op, base_name, base_fn, blipx_fn in make_cases(x):
        time_providers(rec, {base_name: base_fn, "blipx": blipx_fn}, dev, iters=iters, baseline=base_name,
                       op=op, rows=x.rows, vocab=x.vocab)
    return rec.rows, ["op", "provider", "rows", "vocab", "ms", "p20_ms", "p80_ms", "speedup", "device"]
