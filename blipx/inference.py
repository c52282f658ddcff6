"""Running a trained model over image files: what ``blipx caption`` (and later the other
inference commands) call. Images go through the model's own preprocessing
(:meth:`BlipCaptioner.caption` -> :func:`blipx.data.image_processor`), so a file gives the same
pixels, and the same caption, through the Python API and through the command line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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


def caption_files(captioner, paths: list[Path], batch_size: int = 16, prompt: str | None = None,
                  **generate_kwargs) -> Iterator[list[dict]]:
    """Caption ``paths`` in batches; yields, per batch, one row per path: ``{"image", "caption"}``
    or ``{"image", "error"}`` for a file that cannot be read (the run goes on)."""
    from blipx.data import Skipped, load_image

    for start in range(0, len(paths), batch_size):
        rows, images, slots = [], [], []
        for p in paths[start:start + batch_size]:
            img = load_image(p)
            if isinstance(img, Skipped):
                rows.append({"image": str(p), "error": img.reason})
            else:
                slots.append(len(rows))
                rows.append({"image": str(p)})
                images.append(img)
        if images:
            for i, c in zip(slots, captioner.caption(images, prompt, **generate_kwargs)):
                rows[i]["caption"] = c
        yield rows
