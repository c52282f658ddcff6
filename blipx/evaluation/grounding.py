"""Weakly supervised grounding evaluation: Grad-CAM maps scored against boxes or grid cells.

RefCOCO+ (salesforce/ALBEF ``dataset/utils.py`` ``grounding_eval`` and ``computeIoU``): each
expression's Grad-CAM map [grid, grid] is upsampled (bicubic) to the image's height x width;
every detection box [x, y, w, h] of the image scores ``sum(map[int(y):int(y+h),
int(x):int(x+w)]) / (w * h) ** alpha`` (alpha 0.5); the best box is a hit when its IoU with the
referred object's box is >= 0.5. Accuracy per split (``val_d``, ``testA_d``, ``testB_d``).
One departure: the official loop starts the best score at 0, so an expression whose every box
scores <= 0 reuses the previous expression's box; here the best box is the highest-scoring one
whatever its sign (the first one on ties, as the official ``>`` keeps it).

Shapes (:mod:`blipx.data.shapes_grounding`): a hit is a map whose peak patch lies in the
referred shape's cell of the scenes' 3x3 grid (:func:`peak_in_cell`); chance is 1 / the number
of shapes for a map that always peaks on some shape.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

SCENE_GRID = 3  # blipx.data.shapes: a 3x3 grid of cells


def compute_iou(box1: Sequence[float], box2: Sequence[float]) -> float:
    """IoU of two [x, y, w, h] boxes with the official pixel-inclusive convention (``computeIoU``)."""
    inter_x1 = max(box1[0], box2[0])
    inter_y1 = max(box1[1], box2[1])
    inter_x2 = min(box1[0] + box1[2] - 1, box2[0] + box2[2] - 1)
    inter_y2 = min(box1[1] + box1[3] - 1, box2[1] + box2[3] - 1)
    if inter_x1 < inter_x2 and inter_y1 < inter_y2:
        inter = (inter_x2 - inter_x1 + 1) * (inter_y2 - inter_y1 + 1)
    else:
        inter = 0
    union = box1[2] * box1[3] + box2[2] * box2[3] - inter
    return float(inter) / union


def upsample_map(cam: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[g, g] map -> [height, width] (bicubic, align_corners=False), as ``grounding_eval``."""
    g = cam.shape[-1]
    return F.interpolate(cam.float().reshape(1, 1, g, g), size=(int(height), int(width)), mode="bicubic").reshape(
        int(height), int(width))


def box_scores(mask: torch.Tensor, boxes: Sequence[Sequence[float]], alpha: float = 0.5) -> list[float]:
    """Score of each [x, y, w, h, ...] box on an image-sized map: the map's mass inside the box
    over ``area ** alpha`` (the official slicing ``int(y):int(y + h)``, ``int(x):int(x + w)``)."""
    out = []
    for det in boxes:
        x, y, w, h = (float(v) for v in det[:4])
        inside = mask[int(y):int(y + h), int(x):int(x + w)]
        out.append(float(inside.sum()) / (w * h) ** alpha if w * h > 0 else float("-inf"))
    return out


def best_box(cam: torch.Tensor, boxes: Sequence[Sequence[float]], height: int, width: int,
             alpha: float = 0.5) -> list[float] | None:
    """The detection box with the highest score (first on ties); None when there is none."""
    if not boxes:
        return None
    scores = box_scores(upsample_map(cam, height, width), boxes, alpha)
    best = max(range(len(boxes)), key=lambda i: (scores[i], -i))
    return list(boxes[best][:4])


