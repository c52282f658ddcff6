"""Momentum EMA over a ViT-B/16 + BERT-base shaped parameter list (ALBEF/BLIP momentum encoders).

Providers: the official per-parameter loop, torch._foreach_mul_ + _foreach_add_,
torch._foreach_lerp_, one lerp_ over a flat buffer (the practical limit), the reference twin,
and blipx.ops.momentum_update_. Reports ms, GB/s at 12 B/element (fp32 read ema + read param +
write ema) and the fraction of a device-to-device copy's bandwidth measured in the same run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Recorder, bench_main, time_fn  # noqa: E402

import blipx  # noqa: E402
from blipx.ops.reference import momentum_update_ref  # noqa: E402

MOMENTUM = 0.995


def vit_bert_shapes(width: int = 768, layers: int = 12, vocab: int = 30524, image_tokens: int = 577,
                    cross_layers: int = 9) -> list[tuple[int, ...]]:
    """Parameter shapes of ViT-B/16 (384 px) + BERT-base whose last ``cross_layers`` layers
    carry cross-attention: 216.7M parameters in 441 tensors at the defaults, the size of the
    list behind the H100 anchors (ALBEF's 6 fusion layers give 209.6M, BLIP's 12 give 223.8M)."""
    w, f = width, 4 * width
    shapes: list[tuple[int, ...]] = [(w, 3, 16, 16), (w,), (1, 1, w), (1, image_tokens, w)]
    for _ in range(layers):  # ViT block: norm1, qkv, proj, norm2, fc1, fc2
        shapes += [(w,), (w,), (3 * w, w), (3 * w,), (w, w), (w,), (w,), (w,), (f, w), (f,), (w, f), (w,)]
    shapes += [(w,), (w,)]
    shapes += [(vocab, w), (512, w), (2, w), (w,), (w,)]  # BERT embeddings + LN
    attn = [(w, w), (w,), (w, w), (w,), (w, w), (w,), (w, w), (w,), (w,), (w,)]  # q k v o + LN
    for i in range(layers):
        shapes += attn
        if i >= layers - cross_layers:
            shapes += attn
        shapes += [(f, w), (f,), (w, f), (w,), (w,), (w,)]
    shapes += [(256, w), (256,), (256, w), (256,)]  # ITC projections
    return shapes


def make_lists(shapes, device, dtype=torch.float32):
    gen = torch.Generator(device="cpu").manual_seed(0)
    ema = [torch.randn(s, generator=gen).to(device=device, dtype=dtype) for s in shapes]
    par = [torch.randn(s, generator=gen).to(device=device, dtype=dtype) for s in shapes]
    return ema, par


def run(quick: bool = False, device: str | None = None) -> tuple[list[dict], list[str]]:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shapes = vit_bert_shapes(layers=2, vocab=4096) if quick else vit_bert_shapes()
    ema, par = make_lists(shapes, dev)
    numel = sum(e.numel() for e in ema)
    nbytes = 12 * numel
    flat_e = torch.cat([e.reshape(-1) for e in ema])
    flat_p = torch.cat([p.reshape(-1) for p in par])
    big = torch.empty(max(numel, 1 << 28), device=dev)  # >= 1 GiB for the copy ceiling
    big_dst = torch.empty_like(big)
    iters = 5 if quick else (50 if dev.type == "cuda" else 10)

    def official_loop():
        for e, p in zip(ema, par):
            e.data = e.data * MOMENTUM + p.data * (1.0 - MOMENTUM)

    providers = {
        "official loop": official_loop,
        "foreach mul+add": lambda: (torch._foreach_mul_(ema, MOMENTUM), torch._foreach_add_(ema, par, alpha=1 - MOMENTUM)),
        "foreach lerp": lambda: torch._foreach_lerp_(ema, par, 1 - MOMENTUM),
        "flat lerp_ (limit)": lambda: flat_e.lerp_(flat_p, 1 - MOMENTUM),
        "reference": lambda: momentum_update_ref(ema, par, MOMENTUM),
        "blipx": lambda: blipx.ops.momentum_update_(ema, par, MOMENTUM),
    }
    rec = Recorder("momentum_update", dev)
    copy_t = time_fn(lambda: big_dst.copy_(big), dev, iters=iters)
    copy_gbs = 8 * big.numel() / copy_t["ms"] / 1e6
    rec.add(provider="d2d copy (ceiling)", params_M=big.numel() / 1e6, ms=copy_t["ms"], p20_ms=copy_t["p20_ms"],
            p80_ms=copy_t["p80_ms"], GBps=copy_gbs, frac_copy=1.0)
    for name, fn in providers.items():
        t = time_fn(fn, dev, iters=iters)
        gbs = nbytes / t["ms"] / 1e6
        rec.add(provider=name, params_M=numel / 1e6, tensors=len(shapes), ms=t["ms"], p20_ms=t["p20_ms"],
                p80_ms=t["p80_ms"], GBps=gbs, frac_copy=gbs / copy_gbs)
    return rec.rows, ["provider", "params_M", "ms", "p20_ms", "p80_ms", "GBps", "frac_copy", "device"]


if __name__ == "__main__":
    raise SystemExit(bench_main(run, __doc__))
