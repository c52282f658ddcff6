"""NLVR2 tasks on the task contract of :mod:`blipx.train.task` (salesforce/BLIP ``train_nlvr.py`` +
``models/blip_nlvr.py``; salesforce/ALBEF ``NLVR.py`` + ``models/model_nlvr.py``, and the
text-assignment pre-training of ``Pretrain_nlvr.py`` + ``models/model_pretrain_nlvr.py``).

NLVR batch (:class:`blipx.data.nlvr.NlvrCollator`): ``pixel_values`` [2B, 3, S, S] (the B left
images, then the B right images), the statements' ``input_ids`` / ``attention_mask`` [B, T]
([CLS] first) and ``labels`` [B] (1 = true). Loss: cross-entropy over the 2 classes (official);
ALBEF mixes in the distillation from its momentum model.

Text-assignment batch: the image-caption pairs of pretraining (``ImageTextCollator``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from blipx import ops
from blipx.losses import soft_cross_entropy
from blipx.models import AlbefNlvr, AlbefNlvrPretrainer, BlipNlvr
from blipx.train.task import Task

NLVR_INPUTS = ("pixel_values", "input_ids", "attention_mask", "labels")
NLVR_TASKS = ("blip_nlvr", "albef_nlvr", "albef_nlvr_pretrain")
# model_pretrain_nlvr.py: image-image similarities at a fixed temperature of 0.07 (not ``temp``).
TA_TEMPERATURE = 0.07


class BlipNlvrTask(Task):
    """BLIP NLVR2 (blip_nlvr.py ``forward(train=True)``): ``F.cross_entropy(prediction, targets)``;
    the model writes [ENC] over the statements' [CLS]."""

    inputs = NLVR_INPUTS
    model_class = BlipNlvr

    def losses(self, batch, ctx):
        logits = self.model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        loss = F.cross_entropy(logits.float(), batch["labels"])
        return {"loss": loss, "loss_nlvr": loss}


class AlbefNlvrTask(Task):
    """ALBEF NLVR2 (model_nlvr.py ``forward(train=True)``). With momentum copies (``distill:
    True``): the EMA steps after the online forward (once per optimizer step), then
    ``loss = (1 - alpha) * CE + alpha * soft-CE(logits, softmax(momentum logits))``, alpha ramped
    over the first epoch by the trainer (``warm_up: True``); without: plain CE."""

    inputs = NLVR_INPUTS
    model_class = AlbefNlvr

    def losses(self, batch, ctx):
        m = self.model
        px, ids, mask, labels = (batch[k] for k in NLVR_INPUTS)
        logits = m(px, ids, mask).float()
        loss = F.cross_entropy(logits, labels)
        if self.ema is not None:
            self.momentum_step(ctx)
            alpha = self.alpha_for(ctx)
            if alpha > 0:  # alpha == 0 gives plain CE: the momentum forward is skipped
                with torch.no_grad():
                    soft = F.softmax(m(px, ids, mask, momentum=True).float(), dim=1)
                loss = (1 - alpha) * loss + alpha * soft_cross_entropy(logits, soft)
        return {"loss": loss, "loss_nlvr": loss}


def sample_text_assignment(sim: torch.Tensor, generator: torch.Generator | None = None):
    """The image pairs of model_pretrain_nlvr.py's loop over the batch, batched on the device.

    ``sim`` [B, B]: image-image logits (``image_feat @ image_feat.T / 0.07``). For caption b
    (of image b): with probability 2/3 its image is paired with one other image drawn from
    ``softmax(sim[b])`` without b, on the left (label 0) or the right (label 1) with equal odds;
    otherwise two other images drawn without replacement from that distribution form the pair
    (label 2: neither). Returns ``(left, right, labels, valid)`` [B] each. The draws are the
    official distributions (sequential sampling without replacement = two
    :func:`blipx.ops.sample_hard_negatives` draws), not its random stream. Degenerate batches,
    where the official ``torch.multinomial`` raises: with B = 2 there is no second other image,
    so every row takes the pair branch; with B = 1 there is no pair at all (``valid`` False:
    the row is left out of the loss).
    """
    b, device = sim.shape[0], sim.device
    own = torch.arange(b, device=device)
    first = ops.sample_hard_negatives(sim, None, generator)  # -1 when B == 1
    taken = torch.eye(b, dtype=torch.bool, device=device)
    taken[own, first.clamp_min(0)] = True
    second = ops.sample_hard_negatives(sim, taken, generator)  # -1 when B <= 2
    u = torch.rand(b, generator=generator, device=device)
    side = torch.rand(b, generator=generator, device=device)
    pair = (u > 1 / 3) | (second < 0)
    own_left = side > 0.5
    valid = first >= 0
    first = first.clamp_min(0)
    left = torch.where(pair, torch.where(own_left, own, first), first)
    right = torch.where(pair, torch.where(own_left, first, own), second.clamp_min(0))
    labels = torch.where(pair, torch.where(own_left, 0, 1), 2)
    return left, right, labels, valid