def grounding_accuracy(predictions: Iterable[tuple[int, torch.Tensor]], refer, dets: dict[str, Any],
                       alpha: float = 0.5, iou_threshold: float = 0.5) -> dict[str, float]:
    """``grounding_eval``: ``predictions`` = (ref_id, map [g, g]) pairs; ``refer`` a
    :class:`blipx.data.grounding.Refer`; ``dets`` as :func:`~blipx.data.grounding.load_detections`.
    Returns ``{<split>_d: accuracy}`` for every split seen (official keys ``val_d``, ``testA_d``,
    ``testB_d``) and ``<split>_n`` (expressions scored)."""
    hits: dict[str, int] = {}
    counts: dict[str, int] = {}
    for ref_id, cam in predictions:
        ref = refer.refs[ref_id]
        image = refer.images[ref["image_id"]]
        box = best_box(cam, dets.get(str(ref["image_id"]), []), image["height"], image["width"], alpha)
        split = ref["split"]
        counts[split] = counts.get(split, 0) + 1
        hit = box is not None and compute_iou(refer.boxes[ref_id], box) >= iou_threshold
        hits[split] = hits.get(split, 0) + int(hit)
    out: dict[str, float] = {}
    for split in sorted(counts):
        out[f"{split}_d"] = hits[split] / counts[split]
        out[f"{split}_n"] = counts[split]
    return out


def peak_cell(cam: torch.Tensor, scene_grid: int = SCENE_GRID) -> tuple[int, int]:
    """(row, col) of the scene cell holding the centre of the map's highest patch (first on ties)."""
    g = cam.shape[-1]
    flat = int(cam.reshape(-1).argmax())  # host read: evaluation, once per map
    i, j = divmod(flat, g)
    return int((i + 0.5) * scene_grid / g), int((j + 0.5) * scene_grid / g)


def peak_in_cell(cam: torch.Tensor, cell: Sequence[int], scene_grid: int = SCENE_GRID) -> bool:
    """The shapes hit rule: the map's peak lies in grid cell ``cell`` = (row, col)."""
    return peak_cell(cam, scene_grid) == (int(cell[0]), int(cell[1]))


def gradcam_batches(model, loader: Iterable[dict[str, Any]], layer: int | None = None, device: str = "cpu"):
    """Yield (batch, maps [B, g, g] on the CPU) for each batch of a loader of
    :class:`~blipx.data.collate.ImageTextCollator` batches."""
    from blipx.models.gradcam import gradcam

    model.to(device)
    for batch in loader:
        if not batch.get("batch_size", 1):
            continue
        maps = gradcam(model, batch["pixel_values"].to(device), batch["input_ids"].to(device),
                       batch["attention_mask"].to(device), layer=layer)
        yield batch, maps.cpu()


def eval_shapes_grounding(model, num_samples: int = 500, layer: int | None = None, batch_size: int = 32,
                          device: str = "cpu", max_objects: int = 3, seed: int = 0) -> dict[str, Any]:
    """Hit rate (%) of the Grad-CAM peak on the referred shape's cell over the held-out test split
    of :class:`~blipx.data.shapes_grounding.ShapesGroundingDataset`, with chance (%), the
    per-number-of-shapes rates, and the layer used."""
    from torch.utils.data import DataLoader

    from blipx.data import ImageTextCollator, eval_transform
    from blipx.data.shapes_grounding import ShapesGroundingDataset
    from blipx.models.gradcam import default_layer
    from blipx.tokenizer import tokenizer_for

    size = model.config.vision.image_size
    ds = ShapesGroundingDataset("test", num_samples, image_size=size, max_objects=max_objects, seed=seed,
                                transform=eval_transform(size))
    collate = ImageTextCollator(tokenizer_for(model.config.family), max_length=35, padding="longest")
    keep = {"cell", "num_objects", "objects"}

    def with_truth(samples):
        b = collate(samples)
        b.update({k: [s[k] for s in samples] for k in keep})
        return b

    hits, on_shape, n, by_count = 0, 0, 0, {}
    chance = 0.0
    for batch, maps in gradcam_batches(model, DataLoader(ds, batch_size=batch_size, collate_fn=with_truth),
                                       layer, device):
        for cam, cell, k, objects in zip(maps, batch["cell"], batch["num_objects"], batch["objects"]):
            hit = peak_in_cell(cam, cell)
            hits += hit
            on_shape += peak_cell(cam) in {(o["row"], o["col"]) for o in objects}
            n += 1
            chance += 1 / k
            h, c = by_count.get(k, (0, 0))
            by_count[k] = (h + hit, c + 1)
    # on_shape: maps peaking on some shape, referred or not (the hit rate of a map that always
    # finds a shape but picks one at random is chance * on_shape / 100).
    return {"hits": 100 * hits / max(n, 1), "chance": 100 * chance / max(n, 1),
            "on_shape": 100 * on_shape / max(n, 1), "expressions": n,
            "layer": default_layer(model) if layer is None else layer,
            **{f"hits_{k}_shapes": 100 * h / c for k, (h, c) in sorted(by_count.items())}}


