"""``blipx caption IMAGES...``: caption image files or folders with a BLIP captioner, JSONL out."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def collect_images(inputs: list[str]) -> list[Path]:
    """Files as given, folders searched recursively for image files (sorted)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(p)
    return out


def run_caption(images: list[str], model: str, beams: int = 3, top_p: float | None = None, batch_size: int = 16,
                out: str | None = None, prompt: str | None = None, device: str = "auto", max_length: int = 30,
                min_length: int = 5, progress: bool = True) -> list[dict]:
    from blipx.data import Skipped, eval_transform, load_image
    from blipx.models import BlipCaptioner
    from blipx.models.downstream import load_model_as

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    captioner = load_model_as(BlipCaptioner, model).to(dev).eval()
    transform = eval_transform(captioner.config.vision.image_size)
    # Official decoding settings: beam search 3 beams, or nucleus sampling with top_p (BLIP's generate).
    kw = dict(max_length=max_length, min_length=min_length)
    kw.update(dict(do_sample=True, top_p=top_p, top_k=0) if top_p is not None else dict(num_beams=beams))
    paths = collect_images(images)
    rows: list[dict] = []
    sink = open(out, "w", encoding="utf-8") if out else None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="img", desc="caption")
    try:
        for start in range(0, len(paths), batch_size):
            batch = []
            for p in paths[start:start + batch_size]:
                img = load_image(p)
                if isinstance(img, Skipped):
                    print(f"blipx caption: skipped {p} ({img.reason})", file=sys.stderr)
                    rows.append({"image": str(p), "error": img.reason})
                else:
                    batch.append((p, transform(img)))
            if batch:
                captions = captioner.caption(torch.stack([t for _, t in batch]).to(dev), prompt, **kw)
                for (p, _), c in zip(batch, captions):
                    rows.append({"image": str(p), "caption": c})
                    if sink:
                        sink.write(json.dumps(rows[-1]) + "\n")
            if bar is not None:
                bar.update(len(paths[start:start + batch_size]))
    finally:
        if bar is not None:
            bar.close()
        if sink:
            sink.close()
    return rows
