"""Visual-entailment fine-tuning on the task contract of :mod:`blipx.train.task` (salesforce/ALBEF
``VE.py`` + ``models/model_ve.py``).

Batch (:class:`blipx.data.ve.VeCollator`): ``pixel_values`` [B, 3, S, S], ``input_ids`` /
``attention_mask`` [B, T] (the family's tokenization; BLIP's [ENC] is written by the model) and
``labels`` int64 [B] (0 contradiction, 1 neutral, 2 entailment).

Loss (model_ve.py ``forward(train=True)``): ``CE(logits, labels)``; with momentum copies
(official ``distill: True``) the EMA steps, the momentum model predicts ``logits_m`` and
``loss = (1 - alpha) * CE + alpha * mean(-sum softmax(logits_m) * log_softmax(logits))``.
VE.yaml has ``warm_up: False``: alpha stays at 0.4 from the first step (``alpha_warmup_steps: 0``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from blipx.losses.itc import soft_cross_entropy
from blipx.models.ve import AlbefVe, BlipVe
from blipx.train.task import Task

VE_INPUTS = ("pixel_values", "input_ids", "attention_mask", "labels")


class VeTask(Task):
    """3-way classification of (image, hypothesis) pairs, ALBEF's recipe; for :class:`AlbefVe`
    and (the blipx extension) :class:`BlipVe`. Momentum distillation runs when the model has
    momentum copies (``config.momentum``)."""

    inputs = VE_INPUTS
    model_class = (AlbefVe, BlipVe)

    def losses(self, batch, ctx):
        m = self.model
        px, ids, mask, labels = (batch[k] for k in VE_INPUTS)
        logits = m(px, ids, mask).logits
        loss_ce = F.cross_entropy(logits, labels)
        alpha = self.alpha_for(ctx)
        if not m.has_momentum:
            return {"loss": loss_ce, "loss_ve": loss_ce}
        with torch.no_grad():
            self.momentum_step(ctx)  # after the online forward, before the momentum one (official)
            if alpha > 0:  # alpha = 0 weighs the targets by 0: skip their forward, not the EMA
                soft = F.softmax(m(px, ids, mask, momentum=True).logits.float(), dim=1)
        if alpha <= 0:
            return {"loss": loss_ce, "loss_ve": loss_ce}
        loss = (1 - alpha) * loss_ce + alpha * soft_cross_entropy(logits.float(), soft)
        return {"loss": loss, "loss_ve": loss, "loss_ce": loss_ce}


def build_ve_task(cfg, model) -> VeTask:
    """The task of ``albef_ve`` / ``blip_ve`` runs (``blipx finetune``)."""
    return VeTask(model, momentum=cfg.momentum, alpha=cfg.alpha, copy_momentum=cfg.init is None)


def build_ve_data(cfg, model, tokenizer, split: str = "train"):
    """(dataset, collate) of a VE run: ``cfg.data`` = "shapes_ve" (the synthetic task;
    ``data_options`` as :class:`blipx.data.shapes_ve.ShapesVeDataset`; statements name cells,
    so the test-time resize only) or comma-separated official SNLI-VE JSON files (images under
    ``image_root``), trained with the official fine-tuning augmentation (``TrainTransform``:
    crop (0.5, 1), flip, RandAugment), as ``dataset/__init__.py``'s 've' entry."""
    from blipx.data import TrainTransform, eval_transform
    from blipx.data.shapes_ve import ShapesVeDataset
    from blipx.data.ve import VeCollator, VeDataset

    family, size = model.config.family, model.config.vision.image_size
    opts = dict(cfg.data_options)
    if cfg.data == "shapes_ve":
        dataset = ShapesVeDataset(split, image_size=opts.pop("image_size", size), transform=eval_transform(size),
                                  **opts)
    else:
        files, train = cfg.data.split(","), split == "train"
        scale = tuple(cfg.crop_scale) if cfg.crop_scale is not None else None
        transform = TrainTransform(size, family=family, flip="random", randaugment=cfg.randaugment, scale=scale) \
            if train else eval_transform(size)
        dataset = VeDataset(files, cfg.image_root or str(Path(files[0]).parent), transform=transform,
                            caption_style=family, allow_outside_root=cfg.allow_outside_root, **opts)
    return dataset, VeCollator(tokenizer, max_length=cfg.max_text_len)


__all__ = ["VE_INPUTS", "VeTask", "build_ve_data", "build_ve_task"]
