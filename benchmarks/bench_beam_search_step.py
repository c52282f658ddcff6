"""blipx.ops.beam_search_step at BLIP captioning size: 32 images x K = 3 beams, V = 30524.

Baseline: HF's vectorised beam step up to the top 2K (log_softmax + add running scores +
view(B, K*V) + topk(2K)), with and without the repetition-penalty gather/scatter. Reports ms and
the speed-up over the baseline.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decoding import BEAMS, Case, DecodeInputs, run_decode_bench  # noqa: E402
from harness import bench_main  # noqa: E402

import blipx  # noqa: E402


def hf_beam_step(logits, beam_scores, seq, k, penalty):
    """HF's _beam_search step up to the top-2K (processors: repetition penalty on the log-probs)."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    if penalty != 1.0:
        s = torch.gather(lp, 1, seq)
        s = torch.where(s < 0, s * penalty, s / penalty)
        lp = lp.scatter(1, seq, s)
    acc = (lp + beam_scores[:, None]).view(-1, k * lp.shape[1])
    scores, idx = torch.topk(acc, 2 * k, dim=1, largest=True, sorted=True)
    return scores, idx % lp.shape[1], idx // lp.shape[1]


def cases(x: DecodeInputs) -> list[Case]:
    logits, scores, seq = x.logits, x.beam_scores, x.seq
    return [
        (f"beam step K={BEAMS}", "log_softmax+add+view+topk", lambda: hf_beam_step(logits, scores, seq, BEAMS, 1.0),
         lambda: blipx.ops.beam_search_step(logits, scores, seq, BEAMS)),
        (f"beam step K={BEAMS} rep_penalty=1.1", "+ gather/scatter penalty",
         lambda: hf_beam_step(logits, scores, seq, BEAMS, 1.1),
         lambda: blipx.ops.beam_search_step(logits, scores, seq, BEAMS, repetition_penalty=1.1)),
    ]


def run(quick: bool = False, device: str | None = None) -> tuple[list[dict], list[str]]:
    return run_decode_bench("beam_search_step", cases, quick, device)


if __name__ == "__main__":
    raise SystemExit(bench_main(run, __doc__))
