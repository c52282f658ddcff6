"""Data: annotation files, WebDataset shards, the synthetic shapes dataset, transforms, collate.

``get_dataset(name, ...)`` builds a dataset by name (what the CLI uses):

- ``"shapes"``: :class:`ShapesDataset` (``split``, ``num_samples``, ``image_size``/``size``,
  ``noise``, ``seed``, ``transform``);
- ``"json"``: :class:`ImageTextDataset` (``ann_files``, ``image_root``, ...);
- ``"webdataset"``: :func:`webdataset_pairs` (``urls``, ...).
"""

from __future__ import annotations

from typing import Any

from blipx.data.annotations import ImageTextDataset, read_annotations, write_jsonl
from blipx.data.collate import ImageTextCollator, SkipCounter
from blipx.data.images import Skipped, decode_image, load_image
from blipx.data.shapes import ShapesDataset, caption_match_matrix, caption_matches, parse_caption
from blipx.data.shards import webdataset_pairs, write_shards
from blipx.data.text import pre_caption
from blipx.data.processing import CLIP_MEAN, CLIP_STD, ImageProcessor, eval_transform, image_processor
from blipx.data.transforms import OfficialRandAugment, TrainTransform, swap_left_right


def get_dataset(name: str, **kwargs: Any):
    """A dataset by name: "shapes", "json" or "webdataset" (keywords as the classes above)."""
    if name == "shapes":
        if "size" in kwargs:  # CLI-friendly alias
            kwargs["image_size"] = kwargs.pop("size")
        return ShapesDataset(**kwargs)
    if name == "json":
        return ImageTextDataset(**kwargs)
    if name == "webdataset":
        return webdataset_pairs(**kwargs)
    raise ValueError(f"unknown dataset {name!r}; choose from 'shapes', 'json', 'webdataset'")


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "ImageProcessor",
    "image_processor",
    "ImageTextCollator",
    "ImageTextDataset",
    "OfficialRandAugment",
    "ShapesDataset",
    "SkipCounter",
    "Skipped",
    "TrainTransform",
    "caption_match_matrix",
    "caption_matches",
    "decode_image",
    "eval_transform",
    "get_dataset",
    "load_image",
    "parse_caption",
    "pre_caption",
    "read_annotations",
    "swap_left_right",
    "webdataset_pairs",
    "write_jsonl",
    "write_shards",
]