class AlbefTextAssignmentTask(Task):
    """ALBEF's 1-epoch text-assignment pre-training for NLVR2 (model_pretrain_nlvr.py): caption b
    against a pair of images (:func:`sample_text_assignment`), 3-way ``ta_head`` cross-entropy.

    ``vision_proj`` only picks the pairs (under no_grad there), and ``text_proj`` / ``temp`` are
    never used: they are frozen here, which is how they train there (AdamW skips parameters
    without gradients) and lets DDP run without ``find_unused_parameters``."""

    inputs = ("pixel_values", "input_ids", "attention_mask")
    model_class = AlbefNlvrPretrainer

    def __init__(self, model: AlbefNlvrPretrainer) -> None:
        super().__init__(model)
        for p in (*model.vision_proj.parameters(), *model.text_proj.parameters(), model.temp):
            p.requires_grad_(False)

    def losses(self, batch, ctx):
        m = self.model
        image_embeds = m.visual_encoder(batch["pixel_values"])
        with torch.no_grad():
            feat = m.image_features(image_embeds).float()
            left, right, labels, valid = sample_text_assignment(feat @ feat.t() / TA_TEMPERATURE, self.generator)
        logits = m.ta_logits(image_embeds.index_select(0, left), image_embeds.index_select(0, right),
                             batch["input_ids"], batch["attention_mask"])
        ce = F.cross_entropy(logits.float(), labels, reduction="none")
        w = valid.to(ce.dtype)
        loss = (ce * w).sum() / w.sum().clamp_min(1.0)  # a mean over the valid rows, no host sync
        return {"loss": loss, "loss_ta": loss}


def build_nlvr_task(cfg, model) -> Task:
    """The task of ``cfg.task`` (one of :data:`NLVR_TASKS`) for ``model``."""
    if cfg.task == "blip_nlvr":
        return BlipNlvrTask(model)
    if cfg.task == "albef_nlvr":
        # The momentum copies start as the online weights unless loaded with the model.
        return AlbefNlvrTask(model, momentum=cfg.momentum, alpha=cfg.alpha, copy_momentum=cfg.init is None)
    if cfg.task == "albef_nlvr_pretrain":
        return AlbefTextAssignmentTask(model)
    raise ValueError(f"not an NLVR task: {cfg.task!r}; choose from {NLVR_TASKS}")


def build_nlvr_data(cfg, model, tokenizer, split: str = "train"):
    """(dataset, collate) of an NLVR2 run: ``cfg.data`` = "shapes_nlvr" (the synthetic task;
    ``data_options`` as :class:`blipx.data.shapes_nlvr.ShapesNlvrDataset`) or comma-separated
    official NLVR2 JSON files (images under ``image_root``). Training takes the official
    fine-tuning augmentation (crop (0.5, 1), flip, RandAugment; both repositories' nlvr
    loaders) and BLIP's left/right swap of the pair; shapes statements count and name
    shapes, which a crop could cut away, so the synthetic task takes the test-time resize and
    the swap only."""
    from blipx.data import TrainTransform, eval_transform
    from blipx.data.nlvr import NlvrCollator, NlvrDataset
    from blipx.data.shapes_nlvr import ShapesNlvrDataset

    family, size = model.config.family, model.config.vision.image_size
    opts, train = dict(cfg.data_options), split == "train"
    # salesforce/BLIP data/nlvr_dataset.py swaps the two images (and 'left'/'right') at random;
    # ALBEF's dataset does not.
    swap = opts.pop("swap", train and family == "blip")
    if cfg.data == "shapes_nlvr":
        dataset = ShapesNlvrDataset(split, image_size=opts.pop("image_size", size), transform=eval_transform(size),
                                    family=family, swap=swap, **opts)
    else:
        files = cfg.data.split(",")
        flip = cfg.flip if cfg.flip != "auto" else "random"
        scale = None if cfg.crop_scale is None else tuple(cfg.crop_scale)
        transform = TrainTransform(size, family=family, flip=flip, randaugment=cfg.randaugment, scale=scale) if train \
            else eval_transform(size)
        dataset = NlvrDataset(files, cfg.image_root or str(Path(files[0]).parent), transform=transform, family=family,
                              swap=swap, allow_outside_root=cfg.allow_outside_root, **opts)
    return dataset, NlvrCollator(tokenizer, max_length=model.config.text.max_position_embeddings)


__all__ = ["AlbefNlvrTask", "AlbefTextAssignmentTask", "BlipNlvrTask", "NLVR_INPUTS", "NLVR_TASKS",
           "build_nlvr_data", "build_nlvr_task", "sample_text_assignment"]
