"""Batching of image-text samples: drop :class:`Skipped` samples (unreadable or oversized images,
bad annotation records, unreadable WebDataset shards), count them by reason, tokenize the captions.

This is the one place skips are counted, for every data source. Counting happens in the collate
because it runs inside the DataLoader worker and its output travels to the main process; a counter
kept on the dataset would stay in the worker.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from blipx.data.images import Skipped


def keep_samples(samples: Sequence[Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A batch's samples (dicts) and its header: ``batch_size``, ``num_skipped`` and ``skipped``
    ({reason: count} of the :class:`Skipped` entries, which every collate drops and counts)."""
    kept = [s for s in samples if isinstance(s, dict)]
    skipped = Counter(s.reason if isinstance(s, Skipped) else "unknown" for s in samples if not isinstance(s, dict))
    return kept, {"batch_size": len(kept), "num_skipped": len(samples) - len(kept), "skipped": dict(skipped)}


class ImageTextCollator:
    """``samples -> batch`` dict.

    Each sample is a dict with ``image`` (tensor [3, S, S]), ``caption`` (str), ``image_id``
    (int) and optionally ``is_noisy`` (bool); ``None`` or :class:`Skipped` samples are dropped.
    The batch has ``pixel_values`` [B, 3, S, S], ``input_ids`` / ``attention_mask`` [B, T],
    ``image_ids`` int64 [B], ``captions`` (list), ``is_noisy`` bool [B] (when every sample has
    it), ``num_skipped`` (int) and ``skipped`` ({reason: count}). A batch whose samples were all
    dropped has ``batch_size == 0`` and empty tensors: the trainer should log and skip it.

    ``padding``: "max_length" (official BLIP: 35 for retrieval, 30 for pretraining) or
    "longest" (official ALBEF pretraining, with ``max_length`` as the truncation limit).
    ``prompt`` is prepended to every caption before tokenizing (BLIP captioning: "a picture of ",
    as its ``coco_karpathy_train`` dataset does); ``captions`` stay without it.
    """

    def __init__(self, tokenizer, max_length: int = 35, padding: str = "max_length", prompt: str = "") -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.padding = padding
        self.prompt = prompt

    def __call__(self, samples: Sequence[Any]) -> dict[str, Any]:
        kept, batch = keep_samples(samples)
        batch.update({
            "captions": [s["caption"] for s in kept],
            "image_ids": torch.tensor([int(s["image_id"]) for s in kept], dtype=torch.long),
        })
        if not kept:
            batch["pixel_values"] = torch.empty(0)
            batch["input_ids"] = torch.empty(0, 0, dtype=torch.long)
            batch["attention_mask"] = torch.empty(0, 0, dtype=torch.long)
            return batch
        batch["pixel_values"] = torch.stack([s["image"] for s in kept])
        texts = [self.prompt + c for c in batch["captions"]]
        tok = self.tokenizer(
            texts, padding=self.padding, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        batch["input_ids"], batch["attention_mask"] = tok["input_ids"], tok["attention_mask"]
        if all("is_noisy" in s for s in kept):
            batch["is_noisy"] = torch.tensor([bool(s["is_noisy"]) for s in kept])
        return batch


class SkipCounter:
    """Running count of skipped samples over batches, by reason (for the trainer's logs):
    ``as_dict()`` gives ``samples_seen``, ``samples_skipped`` and ``skipped_<reason>``."""

    def __init__(self) -> None:
        self.seen = 0
        self.by_reason: Counter[str] = Counter()

    def update(self, batch: dict[str, Any]) -> None:
        self.seen += int(batch["batch_size"]) + int(batch["num_skipped"])
        self.by_reason.update(batch["skipped"])

    @property
    def skipped(self) -> int:
        return sum(self.by_reason.values())

    def as_dict(self) -> dict[str, int]:
        by_reason = {f"skipped_{k}": v for k, v in self.by_reason.items()}
        return {"samples_seen": self.seen, "samples_skipped": self.skipped, **by_reason}
