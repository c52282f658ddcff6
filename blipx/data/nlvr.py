"""NLVR2 data in the official JSON format (salesforce/BLIP ``data/nlvr_dataset.py``, salesforce/ALBEF
``dataset/nlvr_dataset.py``).

An annotation file is a JSON list (or JSONL) of ``{"images": [left, right], "sentence": str,
"label": "True" | "False"}`` with image paths relative to ``image_root`` (the official
``nlvr_train.json`` / ``nlvr_dev.json`` / ``nlvr_test.json``; dev and test-P are scored alike).
The sentence is cleaned by the family's ``pre_caption`` (BLIP: 40 words, ALBEF: 30); the label
is 1 for ``"True"`` (a JSON ``true`` is read the same way) and 0 otherwise, as there.

BLIP's dataset swaps the two images at random (``swap=True``): when the sentence has the word
'left' or 'right', those words are swapped too, so the statement keeps its truth. The official
loader does this in every split; blipx does it where asked (training), so evaluation is
deterministic. Unreadable images, paths outside ``image_root`` and bad records become
:class:`~blipx.data.images.Skipped` samples, dropped and counted by :class:`NlvrCollator`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from blipx.data.annotations import check_caption, iter_records
from blipx.data.collate import keep_samples
from blipx.data.images import BAD_RECORD, MAX_PIXELS, Skipped, read_image, warn_skipped

# salesforce/BLIP nlvr_dataset.py: pre_caption(sentence, 40); salesforce/ALBEF: max_words = 30.
MAX_WORDS = {"blip": 40, "albef": 30}


def swap_pair(image0: Any, image1: Any, sentence: str) -> tuple[Any, Any, str]:
    """The official swap (blip nlvr_dataset.py): (image1, image0) and, when the sentence has the
    word 'left' or 'right' (split on single spaces), each of those words replaced by the other."""
    words = sentence.split(" ")
    if "left" not in words and "right" not in words:
        return image1, image0, sentence
    return image1, image0, " ".join({"left": "right", "right": "left"}.get(w, w) for w in words)


def maybe_swap(sample: dict[str, Any]) -> dict[str, Any]:
    """``sample`` swapped with probability 0.5 (torch's generator: the trainer seeds it per sample,
    so a run's swaps do not depend on worker layout or resumes)."""
    if torch.rand(()) < 0.5:
        sample["image0"], sample["image1"], sample["sentence"] = swap_pair(
            sample["image0"], sample["image1"], sample["sentence"])
    return sample


def nlvr_label(value: Any) -> int:
    """Official: ``1 if ann['label'] == 'True' else 0`` (JSON ``true`` read as 'True')."""
    return int(value == "True" or value is True)


class NlvrDataset(Dataset):
    """Official NLVR2 annotations. A sample: ``image0`` / ``image1`` (``transform`` outputs),
    ``sentence`` (cleaned), ``label`` (1 = true), ``index``; or :class:`Skipped`."""

    def __init__(self, ann_files: str | os.PathLike | Sequence[str | os.PathLike], image_root: str | os.PathLike,
                 transform=None, family: str = "blip", swap: bool = False, allow_outside_root: bool = False,
                 max_pixels: int | None = MAX_PIXELS) -> None:
        if family not in MAX_WORDS:
            raise ValueError(f"family must be 'blip' or 'albef', got {family!r}")
        files = [ann_files] if isinstance(ann_files, (str, os.PathLike)) else list(ann_files)
        self.image_root, self._real_root = Path(image_root), os.path.realpath(image_root)
        self.transform, self.family, self.swap = transform, family, bool(swap)
        self.allow_outside_root, self.max_pixels = allow_outside_root, max_pixels
        self.records: list[dict[str, Any] | Skipped] = []
        for f in files:
            for item in iter_records(f):
                self.records.append(item if isinstance(item, Skipped) else self._parse(*item))

    def _parse(self, where: str, record: Any) -> dict[str, Any] | Skipped:
        def bad(why: str) -> Skipped:
            return warn_skipped(Skipped(BAD_RECORD, where, why))

        if not isinstance(record, dict):
            return bad(f"record is a {type(record).__name__}, not an object")
        images = record.get("images")
        if not isinstance(images, list) or len(images) != 2 or not all(isinstance(p, str) and p for p in images):
            return bad(f"'images' must be a list of two paths, got {images!r}")
        sentence = check_caption(record.get("sentence"), where, MAX_WORDS[self.family], self.family)
        if isinstance(sentence, Skipped):
            return sentence
        if "label" not in record:
            return bad("no 'label' field")
        return {"images": images, "sentence": sentence, "label": nlvr_label(record["label"])}

    def __len__(self) -> int:
        return len(self.records)

    def _image(self, name: str):
        image = read_image(self.image_root, name, self.allow_outside_root, self._real_root, self.max_pixels)
        if isinstance(image, Skipped) or self.transform is None:
            return image
        return self.transform(image)

    def __getitem__(self, index: int) -> dict[str, Any] | Skipped:
        rec = self.records[index]
        if isinstance(rec, Skipped):
            return rec
        images = [self._image(p) for p in rec["images"]]
        bad = next((im for im in images if isinstance(im, Skipped)), None)
        if bad is not None:
            return bad
        sample = {"image0": images[0], "image1": images[1], "sentence": rec["sentence"], "label": rec["label"],
                  "index": index}
        return maybe_swap(sample) if self.swap else sample


class NlvrCollator:
    """NLVR samples -> a batch (the official loops' ``torch.cat([image0, image1])`` and
    ``tokenizer(text, padding='longest')``): ``pixel_values`` [2B, 3, S, S] (left images, then
    right images), ``input_ids`` / ``attention_mask`` [B, T] padded to the longest
    (``max_length`` truncates, e.g. at the model's position-embedding count; the official
    loops do not truncate), ``labels`` int64 [B], ``sentences``; skipped samples are dropped and
    counted (``batch_size``, ``num_skipped``, ``skipped``). Extra per-sample fields of the
    synthetic data (``kind``) come as lists."""

    def __init__(self, tokenizer, max_length: int | None = None) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, samples: Sequence[Any]) -> dict[str, Any]:
        kept, batch = keep_samples(samples)
        if not kept:
            return batch
        batch["pixel_values"] = torch.stack([s["image0"] for s in kept] + [s["image1"] for s in kept])
        trunc = dict(truncation=True, max_length=self.max_length) if self.max_length else {}
        tok = self.tokenizer([s["sentence"] for s in kept], padding="longest", return_tensors="pt", **trunc)
        batch["input_ids"], batch["attention_mask"] = tok["input_ids"], tok["attention_mask"]
        batch["labels"] = torch.tensor([int(s["label"]) for s in kept], dtype=torch.long)
        batch["sentences"] = [s["sentence"] for s in kept]
        if "kind" in kept[0]:
            batch["kinds"] = [s["kind"] for s in kept]
        return batch


__all__ = ["MAX_WORDS", "NlvrCollator", "NlvrDataset", "maybe_swap", "nlvr_label", "swap_pair"]
