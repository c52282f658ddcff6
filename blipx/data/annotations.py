"""Image-text pairs from the official JSON / JSONL annotation format plus an image root.

Format (BLIP/ALBEF ``*.json`` files, or one such object per line in ``*.jsonl``)::

    [{"image": "rel/path.jpg", "caption": "a dog" | ["a dog", "a brown dog"], "image_id": 42}, ...]

``image_id`` is optional (the image path is used instead). As in the official datasets, every
distinct image gets a contiguous integer id in order of first appearance; retrieval losses and
evaluation use those ids as positives.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from blipx.data.images import Skipped, load_image
from blipx.data.text import pre_caption
from blipx.data.transforms import apply_transform


def read_annotations(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Entries of a ``.json`` (a list) or ``.jsonl`` (one object per line) annotation file."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in f if line.strip()]
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of annotations, got {type(data).__name__}")
    return data


def write_jsonl(entries: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Write annotations as JSONL (atomically: temp file + rename, so readers never see half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for e in entries:
            f.write(json.dumps(e) + "\n")
    os.replace(tmp, path)


class ImageTextDataset(Dataset):
    """Annotated image-text pairs.

    ``mode="pairs"`` (training, captioning eval): one sample per (image, caption), a list of
    captions expands into several samples. ``mode="images"`` (retrieval eval): one sample per
    image with its first caption; all captions are in :attr:`texts` with :attr:`txt2img` /
    :attr:`img2txt` (the official ``coco_karpathy_retrieval_eval`` layout).

    Samples are dicts (``image``, ``caption``, ``image_id``, ``index``, and ``is_noisy`` when the
    annotation has it) or :class:`Skipped` when the image cannot be read — pair with
    :class:`~blipx.data.collate.ImageTextCollator`, which drops and counts those.
    """

    def __init__(
        self,
        ann_files: str | os.PathLike | Sequence[str | os.PathLike],
        image_root: str | os.PathLike,
        transform=None,
        max_words: int = 30,
        caption_style: str = "blip",
        mode: str = "pairs",
    ) -> None:
        if mode not in ("pairs", "images"):
            raise ValueError(f"mode must be 'pairs' or 'images', got {mode!r}")
        files = [ann_files] if isinstance(ann_files, (str, os.PathLike)) else list(ann_files)
        self.image_root = Path(image_root)
        self.transform, self.mode = transform, mode
        self.image_paths: list[str] = []  # per distinct image
        self.texts: list[str] = []  # every caption, cleaned
        self.txt2img: list[int] = []
        self.img2txt: list[list[int]] = []
        self.noisy: list[bool | None] = []  # per caption, from an optional "is_noisy" field
        ids: dict[Any, int] = {}
        for f in files:
            for ann in read_annotations(f):
                key = ann.get("image_id", ann["image"])
                if key not in ids:
                    ids[key] = len(self.image_paths)
                    self.image_paths.append(ann["image"])
                    self.img2txt.append([])
                img = ids[key]
                caps = ann["caption"] if isinstance(ann["caption"], list) else [ann["caption"]]
                for cap in caps:
                    self.img2txt[img].append(len(self.texts))
                    self.texts.append(pre_caption(cap, max_words, caption_style))
                    self.txt2img.append(img)
                    self.noisy.append(ann.get("is_noisy"))

    def __len__(self) -> int:
        return len(self.texts) if self.mode == "pairs" else len(self.image_paths)

    def __getitem__(self, index: int) -> dict[str, Any] | Skipped:
        if self.mode == "pairs":
            text, img = index, self.txt2img[index]
        else:
            img = index
            text = self.img2txt[index][0]
        image = load_image(self.image_root / self.image_paths[img])
        if isinstance(image, Skipped):
            return image
        pixels, caption = apply_transform(self.transform, image, self.texts[text])
        sample = {"image": pixels, "caption": caption, "image_id": img, "index": index}
        if self.noisy[text] is not None:
            sample["is_noisy"] = bool(self.noisy[text])
        return sample
