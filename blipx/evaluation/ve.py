"""Visual entailment evaluation: accuracy of the 3-way prediction (salesforce/ALBEF ``VE.py``
``evaluate``: ``argmax(logits) == target``, averaged over the examples), per class too."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from blipx.data.ve import LABEL_NAMES


def ve_accuracy(predictions: Sequence[int] | torch.Tensor, labels: Sequence[int] | torch.Tensor) -> dict[str, Any]:
    """``{"accuracy": %, "examples": n, "<class>": % per class present}`` of predicted vs true
    class ids (0 contradiction, 1 neutral, 2 entailment)."""
    p = torch.as_tensor(predictions, dtype=torch.long).reshape(-1)
    y = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"{p.numel()} predictions for {y.numel()} labels")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= len(LABEL_NAMES)):
        raise ValueError(f"labels must be class ids 0..{len(LABEL_NAMES) - 1}")
    out: dict[str, Any] = {"accuracy": 100 * float((p == y).float().mean()) if y.numel() else 0.0,
                           "examples": int(y.numel())}
    for c, name in enumerate(LABEL_NAMES):
        sel = y == c
        if sel.any():
            out[name] = 100 * float((p[sel] == c).float().mean())
    return out


@torch.no_grad()
def predict_ve(model, loader: Iterable[dict[str, Any]], device: str = "cpu") -> dict[str, list]:
    """Predicted classes of a VE model over a loader of :class:`~blipx.data.ve.VeCollator`
    batches: ``{"predictions", "labels", "sentences"}`` (lists, in loader order)."""
    model.eval().to(device)
    out: dict[str, list] = {"predictions": [], "labels": [], "sentences": []}
    for batch in loader:
        if not batch.get("batch_size", 1):
            continue
        logits = model(batch["pixel_values"].to(device), batch["input_ids"].to(device),
                       batch["attention_mask"].to(device)).logits
        out["predictions"] += logits.argmax(dim=1).tolist()  # host copy, once per batch
        out["labels"] += batch["labels"].tolist()
        out["sentences"] += batch["captions"]
    return out


def eval_ve(model, data: str = "shapes_ve", *, num_samples: int | None = None, image_root: str | None = None,
            batch_size: int = 64, device: str = "cpu", max_objects: int | None = None) -> tuple[dict, dict]:
    """What ``blipx eval ve`` runs: ``(metrics, predictions)`` of a VE model (a model or a
    checkpoint path, loaded as its family's VE model) on the held-out shapes-VE statements
    (``data="shapes_ve"``) or official SNLI-VE JSON files (comma-separated; images
    ``<image_root>/<image>.jpg``)."""
    from torch.utils.data import DataLoader, Subset

    from blipx.data import eval_transform
    from blipx.data.shapes_ve import ShapesVeDataset
    from blipx.data.ve import VeCollator, VeDataset
    from blipx.models import from_pretrained
    from blipx.tokenizer import tokenizer_for

    if isinstance(model, (str, os.PathLike)):
        model = from_pretrained(str(model), task="ve")
    family, size = model.config.family, model.config.vision.image_size
    if data == "shapes_ve":
        opts = {k: v for k, v in (("num_samples", num_samples), ("max_objects", max_objects)) if v}
        ds = ShapesVeDataset("test", image_size=size, transform=eval_transform(size), **opts)
    else:
        files = data.split(",")
        ds = VeDataset(files, image_root or str(Path(files[0]).parent), transform=eval_transform(size),
                       caption_style=family)
        if num_samples:
            ds = Subset(ds, range(min(num_samples, len(ds))))
    loader = DataLoader(ds, batch_size=batch_size, collate_fn=VeCollator(tokenizer_for(family)))
    pred = predict_ve(model, loader, device)
    return ve_accuracy(pred["predictions"], pred["labels"]), pred


__all__ = ["eval_ve", "predict_ve", "ve_accuracy"]
