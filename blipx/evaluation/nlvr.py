"""NLVR2 evaluation: accuracy of the true/false prediction, as salesforce/BLIP ``train_nlvr.py`` and
salesforce/ALBEF ``NLVR.py`` ``evaluate`` compute it (``prediction.max(1)`` against the label,
averaged over the statements) on dev or test-P (the same protocol, another file).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch


def nlvr_accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Accuracy in % of predicted classes (1 = true) against the labels."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("nlvr_accuracy: no statements")
    return 100.0 * sum(int(p) == int(y) for p, y in zip(predictions, labels)) / len(labels)


@torch.no_grad()
def predict_nlvr(model, loader: Iterable[dict[str, Any]], device: torch.device | str = "cpu") -> dict[str, list]:
    """The predicted class of every statement of ``loader`` (:class:`blipx.data.nlvr.NlvrCollator`
    batches) by a :class:`~blipx.models.BlipNlvr` / :class:`~blipx.models.AlbefNlvr`:
    ``{"predictions", "labels", "sentences", "kinds"}`` (lists, in loader order; ``kinds`` only
    for the synthetic data)."""
    model.eval().to(device)
    out: dict[str, list] = {"predictions": [], "labels": [], "sentences": [], "kinds": []}
    for batch in loader:
        if not batch.get("batch_size", 1):
            continue
        px, ids, mask = (batch[k].to(device) for k in ("pixel_values", "input_ids", "attention_mask"))
        pred = model(px, ids, mask).argmax(dim=1)
        out["predictions"] += pred.tolist()  # host copy, once per batch
        out["labels"] += batch["labels"].tolist()
        out["sentences"] += batch["sentences"]
        out["kinds"] += batch.get("kinds", [])
    return out


def eval_nlvr(model, data: str = "shapes_nlvr", *, image_root: str | None = None, num_samples: int | None = None,
              max_objects: int | None = None, batch_size: int = 32, device: str = "cpu"):
    """What ``blipx eval nlvr2`` runs: ``(metrics, predictions)`` of an NLVR2 model (a model or a
    checkpoint path, loaded as its family's NLVR model) on the held-out shapes-NLVR2 statements
    (``data="shapes_nlvr"``: its test split) or an official NLVR2 JSON file (dev / test-P;
    images under ``image_root``, default the file's folder). Metrics: ``accuracy`` (%),
    ``statements``, ``skipped``, ``chance`` (the majority class, %), and per kind of synthetic
    statement."""
    from torch.utils.data import DataLoader, Subset

    from blipx.data import eval_transform
    from blipx.data.nlvr import NlvrCollator, NlvrDataset
    from blipx.data.shapes_nlvr import ShapesNlvrDataset
    from blipx.models import from_pretrained
    from blipx.tokenizer import tokenizer_for

    if isinstance(model, (str, os.PathLike)):
        model = from_pretrained(str(model), task="nlvr")
    family, size = model.config.family, model.config.vision.image_size
    if data == "shapes_nlvr":
        opts = {k: v for k, v in (("num_samples", num_samples), ("max_objects", max_objects)) if v}
        ds = ShapesNlvrDataset("test", image_size=size, transform=eval_transform(size), family=family, **opts)
    else:
        ds = NlvrDataset(data, image_root or str(Path(data).parent), transform=eval_transform(size), family=family)
        if num_samples:
            ds = Subset(ds, range(min(num_samples, len(ds))))
    collate = NlvrCollator(tokenizer_for(family), max_length=model.config.text.max_position_embeddings)
    skipped = 0

    def counted(batch):
        nonlocal skipped
        skipped += batch["num_skipped"]
        return batch

    loader = (counted(b) for b in DataLoader(ds, batch_size=batch_size, collate_fn=collate))
    pred = predict_nlvr(model, loader, device)
    labels = pred["labels"]
    metrics: dict[str, Any] = {"statements": len(labels), "skipped": skipped}
    if labels:
        metrics["accuracy"] = nlvr_accuracy(pred["predictions"], labels)
        metrics["chance"] = 100.0 * max(sum(labels), len(labels) - sum(labels)) / len(labels)
    if pred["kinds"]:
        by_kind: dict[str, list[int]] = defaultdict(list)
        for p, y, k in zip(pred["predictions"], labels, pred["kinds"], strict=True):
            by_kind[k].append(int(p == y))
        metrics["by_kind"] = {k: 100.0 * sum(v) / len(v) for k, v in sorted(by_kind.items())}
    return metrics, pred


__all__ = ["eval_nlvr", "nlvr_accuracy", "predict_nlvr"]