def eval_refcoco(model, ann_files: str | Sequence[str], refcoco_data: str | os.PathLike, det_file: str | os.PathLike,
                 image_root: str | os.PathLike | None = None, dataset: str = "refcoco+", split_by: str = "unc",
                 layer: int | None = None, batch_size: int = 32, device: str = "cpu", alpha: float = 0.5,
                 num_samples: int | None = None) -> dict[str, Any]:
    """The official RefCOCO+ protocol on test-format expression files (``Grounding.py`` ``val`` +
    ``grounding_eval``): Grad-CAM of every expression, best detection box, IoU >= 0.5."""
    from torch.utils.data import DataLoader, Subset

    from blipx.data import ImageTextCollator, eval_transform
    from blipx.data.grounding import GroundingDataset, Refer, load_detections
    from blipx.tokenizer import tokenizer_for

    files = ann_files.split(",") if isinstance(ann_files, str) else list(ann_files)
    size, family = model.config.vision.image_size, model.config.family
    ds = GroundingDataset(files, image_root or str(Path(files[0]).parent), transform=eval_transform(size),
                          mode="test", caption_style=family)
    if num_samples:
        ds = Subset(ds, range(min(num_samples, len(ds))))
    collate = ImageTextCollator(tokenizer_for(family), max_length=512 if family == "albef" else 35,
                                padding="longest")

    def with_refs(samples):
        b = collate(samples)
        b["ref_ids"] = [s["ref_id"] for s in samples if isinstance(s, dict)]
        return b

    refer, dets = Refer.load(refcoco_data, dataset, split_by), load_detections(det_file)
    preds = [(r, cam) for batch, maps in gradcam_batches(model, DataLoader(ds, batch_size=batch_size,
                                                                           collate_fn=with_refs), layer, device)
             for r, cam in zip(batch["ref_ids"], maps)]
    return {"expressions": len(preds), **grounding_accuracy(preds, refer, dets, alpha)}


def eval_grounding(model, data: str = "shapes_grounding", **kwargs) -> dict[str, Any]:
    """What ``blipx eval grounding`` runs: ``model`` (a model or checkpoint path, loaded as its
    family's retriever) on ``data`` = "shapes_grounding" (:func:`eval_shapes_grounding`) or
    comma-separated RefCOCO+ test files (:func:`eval_refcoco`; needs ``refcoco_data`` and
    ``det_file``)."""
    if isinstance(model, (str, os.PathLike)):
        from blipx.models import from_pretrained

        model = from_pretrained(str(model), task="retriever")
    if data == "shapes_grounding":
        allowed = {"num_samples", "layer", "batch_size", "device", "max_objects", "seed"}
        return eval_shapes_grounding(model, **{k: v for k, v in kwargs.items() if k in allowed and v is not None})
    for need in ("refcoco_data", "det_file"):
        if not kwargs.get(need):
            raise ValueError(f"RefCOCO+ evaluation needs {need} (the REFER data folder and dets.json)")
    allowed = {"refcoco_data", "det_file", "image_root", "dataset", "split_by", "layer", "batch_size", "device",
               "alpha", "num_samples"}
    return eval_refcoco(model, data, **{k: v for k, v in kwargs.items() if k in allowed and v is not None})


__all__ = ["best_box", "box_scores", "compute_iou", "eval_grounding", "eval_refcoco", "eval_shapes_grounding",
           "gradcam_batches", "grounding_accuracy", "peak_cell", "peak_in_cell", "upsample_map"]
