"""blipx.ops.sample_tokens at BLIP captioning size: B = 96 rows (32 images x 3 beams), V = 30524.

Baseline: HF's sampling path (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper = sort +
softmax + cumsum + scatter + masked_fill, then softmax + torch.multinomial), for nucleus 0.9 alone
and with HF's implicit top_k=50 at T=0.7; greedy against torch.argmax. Reports ms and the
speed-up over the baseline.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decoding import Case, DecodeInputs, run_decode_bench  # noqa: E402
from harness import bench_main  # noqa: E402

import blipx  # noqa: E402


def hf_sample(logits, temperature, top_k, top_p, gen):
    """HF's warpers in their order, then softmax + multinomial (transformers logits_process.py)."""
    scores = logits / temperature
    if top_k:
        scores = scores.masked_fill(scores < torch.topk(scores, top_k)[0][..., -1, None], float("-inf"))
    sorted_logits, sorted_idx = torch.sort(scores, descending=False)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cum <= (1 - top_p)
    remove[..., -1:] = 0
    scores = scores.masked_fill(remove.scatter(1, sorted_idx, remove), float("-inf"))
    return torch.multinomial(scores.softmax(dim=-1), 1, generator=gen).squeeze(1)


def cases(x: DecodeInputs) -> list[Case]:
    logits, gen = x.logits, x.gen
    return [
        ("sample top_p=0.9", "HF warpers + multinomial", lambda: hf_sample(logits, 1.0, 0, 0.9, gen),
         lambda: blipx.ops.sample_tokens(logits, 1.0, 0, 0.9, generator=gen)),
        ("sample top_k=50 top_p=0.9 T=0.7", "HF warpers + multinomial", lambda: hf_sample(logits, 0.7, 50, 0.9, gen),
         lambda: blipx.ops.sample_tokens(logits, 0.7, 50, 0.9, generator=gen)),
        ("greedy", "torch.argmax", lambda: logits.argmax(dim=1), lambda: blipx.ops.sample_tokens(logits, 0.0)),
    ]


def run(quick: bool = False, device: str | None = None) -> tuple[list[dict], list[str]]:
    return run_decode_bench("sample_tokens", cases, quick, device)


if __name__ == "__main__":
    raise SystemExit(bench_main(run, __doc__))
