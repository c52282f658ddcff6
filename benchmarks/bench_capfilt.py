"""CapFilt throughput: captions generated per second (nucleus, top_p 0.9) and pairs filtered per
second (ITM head), blipx vs the same pipeline written with HF transformers, on the same random
BLIP-base weights (384 px; ``--quick``: the tiny test config).

blipx: ``BlipCaptioner.generate`` (image K/V projected once, fused sampling) and
``BlipRetriever.itm_logits`` with every image's embeddings computed once for its K+1 captions.
HF: ``BlipForConditionalGeneration.generate(do_sample=True, top_p=0.9, top_k=0)`` and
``BlipForImageTextRetrieval(use_itm_head=True)`` on each (image, caption) pair.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_captioning import _hf_config  # noqa: E402
from harness import Recorder, bench_main, time_fn  # noqa: E402

from blipx.models import BlipCaptioner, BlipRetriever  # noqa: E402

K = 2  # captions per image scored by the filter: the web caption + one synthetic


def build(quick: bool, dev: torch.device, dtype: torch.dtype):
    from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval

    torch.manual_seed(0)
    hf_cap = BlipForConditionalGeneration(_hf_config(quick)).eval()
    hf_itm = BlipForImageTextRetrieval(_hf_config(quick)).eval()
    with tempfile.TemporaryDirectory() as d:
        hf_cap.save_pretrained(d + "/cap")
        hf_itm.save_pretrained(d + "/itm")
        ours_cap, ours_itm = BlipCaptioner.from_pretrained(d + "/cap"), BlipRetriever.from_pretrained(d + "/itm")
    move = lambda m: m.to(device=dev, dtype=dtype).eval()
    return move(hf_cap), move(hf_itm), move(ours_cap), move(ours_itm)


def run(quick: bool = False, device: str | None = None) -> tuple[list[dict], list[str]]:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    hf_cap, hf_itm, cap, itm = build(quick, dev, dtype)
    size = cap.config.vision.image_size
    batch = 4 if quick or dev.type == "cpu" else 64
    iters = 3 if quick or dev.type == "cpu" else 10
    px = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(dev, dtype)
    gen = dict(do_sample=True, top_p=0.9, top_k=0, max_length=30, min_length=30)  # 29 forced new tokens
    ids = torch.randint(1000, 3000, (batch * K, 30), device=dev)
    ids[:, 0] = 30523  # [ENC]
    mask = torch.ones_like(ids)
    rec = Recorder("capfilt", dev)

    def hf_filter():
        return hf_itm(input_ids=ids, attention_mask=mask, pixel_values=px.repeat_interleave(K, 0), use_itm_head=True)

    def ours_filter():
        return itm.itm_logits(itm.visual_encoder(px), ids, mask)  # K captions share each image

    with torch.no_grad():
        for stage, unit, fns, count in (
            ("caption", "captions_per_s", {"hf": lambda: hf_cap.generate(pixel_values=px, **gen),
                                           "blipx": lambda: cap.generate(px, **gen)}, batch),
            ("filter", "pairs_per_s", {"hf": hf_filter, "blipx": ours_filter}, batch * K),
        ):
            base = None
            for provider, fn in fns.items():
                t = time_fn(fn, dev, warmup=1, iters=iters)
                base = t["ms"] if provider == "hf" else base
                rec.add(provider=provider, stage=stage, batch=batch, image_size=size,
                        dtype=str(dtype).replace("torch.", ""), ms=t["ms"], p20_ms=t["p20_ms"], p80_ms=t["p80_ms"],
                        per_s=count * 1e3 / t["ms"], unit=unit, speedup=base / t["ms"])
    return rec.rows, ["provider", "stage", "batch", "image_size", "dtype", "ms", "p20_ms", "p80_ms", "per_s",
                      "unit", "speedup", "device"]


if __name__ == "__main__":
    raise SystemExit(bench_main(run, __doc__))
