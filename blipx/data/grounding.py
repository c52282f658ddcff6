"""RefCOCO+ grounding data as salesforce/ALBEF ``Grounding.py`` reads it.

- Expression files (``refcoco+_train.json``, ``refcoco+_val.json``, ``refcoco+_test.json``): JSON
  lists of ``{"image": <path under image_root>, "text": <referring expression>, "ref_id": int}``
  (``dataset/grounding_dataset.py``). Training samples are (image, expression, image id) pairs,
  the id numbering distinct image *file names* (``image.split('/')[-1]``), for the ITC + ITM
  retrieval objective; test samples carry the ``ref_id``. Text is cleaned by ALBEF's
  ``pre_caption`` (30 words).
- The REFER annotations (``refTools/refer_python3.py``): ``<refcoco_data>/<dataset>/refs(<split_by>).p``
  (a pickled list of refs: ``ref_id``, ``ann_id``, ``image_id``, ``split`` ...) and
  ``instances.json`` (COCO images with ``height``/``width``, annotations with ``bbox`` [x, y, w, h]).
  The pickle is read with an unpickler that refuses every class and callable: the file holds
  only lists, dicts, strings and numbers, so nothing in it can run code.
- Detections (``dets.json``): ``{str(image_id): [[x, y, w, h, ...], ...]}``, the candidate boxes
  ``grounding_eval`` ranks.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from blipx.data.annotations import check_caption, iter_records
from blipx.data.images import BAD_RECORD, MAX_PIXELS, Skipped, read_image, warn_skipped
from blipx.data.transforms import apply_transform


class GroundingDataset(Dataset):
    """Referring expressions of ``ann_files`` over images under ``image_root``.

    ``mode="train"``: samples ``{"image", "caption", "image_id"}`` (one id per image file name, as
    ``grounding_dataset.py``), for :class:`~blipx.data.collate.ImageTextCollator` and the
    retrieval tasks. ``mode="test"``: ``{"image", "caption", "ref_id", "image_id"}``. Bad records
    and unreadable images are :class:`~blipx.data.images.Skipped` samples (dropped and counted
    by the collate).
    """

    def __init__(self, ann_files: str | os.PathLike | Sequence[str | os.PathLike], image_root: str | os.PathLike,
                 transform=None, mode: str = "train", max_words: int = 30, caption_style: str = "albef",
                 allow_outside_root: bool = False, max_pixels: int | None = MAX_PIXELS) -> None:
        if mode not in ("train", "test"):
            raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
        files = [ann_files] if isinstance(ann_files, (str, os.PathLike)) else list(ann_files)
        self.image_root, self.transform, self.mode = Path(image_root), transform, mode
        self._real_root = os.path.realpath(self.image_root)
        self.allow_outside_root, self.max_pixels = allow_outside_root, max_pixels
        self.records: list[tuple[str, str, Any]] = []  # (image path, cleaned text, ref_id)
        self.skipped: list[Skipped] = []
        self.img_ids: dict[str, int] = {}
        for f in files:
            for item in iter_records(f):
                rec = self._parse(item, max_words, caption_style)
                if isinstance(rec, Skipped):
                    self.skipped.append(rec)
                    continue
                self.img_ids.setdefault(rec[0].split("/")[-1], len(self.img_ids))
                self.records.append(rec)

    def _parse(self, item, max_words, style):
        if isinstance(item, Skipped):
            return item
        where, rec = item
        if not isinstance(rec, dict):
            return warn_skipped(Skipped(BAD_RECORD, where, f"record is a {type(rec).__name__}, not an object"))
        image = rec.get("image")
        if not isinstance(image, str) or not image:
            return warn_skipped(Skipped(BAD_RECORD, where, f"'image' is {image!r}, not a path"))
        ref_id = rec.get("ref_id")
        if self.mode == "test" and (isinstance(ref_id, bool) or not isinstance(ref_id, int)):
            return warn_skipped(Skipped(BAD_RECORD, where, f"'ref_id' is {ref_id!r}, not an integer"))
        text = check_caption(rec.get("text"), where, max_words, style)
        if isinstance(text, Skipped):
            return text
        return image, text, ref_id

    def __len__(self) -> int:
        return len(self.records) + len(self.skipped)

    def __getitem__(self, index: int) -> dict[str, Any] | Skipped:
        if index >= len(self.records):
            return self.skipped[index - len(self.records)]
        name, text, ref_id = self.records[index]
        image = read_image(self.image_root, name, self.allow_outside_root, self._real_root, self.max_pixels)
        if isinstance(image, Skipped):
            return image
        pixels, text = apply_transform(self.transform, image, text)
        sample = {"image": pixels, "caption": text, "image_id": self.img_ids[name.split("/")[-1]], "index": index}
        if self.mode == "test":
            sample["ref_id"] = ref_id
        return sample


class _DataOnlyUnpickler(pickle.Unpickler):
    """Builds lists, dicts, tuples, strings and numbers only; any class or callable is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a refs file holds plain data only")


def load_refs_pickle(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The list of refs in a REFER ``refs(<split_by>).p`` file (Python 2 pickles included)."""
    data = Path(path).read_bytes()
    refs = _DataOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise ValueError(f"{path}: expected a list of ref dicts, got {type(refs).__name__}")
    return refs


@dataclass
class Refer:
    """What ``grounding_eval`` reads from the REFER API: per ``ref_id`` the ``split`` and
    ``image_id`` (``refer.Refs``), the ground-truth box [x, y, w, h] (``refer.refToAnn[ref_id]
    ['bbox']``), and per image its ``height`` / ``width`` (``refer.Imgs``)."""

    refs: dict[int, dict[str, Any]]
    boxes: dict[int, list[float]]
    images: dict[int, dict[str, Any]]

    @classmethod
    def from_data(cls, refs: Sequence[dict[str, Any]], instances: dict[str, Any]) -> "Refer":
        anns = {a["id"]: a for a in instances["annotations"]}
        images = {im["id"]: im for im in instances["images"]}
        by_id = {r["ref_id"]: r for r in refs}
        boxes = {r["ref_id"]: anns[r["ann_id"]]["bbox"] for r in refs}
        return cls(by_id, boxes, images)

    @classmethod
    def load(cls, data_root: str | os.PathLike, dataset: str = "refcoco+", split_by: str = "unc") -> "Refer":
        """``REFER(data_root, dataset, split_by)``: ``<data_root>/<dataset>/refs(<split_by>).p`` and
        ``instances.json`` (a ``refs(<split_by>).json`` with the same list is read instead when
        present)."""
        d = Path(data_root) / dataset
        as_json = d / f"refs({split_by}).json"
        refs = json.loads(as_json.read_text(encoding="utf-8")) if as_json.is_file() \
            else load_refs_pickle(d / f"refs({split_by}).p")
        instances = json.loads((d / "instances.json").read_text(encoding="utf-8"))
        return cls.from_data(refs, instances)


def load_detections(path: str | os.PathLike) -> dict[str, list[list[float]]]:
    """``dets.json``: candidate boxes per image, keyed by ``str(image_id)``."""
    dets = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(dets, dict):
        raise ValueError(f"{path}: expected an object {{image_id: [[x, y, w, h, ...], ...]}}")
    return dets


__all__ = ["GroundingDataset", "Refer", "load_detections", "load_refs_pickle"]
