"""Decoding ops at BLIP captioning size: B = 96 rows (32 images x 3 beams), V = 30524, fp32 logits.

Sampling: HF's path (TemperatureLogitsWarper, TopPLogitsWarper = sort + softmax + cumsum +
scatter + masked_fill, then softmax + torch.multinomial) vs blipx.ops.sample_tokens, for nucleus
0.9 alone and with HF's implicit top_k=50. Beam step: HF's vectorised step (log_softmax + add
running scores + view(B, K*V) + topk(2K), plus the repetition-penalty gather/scatter when on) vs
blipx.ops.beam_search_step. Reports ms and the speed-up over the HF formulation.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Recorder, bench_main, time_fn  # noqa: E402

import blipx  # noqa: E402

IMAGES, BEAMS, VOCAB = 32, 3, 30524


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


def run(quick: bool = False, device: str | None = None) -> tuple[list[dict], list[str]]:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    vocab = 4099 if quick else VOCAB
    rows = IMAGES * BEAMS
    g = torch.Generator(device="cpu").manual_seed(0)
    logits = (torch.randn(rows, vocab, generator=g) * 3).to(dev)
    beam_scores = (-torch.rand(rows, generator=g) * 5).to(dev)
    seq = torch.randint(0, vocab, (rows, 12), generator=g).to(dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    iters = 5 if quick else (200 if dev.type == "cuda" else 20)
    rec = Recorder("decode", dev)

    cases = [
        ("sample top_p=0.9", "HF warpers + multinomial", lambda: hf_sample(logits, 1.0, 0, 0.9, gen),
         lambda: blipx.ops.sample_tokens(logits, 1.0, 0, 0.9, generator=gen)),
        ("sample top_k=50 top_p=0.9 T=0.7", "HF warpers + multinomial", lambda: hf_sample(logits, 0.7, 50, 0.9, gen),
         lambda: blipx.ops.sample_tokens(logits, 0.7, 50, 0.9, generator=gen)),
        ("greedy", "torch.argmax", lambda: logits.argmax(dim=1), lambda: blipx.ops.sample_tokens(logits, 0.0)),
        ("beam step K=3", "log_softmax+add+view+topk", lambda: hf_beam_step(logits, beam_scores, seq, BEAMS, 1.0),
         lambda: blipx.ops.beam_search_step(logits, beam_scores, seq, BEAMS)),
        ("beam step K=3 rep_penalty=1.1", "+ gather/scatter penalty",
         lambda: hf_beam_step(logits, beam_scores, seq, BEAMS, 1.1),
         lambda: blipx.ops.beam_search_step(logits, beam_scores, seq, BEAMS, repetition_penalty=1.1)),
    ]
    for op, torch_name, torch_fn, blipx_fn in cases:
        base = time_fn(torch_fn, dev, iters=iters)
        ours = time_fn(blipx_fn, dev, iters=iters)
        common = dict(op=op, rows=rows, vocab=vocab)
        rec.add(provider=torch_name, ms=base["ms"], p20_ms=base["p20_ms"], p80_ms=base["p80_ms"], speedup=1.0, **common)
        rec.add(provider="blipx", ms=ours["ms"], p20_ms=ours["p20_ms"], p80_ms=ours["p80_ms"],
                speedup=base["ms"] / ours["ms"], **common)
    return rec.rows, ["op", "provider", "rows", "vocab", "ms", "p20_ms", "p80_ms", "speedup", "device"]


if __name__ == "__main__":
    raise SystemExit(bench_main(run, __doc__))
