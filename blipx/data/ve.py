"""SNLI-VE data in the official format (salesforce/ALBEF ``dataset/ve_dataset.py``).

An annotation file (``ve_train.json``, ``ve_dev.json``, ``ve_test.json``) is a JSON list of
``{"image": <Flickr30k id, no extension>, "sentence": <hypothesis>, "label": "entailment" |
"neutral" | "contradiction"}``; the image is ``<image_root>/<image>.jpg`` and the sentence is
cleaned by ALBEF's ``pre_caption`` (30 words). Labels map as the official dict does:
contradiction 0, neutral 1, entailment 2 (:data:`LABELS`).

Records come from the web: a record that is not an object, lacks a field, has an unknown label
or a sentence with no word, and an image that cannot be read or lies outside ``image_root``,
become :class:`~blipx.data.images.Skipped` samples that :class:`VeCollator` drops and counts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from blipx.data.annotations import check_caption, iter_records
from blipx.data.collate import ImageTextCollator
from blipx.data.images import BAD_RECORD, MAX_PIXELS, Skipped, read_image, warn_skipped
from blipx.data.transforms import apply_transform

# The official label ids (ve_dataset.py: {'entailment': 2, 'neutral': 1, 'contradiction': 0}).
LABELS = {"contradiction": 0, "neutral": 1, "entailment": 2}
LABEL_NAMES = tuple(sorted(LABELS, key=LABELS.get))  # index -> name


class VeDataset(Dataset):
    """Official SNLI-VE annotations -> samples ``{"image", "caption" (the cleaned sentence),
    "label" (int), "image_id", "index"}``; ``caption_style`` "albef" (the official cleaning) or
    "blip". ``image_ext``: appended to the record's image id (official ``'%s.jpg'``; "" when
    the records carry file names)."""

    def __init__(self, ann_files: str | os.PathLike | Sequence[str | os.PathLike], image_root: str | os.PathLike,
                 transform=None, max_words: int = 30, caption_style: str = "albef", image_ext: str = ".jpg",
                 allow_outside_root: bool = False, max_pixels: int | None = MAX_PIXELS) -> None:
        files = [ann_files] if isinstance(ann_files, (str, os.PathLike)) else list(ann_files)
        self.image_root, self.transform, self.image_ext = Path(image_root), transform, image_ext
        self._real_root = os.path.realpath(self.image_root)
        self.allow_outside_root, self.max_pixels = allow_outside_root, max_pixels
        self.records: list[tuple[str, str, int]] = []  # (image file, cleaned sentence, label)
        self.skipped: list[Skipped] = []
        image_ids: dict[str, int] = {}
        for f in files:
            for item in iter_records(f):
                rec = self._parse(item, max_words, caption_style)
                if isinstance(rec, Skipped):
                    self.skipped.append(rec)
                else:
                    image_ids.setdefault(rec[0], len(image_ids))
                    self.records.append(rec)
        self.image_ids = image_ids

    def _parse(self, item, max_words, style) -> tuple[str, str, int] | Skipped:
        if isinstance(item, Skipped):
            return item
        where, rec = item
        if not isinstance(rec, dict):
            return warn_skipped(Skipped(BAD_RECORD, where, f"record is a {type(rec).__name__}, not an object"))
        image, label = rec.get("image"), rec.get("label")
        if not isinstance(image, (str, int)) or isinstance(image, bool) or image == "":
            return warn_skipped(Skipped(BAD_RECORD, where, f"'image' is {image!r}, not an image id"))
        if label not in LABELS:
            return warn_skipped(Skipped(BAD_RECORD, where, f"'label' is {label!r}, not one of {sorted(LABELS)}"))
        text = check_caption(rec.get("sentence"), where, max_words, style)
        if isinstance(text, Skipped):
            return text
        return f"{image}{self.image_ext}", text, LABELS[label]

    def __len__(self) -> int:
        return len(self.records) + len(self.skipped)

    def __getitem__(self, index: int) -> dict[str, Any] | Skipped:
        if index >= len(self.records):  # refused records are counted once per epoch, as images are
            return self.skipped[index - len(self.records)]
        name, sentence, label = self.records[index]
        image = read_image(self.image_root, name, self.allow_outside_root, self._real_root, self.max_pixels)
        if isinstance(image, Skipped):
            return image
        pixels, sentence = apply_transform(self.transform, image, sentence)
        return {"image": pixels, "caption": sentence, "label": label, "image_id": self.image_ids[name],
                "index": index}


class VeCollator:
    """VE samples -> :class:`~blipx.data.collate.ImageTextCollator`'s batch (sentences tokenized
    padded to the longest, as VE.py does; truncated at ``max_length``) plus ``labels`` int64 [B]."""

    def __init__(self, tokenizer, max_length: int = 64) -> None:
        self.inner = ImageTextCollator(tokenizer, max_length=max_length, padding="longest")

    def __call__(self, samples: Sequence[Any]) -> dict[str, Any]:
        batch = self.inner(samples)
        kept = [s for s in samples if isinstance(s, dict)]
        batch["labels"] = torch.tensor([int(s["label"]) for s in kept], dtype=torch.long)
        return batch


__all__ = ["LABELS", "LABEL_NAMES", "VeCollator", "VeDataset"]
