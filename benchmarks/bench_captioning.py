"""End-to-end captioning: blipx ``BlipCaptioner.generate`` vs HF ``BlipForConditionalGeneration.generate``
on the same random weights (BLIP-base at 384 px, fp16 on CUDA; ``--quick``: the tiny test config at 32 px).

Modes: greedy, beam search (3 beams), nucleus sampling (top_p 0.9, top_k 0); every row is forced
to produce ``NEW_TOKENS`` tokens (min_length = max_length), so both sides run the same number of
decode steps. Reports ms per generate call, images/s, ms per decode step (the time difference
between runs of ``NEW_TOKENS`` and half as many tokens, so the vision encoder and the prefill
cancel out), the speed-up over HF, and whether the ids are identical (greedy and beam; sampling
draws from different RNG streams). On a shared CPU, run with OMP_NUM_THREADS=1: with idle-waiting
OpenMP threads the timings of these small ops mostly measure the scheduler.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Recorder, bench_main, time_fn  # noqa: E402

from blipx.models import BlipCaptioner  # noqa: E402

MODES = {
    "greedy": dict(),
    "beam3": dict(num_beams=3),
    "nucleus0.9": dict(do_sample=True, top_p=0.9, top_k=0),
}


def _hf_config(quick: bool):
    from transformers import BlipConfig

    if not quick:
        return BlipConfig()  # transformers' defaults are BLIP-base: ViT-B/16 at 384 px, BERT-base
    text = dict(
        vocab_size=30524, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, bos_token_id=30522, eos_token_id=2, pad_token_id=0, sep_token_id=102,
    )
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8, initializer_range=0.02)
    return BlipConfig(text_config=text, vision_config=vision, projection_dim=16, image_text_hidden_size=16)


def build_pair(quick: bool, device: torch.device, dtype: torch.dtype):
    """HF model and the blipx model loaded from its ``save_pretrained`` output."""
    from transformers import BlipForConditionalGeneration

    torch.manual_seed(0)
    hf = BlipForConditionalGeneration(_hf_config(quick)).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = BlipCaptioner.from_pretrained(d)
    return hf.to(device=device, dtype=dtype), ours.to(device=device, dtype=dtype)


def run(quick: bool = False, device: str | None = None) -> tuple[list[dict], list[str]]:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # fp16 on CUDA: the dtype of the H100 anchors (shared/reference/anchors-h100.md) and of issue #18
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    hf, ours = build_pair(quick, dev, dtype)
    size = ours.config.vision.image_size
    batches = [4] if quick else ([32, 1] if dev.type == "cuda" else [1])
    new_tokens = 10 if quick else 20
    iters = 5 if quick else (3 if dev.type == "cpu" else 10)
    rec = Recorder("captioning", dev)
    for batch in batches:
        px = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(dev, dtype)
        half = new_tokens // 2

        def forced(n):  # bos + exactly n new tokens
            return dict(max_length=1 + n, min_length=1 + n)

        for mode, kw in MODES.items():
            calls = {
                "hf": lambda n, kw=kw: hf.generate(pixel_values=px, **kw, **forced(n)),
                "blipx": lambda n, kw=kw: ours.generate(px, **kw, **forced(n)),
            }
            if dev.type == "cuda":  # the default captures each decode iteration; eager for comparison
                calls["blipx (no CUDA graph)"] = lambda n, kw=kw: ours.generate(px, cuda_graph=False, **kw, **forced(n))
            same = None
            if not kw.get("do_sample"):
                same = bool(torch.equal(calls["hf"](new_tokens).cpu(), calls["blipx"](new_tokens).cpu()))
            hf_ms = None
            for provider, fn in calls.items():
                t = time_fn(lambda: fn(new_tokens), dev, warmup=1, iters=iters)
                t_half = time_fn(lambda: fn(half), dev, warmup=0, iters=iters)
                hf_ms = t["ms"] if provider == "hf" else hf_ms
                rec.add(
                    provider=provider, mode=mode, batch=batch, image_size=size, new_tokens=new_tokens,
                    dtype=str(dtype).replace("torch.", ""), ms=t["ms"], p20_ms=t["p20_ms"], p80_ms=t["p80_ms"],
                    images_per_s=batch * 1e3 / t["ms"], ms_per_step=(t["ms"] - t_half["ms"]) / (new_tokens - half),
                    speedup=hf_ms / t["ms"], ids_equal="" if same is None else same,
                )
    cols = ["provider", "mode", "batch", "image_size", "new_tokens", "dtype", "ms", "p20_ms", "p80_ms",
            "images_per_s", "ms_per_step", "speedup", "ids_equal", "device"]
    return rec.rows, cols


if __name__ == "__main__":
    raise SystemExit(bench_main(run, __doc__))
