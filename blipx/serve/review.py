"""Reading a ``blipx capfilt`` output folder for the review page.

The folder's layout is :mod:`blipx.capfilt.pipeline`'s: ``chunks/chunk-*.jsonl`` hold one row per
(image, caption) with ``source`` ("web" or "synthetic"), ``itm_score`` and ``kept``, plus
``"skipped"`` rows; ``settings.json`` records the run (threshold, input file); ``report.json`` and
``scores.png`` are written by :func:`blipx.capfilt.merge_and_report`. The rows are read with the
report's own reader and re-read when a chunk file changes (a run still in progress shows up as it
goes).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Decision = Literal["all", "kept", "dropped"]
Source = Literal["all", "web", "synthetic"]


@dataclass
class ReviewImage:
    """One image of the run with all of its captions (rows in chunk order: web first)."""

    image: str
    image_id: Any
    captions: list[dict] = field(default_factory=list)


@dataclass
class ReviewPage:
    images: list[tuple[ReviewImage, list[bool]]]  # each with, per caption, whether it passes the filter
    total_images: int  # images with at least one caption passing the filter
    total_captions: int  # captions passing the filter
    page: int
    pages: int


class CapfiltFolder:
    """A CapFilt output folder (``out_dir``); ``image_root``: where its rows' image paths live
    (default: the image folder ``settings.json`` records; a run written before blipx recorded
    it: the folder of its input file, ``blipx capfilt``'s own default for ``--image-root``)."""

    def __init__(self, out_dir: str | os.PathLike, image_root: str | os.PathLike | None = None) -> None:
        self.out = Path(out_dir)
        if not (self.out / "chunks").is_dir():
            raise FileNotFoundError(f"--capfilt: {os.fspath(out_dir)!r} is not a blipx capfilt output folder "
                                    "(it has no chunks/ folder)")
        self.settings: dict = {}
        if (self.out / "settings.json").is_file():
            self.settings = json.loads((self.out / "settings.json").read_text(encoding="utf-8"))
        if image_root is None:
            recorded = self.settings.get("input") or {}
            src = recorded.get("path")
            if not recorded.get("image_root") and not src:
                raise ValueError(f"--capfilt-images: {os.fspath(out_dir)!r} does not record its image folder; "
                                 "pass the image folder the run read")
            image_root = recorded.get("image_root") or os.path.dirname(src)
        self.image_root = Path(image_root)
        self._lock = threading.Lock()
        self._signature: tuple | None = None
        self._images: list[ReviewImage] = []
        self._names: frozenset[str] = frozenset()
        self._skipped: list[dict] = []

    @property
    def threshold(self) -> float | None:
        return (self.settings.get("settings") or {}).get("threshold")

    def _load(self) -> None:
        from blipx.capfilt.report import read_rows

        files = sorted((self.out / "chunks").glob("chunk-*.jsonl"))
        signature = tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files)
        if signature == self._signature:
            return
        by_image: dict[str, ReviewImage] = {}
        skipped = []
        for r in read_rows(self.out):
            if r.get("source") not in ("web", "synthetic"):
                skipped.append(r)
                continue
            entry = by_image.get(r["image"])
            if entry is None:
                entry = by_image[r["image"]] = ReviewImage(r["image"], r.get("image_id"))
            entry.captions.append({"caption": r["caption"], "source": r["source"],
                                   "itm_score": float(r["itm_score"]), "kept": bool(r["kept"])})
        self._images, self._skipped = list(by_image.values()), skipped
        self._names = frozenset(by_image)
        self._signature = signature

    def image_names(self) -> frozenset[str]:
        """The image paths the run's rows name: the only ones the review page serves."""
        with self._lock:
            self._load()
            return self._names

    def skipped(self) -> list[dict]:
        with self._lock:
            self._load()
            return list(self._skipped)

    def report(self) -> dict | None:
        path = self.out / "report.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def histogram(self) -> Path | None:
        path = self.out / "scores.png"
        return path if path.is_file() else None

    def query(self, decision: Decision = "all", source: Source = "all", min_score: float = 0.0,
              max_score: float = 1.0, page: int = 1, per_page: int = 48) -> ReviewPage:
        """Images with at least one caption of ``source`` whose decision is ``decision`` and whose
        ITM score lies in [min_score, max_score]; every caption of such an image is listed, with
        whether it passes."""
        with self._lock:
            self._load()
            images = self._images

        def passes(c: dict) -> bool:
            return ((decision == "all" or c["kept"] == (decision == "kept"))
                    and (source == "all" or c["source"] == source)
                    and min_score <= c["itm_score"] <= max_score)

        matched, n_captions = [], 0
        for img in images:
            flags = [passes(c) for c in img.captions]
            if any(flags):
                matched.append((img, flags))
                n_captions += sum(flags)
        pages = max(1, -(-len(matched) // per_page))
        page = min(max(1, page), pages)
        return ReviewPage(matched[(page - 1) * per_page:page * per_page], len(matched), n_captions, page, pages)
